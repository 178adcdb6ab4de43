#!/usr/bin/env bash
# Install what is needed (first run only) and run the test suite: bash tools/test.sh [pytest args]
#
# The suite runs on SITOK_TEST_WORKERS pytest-xdist workers (default: one per core, at most 4),
# one test file per worker at a time, each worker on one thread (the longest files are collected
# first: tests/conftest.py). Arguments go to pytest (a file or -k selects tests; -n 0 runs serially).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "${root}/tools/install.sh"
cd "${root}"
cores="$(nproc 2>/dev/null || echo 1)"
workers="${SITOK_TEST_WORKERS:-$((cores < 4 ? cores : 4))}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n "${workers}" --dist loadfile --no-loadscope-reorder --durations=30 "$@"
