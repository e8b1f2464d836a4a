"""Upstream version differences: TransformerLens 3 vs 4, and known-bad combinations of releases.

TransformerLens 4 removed ``HookedTransformer`` (and ``HookedTransformerConfig``); only
``TransformerBridge`` is left. :func:`has_hooked_transformer` says which world this is, and
:func:`hooked_classes` is the one place rope_interp imports the HookedTransformer classes: on
TransformerLens 4 it raises :class:`~rope_interp.errors.ModelNotAvailableError` whose message
(:data:`NO_HOOKED`) says to use a bridge. ``load_model(name)`` loads a bridge there by default.

Known-bad combinations of upstream versions are checked when rope_interp meets a model.

rope_interp is tested on the set pinned in ``requirements.lock`` (see the README's
compatibility table). Upstream releases move every few weeks; where a released
combination is *known* to break something rope_interp promises, the user gets a
:class:`StackWarning` naming the versions and the fix — never silently different numbers.

>>> from packaging.version import Version
>>> [b.package for b in known_breaks({"transformers": Version("5.24.0")}, bridge=True)]
['transformers']
>>> known_breaks({"transformers": Version("5.23.0")}, bridge=True)
[]
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..errors import ModelNotAvailableError

NO_HOOKED = (
    "HookedTransformer is not in TransformerLens 4 (removed in 4.0; only TransformerBridge is left): "
    "use load_model(..., bridge=True) (the default there), or install the TransformerLens 3 set "
    "(bash scripts/bootstrap.sh, requirements.lock) for HookedTransformer"
)


def has_hooked_transformer() -> bool:
    """True when the installed TransformerLens provides ``HookedTransformer`` (3.x; False on 4.x)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_classes() -> tuple[Any, Any]:
    """``(HookedTransformer, HookedTransformerConfig)``; raises ModelNotAvailableError on TransformerLens 4."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise ModelNotAvailableError(NO_HOOKED) from err
    return HookedTransformer, HookedTransformerConfig


class StackWarning(UserWarning):
    """The installed upstream versions are known to break part of what rope_interp promises."""


@dataclass(frozen=True)
class KnownBreak:
    package: str
    versions: str  # a PEP 440 specifier of the broken releases
    bridge_only: bool
    what: str
    fix: str


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        package="transformers",
        versions=">=5.24",
        bridge_only=True,
        what=(
            "TransformerBridge generation with the KV cache gives different tokens than without it, with no "
            "intervention at all (TransformerLens 3.9 and 4.3 pass the deprecated past_key_values; seen "
            "2026-11-24): cached model.generate() on a bridge is silently wrong"
        ),
        fix=(
            "install the tested set with `bash scripts/bootstrap.sh` (requirements.lock), or "
            "`pip install 'transformers<5.24'`; or generate with use_past_kv_cache=False, or load the model as "
            "a HookedTransformer (load_model(..., bridge=False))"
        ),
    ),
)

_warned: set[str] = set()


def installed_versions(packages: list[str] | None = None) -> dict[str, Version]:
    """``{package: Version}`` for the packages of :data:`KNOWN_BREAKS` that are installed."""
    out = {}
    for name in packages or sorted({b.package for b in KNOWN_BREAKS}):
        try:
            out[name] = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def known_breaks(versions: dict[str, Version], bridge: bool) -> list[KnownBreak]:
    """The entries of :data:`KNOWN_BREAKS` that apply to these versions (pure: no I/O)."""
    return [
        b
        for b in KNOWN_BREAKS
        if b.package in versions
        and versions[b.package] in SpecifierSet(b.versions)
        and (bridge or not b.bridge_only)
    ]


def warn_known_breaks(bridge: bool) -> list[KnownBreak]:
    """Emit one :class:`StackWarning` per known break of the installed versions (once per process)."""
    found = known_breaks(installed_versions(), bridge)
    versions = installed_versions()
    for b in found:
        key = f"{b.package}{b.versions}{bridge}"
        if key in _warned:
            continue
        _warned.add(key)
        warnings.warn(
            f"{b.package} {versions[b.package]} (broken: {b.package}{b.versions}): {b.what}. Fix: {b.fix}.",
            StackWarning,
            stacklevel=3,
        )
    return found
