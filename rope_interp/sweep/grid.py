"""The sweep engine's data: the grid of conditions, the result type, and the hook set that
applies any intervention mode (or a patch from a source run) to chosen cells.

A *cell* is one (head, band, pos) selection within a layer (axes as chosen by ``per``);
:class:`Grid` lists them and turns a list of cells into boolean masks ``[K, pos|1, head, band]``;
:class:`CellOp` is what a cell receives (a row of :data:`rope_interp.intervene.modes.MODE_TABLE`
applied to the band view, or the source run's bands); :class:`MaskedBands` writes ``K``
conditions into ``K`` stacked copies of a run at one layer. :class:`SweepResult` holds the
values. The tiers that use these live in :mod:`rope_interp.sweep.tiers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..bands import band_view, pass_view
from ..errors import ParameterError, RopeInterpError
from ..intervene.modes import BandContext, angle_dtype, check_target, resolve_reference, row
from ..model import adapter
from ..model.hooks import FwdHooks, HookSet, attn_hook
from ..model.layout import RotaryBands
from ..validate import indices

AXES = ("layer", "head", "band", "pos")


# ---- results ---------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Values of a sweep: ``values`` has one axis per name in ``dims`` (e.g. ``("layer", "band")``).

    ``coords[d]`` are the indices along axis ``d`` (model layers, heads, bands, positions);
    ``base`` is the metric of the run without any change, ``effect = values - base``.
    """

    values: Tensor
    dims: tuple[str, ...]
    coords: dict[str, list[int]]
    base: float
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effect(self) -> Tensor:
        return self.values - self.base

    def to_dataframe(self):
        """Long table: one row per condition with the index columns, ``value`` and ``effect``."""
        import pandas as pd

        grids = torch.meshgrid(*[torch.tensor(self.coords[d]) for d in self.dims], indexing="ij")
        data = {d: g.flatten().tolist() for d, g in zip(self.dims, grids, strict=True)}
        data["value"] = self.values.flatten().tolist()
        data["effect"] = self.effect.flatten().tolist()
        return pd.DataFrame(data)

    def plot(self, title: str | None = None, effect: bool = True):
        """Heatmap of ``effect`` (2-D), or of the largest |effect| over the middle axes (3-D/4-D)."""
        import matplotlib.pyplot as plt

        z = (self.effect if effect else self.values).detach().float().cpu()
        dims = self.dims
        if z.ndim > 2:
            idx = z.abs().flatten(1, -2).argmax(1)
            z = z.flatten(1, -2).gather(1, idx[:, None, :])[:, 0]
            dims = (dims[0], dims[-1])
        elif z.ndim == 1:
            z, dims = z[None], ("", dims[0])
        fig, ax = plt.subplots(figsize=(max(4, 0.25 * z.shape[1] + 2), max(3, 0.22 * z.shape[0] + 1.5)))
        lim = float(z.abs().max()) or 1.0
        im = ax.imshow(z.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xlabel(dims[1])
        ax.set_ylabel(dims[0])
        ax.set_title(
            title or f"{self.method} sweep: {'effect' if effect else 'value'} per {' × '.join(self.dims)}"
        )
        fig.colorbar(im, ax=ax, label="metric change" if effect else "metric")
        fig.tight_layout()
        return fig


# ---- conditions: which (head, band, pos) cells a condition touches --------------------------------------
@dataclass
class Grid:
    """The conditions of a sweep, and the masks each one applies at its layer."""

    spec: RotaryBands
    dims: tuple[str, ...]
    coords: dict[str, list[int]]
    target: str
    n_pos: int

    @classmethod
    def build(cls, model, per, layers, heads, bands, positions, target, n_pos) -> Grid:
        spec = RotaryBands.from_model(model)
        per = (per,) if isinstance(per, str) else tuple(per)
        bad = [d for d in per if d not in AXES]
        if bad or "layer" not in per or len(set(per)) != len(per):
            raise RopeInterpError(f"per must list distinct axes from {AXES} including 'layer', got {per}")
        check_target(target)
        dims = tuple(d for d in AXES if d in per)
        n_head_axis = spec.n_heads if target == "q" else spec.n_kv_heads
        coords = {"layer": adapter.layers(model, layers)}
        if "head" in dims:
            coords["head"] = (
                list(range(n_head_axis))
                if heads is None
                else indices("head" if target == "q" else "kv head", heads, n_head_axis)
            )
        elif heads is not None:
            raise RopeInterpError("heads= selects the head axis: add 'head' to per (or leave heads=None)")
        if "band" in dims or bands is not None:
            coords["band"] = (
                list(range(spec.n_bands)) if bands is None else indices("band", bands, spec.n_bands)
            )
        if "pos" in dims:
            coords["pos"] = (
                list(range(n_pos))
                if positions is None
                else indices("position", positions, n_pos, "the input")
            )
        elif positions is not None:
            raise RopeInterpError("positions= selects the pos axis: add 'pos' to per")
        return cls(spec, dims, coords, target, n_pos)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.dims)

    def cells(self) -> list[dict[str, int]]:
        """Every condition within one layer, as ``{axis: index}`` (in row-major order)."""
        inner = [d for d in self.dims if d != "layer"]
        grids = (
            torch.cartesian_prod(*[torch.tensor(self.coords[d]) for d in inner])
            if inner
            else torch.zeros(1, 0)
        )
        grids = grids.reshape(-1, len(inner)).long()
        return [dict(zip(inner, row.tolist(), strict=True)) for row in grids]

    def masks(self, cells: list[dict[str, int]], device) -> tuple[Tensor | None, Tensor | None]:
        """Bool masks ``[K, pos|1, head, band]`` for q and ``[K, pos|1, kv_head, band]`` for k."""
        spec, K = self.spec, len(cells)
        P = self.n_pos if "pos" in self.dims else 1
        q = torch.zeros(K, P, spec.n_heads, spec.n_bands, dtype=torch.bool) if "q" in self.target else None
        k = torch.zeros(K, P, spec.n_kv_heads, spec.n_bands, dtype=torch.bool) if "k" in self.target else None
        all_bands = torch.tensor(self.coords.get("band", list(range(spec.n_bands))))
        all_pos = torch.arange(P)
        for i, c in enumerate(cells):
            b = torch.tensor([c["band"]]) if "band" in c else all_bands
            p = torch.tensor([c["pos"]]) if "pos" in c else all_pos
            if "head" in c:
                h = c["head"]
                qh = (
                    [h]
                    if self.target == "q"
                    else [x for x in range(spec.n_heads) if int(spec.kv_map[x]) == h]
                )
                qh, kh = torch.tensor(qh), torch.tensor([h])
            else:
                qh, kh = torch.arange(spec.n_heads), torch.arange(spec.n_kv_heads)
            if q is not None:
                q[i][p[:, None, None], qh[None, :, None], b[None, None, :]] = True
            if k is not None:
                k[i][p[:, None, None], kh[None, :, None], b[None, None, :]] = True
        return (None if q is None else q.to(device)), (None if k is None else k.to(device))


