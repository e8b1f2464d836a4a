"""The built wheel installs into a fresh venv outside the checkout and its command line works there.

``scripts/check_wheel.sh`` does the work (build, contents, fresh venv, ``rope-interp bands`` and
``rope-interp report --quick``); it needs ``build`` in this interpreter and a package index (pip's
cache makes reruns fast: ~3 minutes on 2 cores, most of it installing the dependencies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_wheel.sh"), str(tmp_path / "wheel")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    log = proc.stdout[-4000:] + "\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "corpus" in proc.stdout and "site-packages" in proc.stdout, log
    assert (tmp_path / "wheel" / "report" / "report.html").stat().st_size > 10_000, log
