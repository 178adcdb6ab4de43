#!/usr/bin/env bash
# Speech Commands v2 (keyword spotting probe, DASB KS). Nothing is downloaded: point --db_root at the extracted corpus.
# These corpora are probed with a tokenizer trained elsewhere and with the continuous mel
# baselines; the recipe runs data prep, features and stage 13:
#   ./run.sh --db_root /data/speech_commands --stage 0 --stop_stage 2
#   ./run.sh --db_root /data/speech_commands --stage 13 --stop_stage 14 \
#       --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# 12 classes: yes no up down left right on off stop go, _unknown_ (every other word), _silence_.
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
    --train_set ks_train --valid_set ks_dev --test_sets ks_test --probe_ks_sets "ks_train ks_dev ks_test" \
    --probe_tasks ks \
    --probe_features "mel12.5 mel50" \
    ${args[@]+"${args[@]}"}
