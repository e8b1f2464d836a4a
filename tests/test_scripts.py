"""The researcher scripts and the benchmark run end to end in their --quick mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"


def _run(args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_prope_sweep(tmp_path):
    out = _run([str(SCRIPTS / "prope_sweep.py"), "--quick", "--out", str(tmp_path)], tmp_path)
    rows = json.loads((tmp_path / "prope.json").read_text())
    assert [r["p"] for r in rows] == [0.0, 0.5, 0.75, 1.0]
    # the model was trained with full RoPE: removing all rotation (NoPE) must cost loss
    assert rows[0]["loss"] > rows[-1]["loss"]
    assert (tmp_path / "prope.png").stat().st_size > 0 and "p=1.000" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,stem", [("ablation_sweep.py", "ablation"), ("patching_sweep.py", "patching")]
)
def test_sweep_scripts(tmp_path, script, stem):
    _run([str(SCRIPTS / script), "--quick", "--out", str(tmp_path)], tmp_path)
    csv = (tmp_path / f"{stem}.csv").read_text().splitlines()
    assert csv[0].startswith("layer,band") and len(csv) == 1 + (3 if stem == "ablation" else 4) * 8
    assert (tmp_path / f"{stem}.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_sweep_quick(tmp_path):
    out = _run([str(SCRIPTS / "bench_sweep.py"), "--quick"], tmp_path)
    assert "spearman" in out.lower()


def test_bench_distributed_tiny(tmp_path):
    """The distributed benchmark end to end (torchrun, 1 and 2 gloo processes) on a tiny model."""
    out = _run(
        [str(SCRIPTS / "bench_distributed.py"), "--model", "tiny", "--tokens", "1024", "--window", "64",
         "--json", str(tmp_path / "d.json")],
        tmp_path,
    )  # fmt: skip
    assert "scaling efficiency" in out
    fig = json.loads((tmp_path / "d.json").read_text())
    assert fig["max_rel_diff"] <= 1e-6 and fig["tokens"] == 1024
    assert fig["sent_bytes"] > 0 and fig["allreduce_s"] > 0
