#!/usr/bin/env bash
# Stage 0 for IEMOCAP: nothing is downloaded; check that the extracted corpus is there.
set -euo pipefail
corpus_dir=downloads
nj=1
python=python3
progress=true
help_message="Usage: $0 --corpus_dir DIR   (DIR holds IEMOCAP_full_release/Session1..5)"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if ! { [ -d "${corpus_dir}/IEMOCAP_full_release/Session1" ] || [ -d "${corpus_dir}/Session1" ]; }; then
    echo "ERROR: ${corpus_dir} does not hold IEMOCAP_full_release/Session1..5. Download and extract the corpus yourself" >&2
    echo "       (this machine has no network access), then set IEMOCAP in egs/db.sh to <that folder> (or run ./run.sh --db_root <that folder>)" >&2
    exit 1
fi
echo "found IEMOCAP under ${corpus_dir}"
