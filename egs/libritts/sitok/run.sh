#!/usr/bin/env bash
# SiTok on LibriTTS. Point --db_root at the folder that holds the extracted LibriTTS/ directory
# (nothing is downloaded), e.g. ./run.sh --db_root /data/corpora --stage 0 --stop_stage 3
set -euo pipefail
cd "$(dirname "$0")"

db_root=${DB_ROOT:-downloads}
train_splits="train-clean-100"      # LibriTTS splits joined into data/train
valid_split=dev-clean
test_splits="test-clean"
args=()
while [ $# -gt 0 ]; do  # recipe-level options; everything else goes to the template
    case "$1" in
        --db_root) db_root=$2; shift 2 ;;
        --train_splits) train_splits=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

../../TEMPLATE/sitok.sh \
    --corpus_dir "${db_root}" \
    --local_data_opts "--train_splits '${train_splits}' --valid_split ${valid_split} --test_splits '${test_splits}'" \
    --train_set train \
    --valid_set dev_clean \
    --test_sets "test_clean" \
    --vocab_type unigram \
    --vocab_size 5000 \
    --max_duration 35 \
    ${args[@]+"${args[@]}"}
