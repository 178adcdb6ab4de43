#!/usr/bin/env bash
# The main job: install what is needed (first run only), then run the mini recipe end to end on
# the embedded synthetic corpus. Extra arguments go to egs/mini/sitok/run.sh (e.g. --stage 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${root}/tools/install.sh"
exec "${root}/egs/mini/sitok/run.sh" "$@"
