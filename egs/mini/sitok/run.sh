#!/usr/bin/env bash
# SiTok on the embedded synthetic corpus (flite + espeak-ng; no download) (README.md).
# Any option of ../../TEMPLATE/sitok.sh can be given here, e.g. --stage 2 --stop_stage 3.
set -euo pipefail
cd "$(dirname "$0")"
. ../../db.sh

train_set=train
valid_set=dev
test_sets="test test_unseen"          # test: flite voices (read well by the ASR judge); test_unseen: held-out speakers
extra_sets="ks_train ks_dev ks_test"  # 1 s keyword clips (12 classes) for the keyword-spotting probe

../../TEMPLATE/sitok.sh \
    --corpus_dir "${MINI}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --extra_sets "${extra_sets}" \
    --vocab_type char \
    --ctc_upsample 3 \
    "$@"