# ---- what a cell receives ---------------------------------------------------------------------------------
class CellOp:
    """The new band view a selected cell gets: a mode of :data:`~rope_interp.intervene.modes.MODE_TABLE`
    applied to the run's own bands, or (``source``) the bands of another run.

    Built once per sweep, for all heads and bands of ``layers`` (the masks pick cells);
    ``params`` must already be validated (:func:`~rope_interp.intervene.modes.check_params`). Position-
    dependent modes use positions ``0 .. n - 1`` (a sweep has no KV cache). A per-band
    ``phase`` has one value per band of the model.

    >>> from rope_interp.model.testing import tiny_model
    >>> m = tiny_model()
    >>> op = CellOp(m, [0], mode="zero")
    >>> op.new_view(torch.ones(1, 3, 4, 8, 2), 0, "q").abs().sum().item()
    0.0
    """

    def __init__(
        self,
        model: Any,
        layers: Sequence[int],
        *,
        mode: str = "zero",
        params: dict[str, Any] | None = None,
        source: dict[int, dict[str, Tensor]] | None = None,
        target: str = "qk",
    ):
        self.spec = spec = RotaryBands.from_model(model)
        self.mode, self.params, self.source = mode, dict(params or {}), source
        self.row = None if source is not None else row(mode)
        dev = adapter.device(model)
        self._adt = angle_dtype(dev)
        self._freqs = {L: spec.freqs[L].to(device=dev, dtype=self._adt) for L in layers}
        self._reference: dict[tuple[int, str], Tensor] = {}
        if self.row is not None and self.row.position_dependent and adapter.of(model).positions_from_tables:
            raise ParameterError(
                f"a sweep in mode {mode!r} needs token positions, which a TransformerBridge does not expose to "
                "start_at_layer runs; load the model as a HookedTransformer"
            )
        if "phase" in self.params and isinstance(self.params["phase"], Tensor):
            ph = self.params["phase"]
            if ph.shape[0] != spec.n_bands:
                raise ParameterError(
                    f"in a sweep, phase is a scalar or one value per band of the model ({spec.n_bands}), "
                    f"got {ph.shape[0]} values"
                )
            self.params["phase"] = ph.to(device=dev, dtype=self._adt)
        ref = self.params.get("reference")
        if mode == "mean" and ref is not None:
            dtype = next(model.parameters()).dtype
            for side in ("q", "k") if target == "qk" else (target,):
                for L, v in resolve_reference(spec, ref, layers, side).items():
                    self._reference[L, side] = v.to(device=dev, dtype=dtype)

    def new_view(self, v: Tensor, layer: int, side: str) -> Tensor:
        """The replacement for band view ``v`` ``[..., pos, head, band, 2]`` of ``side`` at ``layer``."""
        if self.source is not None:
            src = band_view(self.source[layer][side], self.spec.rotary_dim, self.spec.adjacent_pairs)
            return src.to(v.dtype).expand_as(v)
        assert self.row is not None
        pos = None
        if self.row.position_dependent:
            pos = torch.arange(v.shape[-4], device=v.device, dtype=self._adt)
        ctx = BandContext(self._freqs[layer], pos, self._reference.get((layer, side)))
        return self.row.apply(v, ctx, self.params)


