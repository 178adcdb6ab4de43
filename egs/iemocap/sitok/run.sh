#!/usr/bin/env bash
# IEMOCAP (emotion recognition probe, DASB ER). Nothing is downloaded: point --db_root at the extracted corpus.
# These corpora are probed with a tokenizer trained elsewhere and with the continuous mel
# baselines; the recipe runs data prep, features and stage 13:
#   ./run.sh --db_root /data/iemocap --stage 0 --stop_stage 2
#   ./run.sh --db_root /data/iemocap --stage 13 --stop_stage 14 \
#       --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# Leave-one-session-out: test = Session 5, dev = Session 4, train = Sessions 1-3 (4 classes:
# neutral, happy + excited, angry, sad; other labels are skipped and counted).
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
    --train_set train --valid_set dev --test_sets test \
    --probe_tasks er \
    --probe_features "mel12.5 mel50" \
    ${args[@]+"${args[@]}"}
