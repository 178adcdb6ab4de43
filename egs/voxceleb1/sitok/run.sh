#!/usr/bin/env bash
# VoxCeleb1: the speaker-verification probe (DASB SV) (README.md). The corpus folder is VOXCELEB1
# in ../../db.sh (or --db_root DIR). The recipe prepares the data and features, then probes a
# tokenizer trained elsewhere beside the continuous mel baselines:
#   ./run.sh --stage 0 --stop_stage 2
#   ./run.sh --stage 13 --stop_stage 14 --probe_models "sitok_mini=../../mini/sitok/exp/tokenizer_mini/model"
# sv_test = the speakers of veri_test2.txt (its trials, as utterance ids, in data/sv_test/trials);
# sv_train / sv_dev = every other speaker (dev: the last 2 utterances of each).
set -euo pipefail
cd "$(dirname "$0")"
. ../../db.sh

train_set=sv_train
valid_set=sv_dev
test_sets=sv_test

../../TEMPLATE/sitok.sh \
    --corpus_dir "${VOXCELEB1}" \
    --train_set "${train_set}" --valid_set "${valid_set}" --test_sets "${test_sets}" \
    --probe_sv_sets "${train_set} ${valid_set} ${test_sets}" \
    --probe_tasks sv \
    --probe_features "mel12.5 mel50" \
    "$@"