# ---- the hook set that applies masks --------------------------------------------------------------------
class MaskedBands(HookSet):
    """At one layer, give the masked band cells of q/k their :class:`CellOp` values (default: zero,
    or the ``source`` run's bands when given).

    Masks are ``[K, pos|1, head, band]`` bool: with ``K > 1`` the batch holds ``K`` stacked
    copies of the run and copy ``k`` gets mask ``k`` (several conditions in one forward).
    ``source`` maps ``"q"``/``"k"`` to full activations ``[batch, pos, head, d_head]`` of the
    source run (None = zero-ablation); ``op`` any :class:`CellOp`. Writes in place, on the
    model's device.

    >>> from rope_interp.model.testing import tiny_model
    >>> model, toks = tiny_model(), torch.tensor([[1, 2, 3]])
    >>> q = torch.zeros(1, 1, 4, 8, dtype=torch.bool); q[..., 0] = True
    >>> torch.allclose(MaskedBands(model, 0, q, None).run(toks), model(toks))
    False
    """

    def __init__(
        self,
        model: Any,
        layer: int,
        q_mask: Tensor | None,
        k_mask: Tensor | None,
        source: dict[str, Tensor] | None = None,
        passthrough: bool = False,
        *,
        op: CellOp | None = None,
    ):
        super().__init__(model)
        self.spec = RotaryBands.from_model(model)
        self.layer = adapter.layers(model, layer)[0]
        self.masks = {"q": q_mask, "k": k_mask}
        if op is not None and source is not None:
            raise ParameterError("MaskedBands takes source= (patching) or op=, not both")
        self.source = source
        self.op = op
        self.passthrough = passthrough

    def _apply(self, act: Tensor, side: str) -> Tensor:
        mask = self.masks[side]
        if mask is None:
            return act
        mask = mask.to(act.device)  # no-op unless the model spans devices
        rd, adj, K = self.spec.rotary_dim, self.spec.adjacent_pairs, mask.shape[0]
        if act.shape[0] % K:
            raise RopeInterpError(f"batch {act.shape[0]} is not a multiple of the {K} stacked conditions")
        x = act.unflatten(0, (K, -1))
        v, m = band_view(x, rd, adj), mask[:, None, ..., None]
        if self.op is not None:
            v.copy_(torch.where(m, self.op.new_view(v, self.layer, side).to(v.dtype), v))
        elif self.source is None:
            v.masked_fill_(m, 0)
        else:
            src = self.source[side]
            if src.shape != x.shape[1:]:
                raise RopeInterpError(
                    f"source {side} has shape {tuple(src.shape)}, run has {tuple(x.shape[1:])}"
                )
            v.copy_(torch.where(m, band_view(src, rd, adj).to(v.dtype), v))
            if self.passthrough and rd < act.shape[-1]:
                keep = mask.any(-1)[:, None, ..., None]
                p = pass_view(x, rd)
                p.copy_(torch.where(keep, pass_view(src, rd).to(p.dtype), p))
        return act

    def fwd_hooks(self) -> FwdHooks:
        hooks: FwdHooks = []
        for side in ("q", "k"):
            if self.masks[side] is not None:
                hooks.append(
                    (attn_hook(self.layer, "rot_" + side), lambda a, hook, s=side: self._apply(a, s))
                )
        return hooks


def capture_source(model: Any, tokens: Tensor, layers: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    """Full ``hook_rot_q`` / ``hook_rot_k`` activations ``[batch, pos, head, d_head]`` of ``layers`` on ``tokens``."""
    store: dict[int, dict[str, Tensor]] = {L: {} for L in layers}

    def _store(act: Tensor, L: int, side: str) -> None:
        store[L][side] = act.detach().clone()

    fwd = [
        (attn_hook(L, "rot_" + s), lambda a, hook, L=L, s=s: _store(a, L, s))
        for L in layers
        for s in ("q", "k")
    ]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=fwd, stop_at_layer=max(layers) + 1)
    return store
