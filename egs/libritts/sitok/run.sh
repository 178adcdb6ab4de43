#!/usr/bin/env bash
# SiTok on LibriTTS (README.md). The corpus folder is LIBRITTS in ../../db.sh (or --db_root DIR);
# every option of ../../TEMPLATE/sitok.sh can be added, e.g. ./run.sh --stage 0 --stop_stage 3.
# More training splits: --local_data_opts "--train_splits 'train-clean-100 train-clean-360'".
set -euo pipefail
cd "$(dirname "$0")"
. ../../db.sh

train_set=train                     # local/data.sh joins the training splits into data/train
valid_set=dev_clean
test_sets="test_clean"
local_data_opts="--train_splits 'train-clean-100' --valid_split dev-clean --test_splits 'test-clean'"

../../TEMPLATE/sitok.sh \
    --corpus_dir "${LIBRITTS}" \
    --local_data_opts "${local_data_opts}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --vocab_type unigram \
    --vocab_size 5000 \
    --max_duration 35 \
    "$@"
