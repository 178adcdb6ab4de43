#!/usr/bin/env bash
# Stage 1 for Speech Commands v2: the corpus layout -> Kaldi-style data dirs (sitok prep --corpus speech_commands).
set -euo pipefail
corpus_dir=downloads
datadir=data
python=python3
min_duration=0.1
max_duration=60
help_message="Usage: $0 --corpus_dir DIR [--datadir data]"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

for split in train dev test; do  # _silence_ clips are cut from _background_noise_ into data/ks_<split>/silence_wavs/
    "${python}" -m sitok.cli prep --corpus speech_commands --root "${corpus_dir}" --split "${split}" --out "${datadir}/ks_${split}" \
        --min-duration "${min_duration}" --max-duration "${max_duration}"
done
