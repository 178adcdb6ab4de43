#!/usr/bin/env bash
# Stage 1 for IEMOCAP: the corpus layout -> Kaldi-style data dirs (sitok prep --corpus iemocap).
set -euo pipefail
corpus_dir=downloads
datadir=data
python=python3
min_duration=0.1
max_duration=60
test_session=5
valid_session=4
help_message="Usage: $0 --corpus_dir DIR [--datadir data] [--test_session 5] [--valid_session 4]"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

for split in train dev test; do
    "${python}" -m sitok.cli prep --corpus iemocap --root "${corpus_dir}" --split "${split}" --out "${datadir}/${split}" \
        --test-session "${test_session}" --valid-session "${valid_session}" --min-duration "${min_duration}" --max-duration "${max_duration}"
done
