#!/usr/bin/env bash
# Speech Commands v2: the keyword-spotting probe (DASB KS) (README.md). The corpus folder is
# SPEECH_COMMANDS in ../../db.sh (or --db_root DIR). The recipe prepares the data and features,
# then probes a tokenizer trained elsewhere beside the continuous mel baselines:
#   ./run.sh --stage 0 --stop_stage 2
#   ./run.sh --stage 13 --stop_stage 14 --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# 12 classes: yes no up down left right on off stop go, _unknown_ (every other word), _silence_.
set -euo pipefail
cd "$(dirname "$0")"
. ../../db.sh

train_set=ks_train
valid_set=ks_dev
test_sets=ks_test

../../TEMPLATE/sitok.sh \
    --corpus_dir "${SPEECH_COMMANDS}" \
    --train_set "${train_set}" --valid_set "${valid_set}" --test_sets "${test_sets}" \
    --probe_ks_sets "${train_set} ${valid_set} ${test_sets}" \
    --probe_tasks ks \
    --probe_features "mel12.5 mel50" \
    "$@"
