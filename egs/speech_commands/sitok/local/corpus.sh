#!/usr/bin/env bash
# Stage 0 for Speech Commands v2: nothing is downloaded; check that the extracted corpus is there.
set -euo pipefail
corpus_dir=downloads
nj=1
python=python3
progress=true
help_message="Usage: $0 --corpus_dir DIR   (DIR holds <word>/*.wav, validation_list.txt, testing_list.txt, _background_noise_/)"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if ! { [ -f "${corpus_dir}/testing_list.txt" ]; }; then
    echo "ERROR: ${corpus_dir} does not hold <word>/*.wav, validation_list.txt, testing_list.txt, _background_noise_/. Download and extract the corpus yourself" >&2
    echo "       (this machine has no network access), then set SPEECH_COMMANDS in egs/db.sh to <that folder> (or run ./run.sh --db_root <that folder>)" >&2
    exit 1
fi
echo "found Speech Commands v2 under ${corpus_dir}"
