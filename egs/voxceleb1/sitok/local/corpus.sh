#!/usr/bin/env bash
# Stage 0 for VoxCeleb1: nothing is downloaded; check that the extracted corpus is there.
set -euo pipefail
corpus_dir=downloads
nj=1
python=python3
progress=true
help_message="Usage: $0 --corpus_dir DIR   (DIR holds wav/id*/... and veri_test2.txt)"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if ! { [ -f "${corpus_dir}/veri_test2.txt" ] || [ -f "${corpus_dir}/meta/veri_test2.txt" ]; }; then
    echo "ERROR: ${corpus_dir} does not hold wav/id*/... and veri_test2.txt. Download and extract the corpus yourself" >&2
    echo "       (this machine has no network access), then set VOXCELEB1 in egs/db.sh to <that folder> (or run ./run.sh --db_root <that folder>)" >&2
    exit 1
fi
echo "found VoxCeleb1 under ${corpus_dir}"
