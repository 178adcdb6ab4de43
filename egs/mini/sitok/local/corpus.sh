#!/usr/bin/env bash
# Stage 0 of the mini recipe: synthesise the embedded corpus (seeded, resumable).
# Sizes: 4.5 h train, 10 min dev, 10 min test, 6 min held-out speakers; the smoke test shrinks them.
# --tts_train_minutes M adds M minutes by the seen speakers (split tts_train) for the AR-TTS LM alone.
set -euo pipefail
corpus_dir=corpus
nj=2
python=python3
progress=true
seed=1234
train_minutes=270
dev_minutes=10
test_minutes=10
unseen_minutes=6
ks_per_class="60 10 15"
tts_train_minutes=0
help_message="Usage: $0 [--corpus_dir DIR] [--seed N] [--train_minutes M] [--dev_minutes M] [--test_minutes M] [--unseen_minutes M] [--ks_per_class 'TRAIN DEV TEST'] [--tts_train_minutes M]"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

# The corpus is made again when the options differ from those of the finished (.done) or
# begun (.started) corpus; a killed synthesis with the same options resumes.
st=(--option "seed=${seed}" --option "train_minutes=${train_minutes}" --option "dev_minutes=${dev_minutes}"
    --option "test_minutes=${test_minutes}" --option "unseen_minutes=${unseen_minutes}"
    --option "ks_per_class=${ks_per_class}")
# recorded only when asked for: a corpus made without the split keeps the stamp it had
[ "${tts_train_minutes}" = 0 ] || st+=(--option "tts_train_minutes=${tts_train_minutes}")
if [ -f "${corpus_dir}/.done" ] && [ ! -s "${corpus_dir}/.done" ]; then  # finished before options were recorded
    echo "corpus ${corpus_dir}: recording its options (assumed to be these: delete it to rebuild otherwise)"
    "${python}" -m sitok.stamp write "${corpus_dir}/.done" "${st[@]}"
fi
if "${python}" -m sitok.stamp check "${corpus_dir}/.done" "${st[@]}"; then
    echo "corpus ${corpus_dir} already synthesised with these options (${corpus_dir}/.done); delete it to rebuild"
    exit 0
fi
if [ -d "${corpus_dir}" ] && ! "${python}" -m sitok.stamp check "${corpus_dir}/.started" "${st[@]}"; then
    echo "removing ${corpus_dir}: it was made with other options"
    rm -rf "${corpus_dir}"
fi
mkdir -p "${corpus_dir}"
"${python}" -m sitok.stamp write "${corpus_dir}/.started" "${st[@]}"
# shellcheck disable=SC2086
"${python}" -m sitok.cli synth-mini --out "${corpus_dir}" --seed "${seed}" --nj "${nj}" \
    --train-minutes "${train_minutes}" --dev-minutes "${dev_minutes}" --test-minutes "${test_minutes}" \
    --unseen-minutes "${unseen_minutes}" --ks-per-class ${ks_per_class} \
    --tts-train-minutes "${tts_train_minutes}" $(${progress} || echo --no-progress)
"${python}" -m sitok.stamp write "${corpus_dir}/.done" "${st[@]}"
