#!/usr/bin/env bash
# Stage 0 for LibriSpeech: nothing is downloaded; check that the extracted corpus is there.
set -euo pipefail
corpus_dir=downloads
nj=1
python=python3
progress=true
help_message="Usage: $0 --corpus_dir DIR   (DIR holds LibriSpeech/<split>/...)"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if [ ! -d "${corpus_dir}/LibriSpeech" ]; then
    echo "ERROR: ${corpus_dir}/LibriSpeech not found. Download and extract LibriSpeech yourself (this machine has no" >&2
    echo "       network access), then set LIBRISPEECH in egs/db.sh to <folder holding LibriSpeech/> (or run ./run.sh --db_root <folder holding LibriSpeech/>)" >&2
    exit 1
fi
echo "found $(ls -d "${corpus_dir}/LibriSpeech"/*/ | wc -l) LibriSpeech split(s) under ${corpus_dir}/LibriSpeech"
