#!/usr/bin/env bash
# Stage 1 for VoxCeleb1: the corpus layout -> Kaldi-style data dirs (sitok prep --corpus voxceleb1).
set -euo pipefail
corpus_dir=downloads
datadir=data
python=python3
min_duration=0.1
max_duration=60
dev_per_speaker=2
help_message="Usage: $0 --corpus_dir DIR [--datadir data] [--dev_per_speaker 2]"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

for split in train dev test; do  # test also gets data/sv_test/trials from veri_test2.txt
    "${python}" -m sitok.cli prep --corpus voxceleb1 --root "${corpus_dir}" --split "${split}" --out "${datadir}/sv_${split}" \
        --dev-per-speaker "${dev_per_speaker}" --min-duration "${min_duration}" --max-duration "${max_duration}"
done
