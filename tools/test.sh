#!/usr/bin/env bash
# Install what is needed (first run only) and run the test suite: bash tools/test.sh [pytest args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${root}/tools/install.sh"
cd "${root}"
exec .venv/bin/python -m pytest -q --durations=30 "$@"
