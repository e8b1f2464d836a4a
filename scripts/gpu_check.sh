#!/usr/bin/env bash
# The GPU check in one command, on any machine with a CUDA device, from anywhere:
#   bash scripts/gpu_check.sh
# 1. the gpu-marked tests (tests/test_gpu.py: CPU vs CUDA band tables, decomposition, every
#    intervention mode, BandStats, sweeps; bf16 on CUDA),
# 2. scripts/bench_sweep.py --quick --device cuda,
# 3. rope-interp report --quick --device cuda,
# and writes one JSON of results to $OUT/gpu_check.json if OUT is set, else ./gpu_check.json.
# Exit status: 0 all passed; 1 a step failed; 2 no usable Python environment; 3 no CUDA device.
#
# Python: $PYTHON_BIN if set; else ./.venv if present; else a new ./.venv on top of the machine's
# python3 (--system-site-packages, so its CUDA build of torch is kept), filled from wheels in
# $WHEELS (default ./.whl, installed offline) or, failing that, by scripts/bootstrap.sh (needs a
# package registry). rope_interp itself is always imported from this checkout (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEST=${OUT:-$ROOT}
JSON=$DEST/gpu_check.json
say() { echo "[gpu_check] $*" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1 && ! ls /dev/nvidia* >/dev/null 2>&1 &&
  ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  say "no CUDA device: no nvidia-smi, no /dev/nvidia*, and python3's torch (if any) sees none; run this on a GPU machine"
  exit 3
fi

if [ -n "${PYTHON_BIN:-}" ]; then
  PY=$PYTHON_BIN
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  say "no .venv: making one on top of $(command -v python3) (keeps the machine's CUDA torch)"
  fail() { say "$1"; rm -rf .venv; exit 2; }  # leave no half-made .venv for the next run to trust
  python3 -m venv --system-site-packages .venv || fail "could not create .venv"
  WHEELS=${WHEELS:-.whl}
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    say "installing the wheels in $WHEELS (offline)"
    .venv/bin/python -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || fail "wheel install failed"
  else
    bash scripts/bootstrap.sh || fail "scripts/bootstrap.sh failed (no package registry here? bring wheels in $WHEELS)"
  fi
  PY=.venv/bin/python
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if ! "$PY" -c "import torch, transformer_lens, rope_interp" 2>/dev/null; then
  say "$PY cannot import torch, transformer_lens and rope_interp; fix the environment (see the header of this script)"
  "$PY" -c "import torch, transformer_lens, rope_interp"
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no CUDA device: torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') reports torch.cuda.is_available() == False"
  exit 3
fi

LOGS=$(mktemp -d)
mkdir -p "$DEST"
declare -A RC SECS
step() {  # step NAME COMMAND...: run it, log to $LOGS/NAME.log, remember rc and seconds
  local name=$1 t0 rc
  shift
  say "$name: $*"
  t0=${EPOCHREALTIME:-$(date +%s)}
  "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  RC[$name]=$rc
  SECS[$name]=$(awk "BEGIN { print ${EPOCHREALTIME:-$(date +%s)} - $t0 }")
  say "$name: exit $rc"
  tail -n 5 "$LOGS/$name.log" >&2
}

step tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml="$LOGS/tests.xml"
step bench "$PY" scripts/bench_sweep.py --quick --device cuda --json "$LOGS/bench.json"
step report "$PY" -m rope_interp.cli report --quick --device cuda --no-progress --out "$LOGS/report"

"$PY" - "$LOGS" "$JSON" "${RC[tests]}" "${SECS[tests]}" "${RC[bench]}" "${SECS[bench]}" "${RC[report]}" "${SECS[report]}" <<'EOF'
import json, platform, subprocess, sys, xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import torch

logs, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = dict(zip(("tests", "bench", "report"), zip(sys.argv[3::2], sys.argv[4::2])))


def tail(name: str) -> str:
    p = logs / f"{name}.log"
    return p.read_text(errors="replace")[-3000:] if p.exists() else ""


def load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


result = {
    "device": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "python": platform.python_version(),
    "versions": {p: version(p) for p in ("transformer-lens", "transformers")},
    "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
}
for name, (rc, secs) in steps.items():
    result[name] = {"exit": int(rc), "seconds": round(float(secs), 1)}
    if int(rc):
        result[name]["log_tail"] = tail(name)
junit = logs / "tests.xml"
if junit.exists():
    cases = ET.parse(junit).getroot().iter("testcase")
    counts, failed = {"passed": 0, "failed": 0, "skipped": 0}, []
    for c in cases:
        kind = "failed" if c.find("failure") is not None or c.find("error") is not None else (
            "skipped" if c.find("skipped") is not None else "passed")
        counts[kind] += 1
        if kind == "failed":
            failed.append(f"{c.get('classname')}::{c.get('name')}")
    result["tests"].update(counts, failures=failed)
result["bench"]["results"] = load(logs / "bench.json")
summary = load(logs / "report" / "summary.json")
result["report"]["wrote_html"] = (logs / "report" / "report.html").exists()
result["report"]["summary_keys"] = sorted(summary) if isinstance(summary, dict) else None
# on a CUDA machine every gpu test runs: none skipped, some passed
result["ok"] = all(int(rc) == 0 for rc, _ in steps.values()) and result["tests"].get("passed", 0) > 0
result["ok"] = result["ok"] and result["tests"].get("skipped", 0) == 0
out.write_text(json.dumps(result, indent=1, default=str))
print(json.dumps({k: result[k] for k in ("ok", "device", "torch")} | {s: result[s]["exit"] for s in steps}))
EOF
say "wrote $JSON (logs in $LOGS)"
"$PY" -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['ok'] else 1)" "$JSON"
