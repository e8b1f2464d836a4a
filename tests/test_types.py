"""The package type-checks: pyright in basic mode (``pyrightconfig.json``) reports no error on ``rope_interp/``."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyright() -> list[str]:
    exe = pathlib.Path(sys.executable).with_name("pyright")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pyright")
    assert found, "pyright is a test dependency (pip install -e '.[test]' installs it)"
    return [found]


def test_pyright_basic_reports_no_error():
    proc = subprocess.run(
        [*_pyright(), "--outputjson", "-p", str(ROOT / "pyrightconfig.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(proc.stdout)
    errors = [
        f"{d['file'].split('rope_interp/', 1)[-1]}:{d['range']['start']['line'] + 1}: {d['message'].splitlines()[0]}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert report["summary"]["filesAnalyzed"] > 40
    assert errors == [], f"{len(errors)} pyright errors:\n" + "\n".join(errors[:50])
