#!/usr/bin/env bash
# Stage 1 for LibriTTS: <split> -> data/<split with _> ; the training splits are prepared one by
# one and combined into data/train.
set -euo pipefail
corpus_dir=downloads
datadir=data
python=python3
min_duration=0.1
max_duration=35
train_splits="train-clean-100"
valid_split=dev-clean
test_splits="test-clean"
help_message="Usage: $0 --corpus_dir DIR [--train_splits '...'] [--valid_split S] [--test_splits '...']"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

prep() {  # $1 = corpus split, $2 = output data dir
    "${python}" -m sitok.cli prep --corpus libritts --root "${corpus_dir}" --split "$1" --out "$2" \
        --min-duration "${min_duration}" --max-duration "${max_duration}"
}
parts=()
for split in ${train_splits}; do
    prep "${split}" "${datadir}/${split//-/_}"
    parts+=("${datadir}/${split//-/_}")
done
"${python}" -m sitok.cli combine-data-dirs "${datadir}/train" "${parts[@]}"
for split in ${valid_split} ${test_splits}; do
    prep "${split}" "${datadir}/${split//-/_}"
done
