"""Band activation patching: copy band components of ``hook_rot_q`` / ``hook_rot_k`` from a
clean run into a corrupted run, per layer × head × band (× position), and measure a metric.

Like TransformerLens' ``patching`` module: one generic function (:func:`patch_sweep`) and
small named wrappers with documented output shapes —

* :func:`patch_layer_band`      -> ``[layer, band]``
* :func:`patch_layer_head_band` -> ``[layer, head, band]``
* :func:`patch_layer_band_pos`  -> ``[layer, band, pos]``

Every value is ``metric(logits of the patched corrupted run)``; the result's ``.base`` is
the metric of the unpatched corrupted run and ``.effect`` the difference. ``method``
chooses the tier from :data:`rope_interp.sweep.tiers.TIERS` (``"exact"`` — default, prefix reuse
and batched conditions; ``"naive"`` — one full hooked forward per condition, the reference;
``"attribution"`` — gradient × (clean − corrupted); ``"qk_attribution"`` — the pattern change
computed exactly, then linearised (AtP*); ``"refine"`` — estimates, with the top cells exact).
Patching builds on the sweep engine (:mod:`rope_interp.sweep.tiers`, :mod:`rope_interp.sweep.grid`).

The head axis: query heads for ``target="q"``; kv heads for ``"k"``; for ``"qk"`` kv
*groups* (kv head ``g`` with every query head reading it; the same as heads for
multi-head attention). Patching band ``i`` moves the 2 numbers of band ``i``; the
pass-through dims of partial-rotary models are left alone (``passthrough=True`` on
:class:`MaskedBands` moves them too).

Metrics live in :mod:`rope_interp.sweep.metrics` (re-exported here): :func:`logit_diff`,
:func:`loss_metric`, :func:`kl_metric`, :class:`PatternDistance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch  # noqa: F401  (used by the doctests)
from torch import Tensor

from ..errors import ParameterError, RopeInterpError
from ..intervene.modes import Method
from ..model import adapter
from ..model.kind import Model
from .grid import AXES, CellOp, Grid, MaskedBands, SweepResult, capture_source  # noqa: F401  (public names)
from .metrics import Metric, PatternDistance, kl_metric, logit_diff, loss_metric, metric_values  # noqa: F401
from .tiers import run_sweep


def check_pair(model: Model, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    """Tokens of a clean/corrupted pair; they must have the same shape."""
    clean, corrupted = adapter.to_tokens(model, clean), adapter.to_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise RopeInterpError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} differ in shape; "
            "patching needs aligned positions (pad or choose prompts with the same token count)"
        )
    return clean, corrupted


# ---- sweeps ----------------------------------------------------------------------------------------------
def patch_sweep(
    model: Model,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    per: Sequence[str] = ("layer", "band"),
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    target: str | None = None,
    method: Method = "exact",
    progress: bool = True,
    **kwargs: Any,
) -> SweepResult:
    """Patch clean band components into the corrupted run, one condition per cell of ``per``.

    ``values`` has shape ``[len(layers), (heads), (bands), (positions)]`` following ``per``
    (axes in the canonical order layer, head, band, pos; see the module docstring for the
    head axis). ``kwargs`` go to the tier (e.g. ``batch_size`` for ``"exact"``).

    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> clean, corrupt = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 9, 4]])
    >>> r = patch_sweep(model, clean, corrupt, logit_diff(5, 6), ["layer", "band"], progress=False)
    >>> r.values.shape, r.dims
    (torch.Size([2, 8]), ('layer', 'band'))
    """
    clean, corrupted = check_pair(model, clean, corrupted)
    if "mode" in kwargs or "params" in kwargs:
        raise ParameterError("patch_sweep copies clean bands; for mode=/params= use ablation_sweep")
    return run_sweep(
        model,
        corrupted,
        metric,
        per,
        method,
        source=clean,
        layers=layers,
        heads=heads,
        bands=bands,
        positions=positions,
        target=target,
        progress=progress,
        **kwargs,
    )


def patch_layer_band(model, clean, corrupted, metric, **kwargs) -> SweepResult:
    """``values [layer, band]``: patch band ``b`` of every head at layer ``L`` (q and k by default).

    >>> from rope_interp.model.testing import tiny_model
    >>> m = tiny_model(); t = torch.tensor([[1, 2, 3]])
    >>> patch_layer_band(m, t, t, logit_diff(1, 2), progress=False).effect.abs().max().item() < 1e-5
    True
    """
    return patch_sweep(model, clean, corrupted, metric, ("layer", "band"), **kwargs)


def patch_layer_head_band(model, clean, corrupted, metric, **kwargs) -> SweepResult:
    """``values [layer, head, band]`` (head axis as in the module docstring)."""
    return patch_sweep(model, clean, corrupted, metric, ("layer", "head", "band"), **kwargs)


def patch_layer_band_pos(model, clean, corrupted, metric, **kwargs) -> SweepResult:
    """``values [layer, band, pos]``: one band at one position of every head."""
    return patch_sweep(model, clean, corrupted, metric, ("layer", "band", "pos"), **kwargs)
