#!/usr/bin/env bash
# IEMOCAP: the emotion-recognition probe (DASB ER) (README.md). The corpus folder is IEMOCAP in
# ../../db.sh (or --db_root DIR). The recipe prepares the data and features, then probes a
# tokenizer trained elsewhere beside the continuous mel baselines:
#   ./run.sh --stage 0 --stop_stage 2
#   ./run.sh --stage 13 --stop_stage 14 --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# Leave-one-session-out: test = Session 5, dev = Session 4, train = Sessions 1-3 (4 classes:
# neutral, happy + excited, angry, sad; other labels are skipped and counted).
set -euo pipefail
cd "$(dirname "$0")"
. ../../db.sh

train_set=train
valid_set=dev
test_sets="test"

../../TEMPLATE/sitok.sh \
    --corpus_dir "${IEMOCAP}" \
    --train_set "${train_set}" --valid_set "${valid_set}" --test_sets "${test_sets}" \
    --probe_tasks er \
    --probe_features "mel12.5 mel50" \
    "$@"
