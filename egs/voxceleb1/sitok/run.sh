#!/usr/bin/env bash
# VoxCeleb1 (speaker verification probe, DASB SV). Nothing is downloaded: point --db_root at the extracted corpus.
# These corpora are probed with a tokenizer trained elsewhere and with the continuous mel
# baselines; the recipe runs data prep, features and stage 13:
#   ./run.sh --db_root /data/voxceleb1 --stage 0 --stop_stage 2
#   ./run.sh --db_root /data/voxceleb1 --stage 13 --stop_stage 14 \
#       --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# sv_test = the speakers of veri_test2.txt (its trials, as utterance ids, in data/sv_test/trials);
# sv_train / sv_dev = every other speaker (dev: the last 2 utterances of each).
set -euo pipefail
cd "$(dirname "$0")"

db_root=${DB_ROOT:-downloads}
args=()
while [ $# -gt 0 ]; do  # recipe-level options; everything else goes to the template
    case "$1" in
        --db_root) db_root=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

../../TEMPLATE/sitok.sh \
    --corpus_dir "${db_root}" \
    --train_set sv_train --valid_set sv_dev --test_sets sv_test --probe_sv_sets "sv_train sv_dev sv_test" \
    --probe_tasks sv \
    --probe_features "mel12.5 mel50" \
    ${args[@]+"${args[@]}"}
