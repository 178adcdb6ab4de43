#!/usr/bin/env bash
# Stage 1 of the mini recipe: corpus/metadata.tsv -> data/<split>/ (+ SV trials for test_unseen).
set -euo pipefail
corpus_dir=corpus
datadir=data
python=python3
min_duration=0.1
max_duration=60
help_message="Usage: $0 [--corpus_dir DIR] [--datadir DIR]"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

splits="train dev test test_unseen ks_train ks_dev ks_test"
# tts_train: the extra AR-TTS training sentences, when the corpus was made with them
if awk -F'\t' '$2 == "tts_train" {found = 1; exit} END {exit !found}' "${corpus_dir}/metadata.tsv"; then
    splits="${splits} tts_train"
fi
for split in ${splits}; do
    "${python}" -m sitok.cli prep --corpus mini --root "${corpus_dir}" --split "${split}" --out "${datadir}/${split}" \
        --min-duration "${min_duration}" --max-duration "${max_duration}"
done
"${python}" -m sitok.cli make-trials "${datadir}/test_unseen" --train-dir "${datadir}/train"
