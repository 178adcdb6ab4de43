#!/usr/bin/env bash
# Stage 0 for LibriTTS: nothing is downloaded; check that the extracted corpus is there.
set -euo pipefail
corpus_dir=downloads
nj=1
python=python3
progress=true
help_message="Usage: $0 --corpus_dir DIR   (DIR holds LibriTTS/<split>/...)"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if [ ! -d "${corpus_dir}/LibriTTS" ]; then
    echo "ERROR: ${corpus_dir}/LibriTTS not found. Download and extract LibriTTS yourself (this machine has no" >&2
    echo "       network access), then set LIBRITTS in egs/db.sh to <folder holding LibriTTS/> (or run ./run.sh --db_root <folder holding LibriTTS/>)" >&2
    exit 1
fi
echo "found $(ls -d "${corpus_dir}/LibriTTS"/*/ | wc -l) LibriTTS split(s) under ${corpus_dir}/LibriTTS"
