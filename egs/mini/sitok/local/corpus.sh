#!/usr/bin/env bash
# Stage 0 of the mini recipe: synthesise the embedded corpus (seeded, resumable).
# Sizes default to SPEC 4.1 (~1.5 h train, 10 min dev, 10 min test); the smoke test shrinks them.
set -euo pipefail
corpus_dir=corpus
nj=2
python=python3
progress=true
seed=1234
train_minutes=90
dev_minutes=10
test_minutes=10
unseen_minutes=6
ks_per_class="60 10 15"
help_message="Usage: $0 [--corpus_dir DIR] [--seed N] [--train_minutes M] [--dev_minutes M] [--test_minutes M] [--unseen_minutes M] [--ks_per_class 'TRAIN DEV TEST']"
. "$(dirname "$0")/../../../../tools/parse_options.sh"

if [ -f "${corpus_dir}/.done" ]; then
    echo "corpus ${corpus_dir} already synthesised (${corpus_dir}/.done); delete it to rebuild"
    exit 0
fi
# shellcheck disable=SC2086
"${python}" -m sitok.cli synth-mini --out "${corpus_dir}" --seed "${seed}" --nj "${nj}" \
    --train-minutes "${train_minutes}" --dev-minutes "${dev_minutes}" --test-minutes "${test_minutes}" \
    --unseen-minutes "${unseen_minutes}" --ks-per-class ${ks_per_class} $(${progress} || echo --no-progress)
touch "${corpus_dir}/.done"
