"""The sweep engine's data: the grid of conditions, the result type, and the hook set that
applies any intervention mode (or a patch from a source run) to chosen cells.

A *cell* is one (head, band, pos) selection within a layer (axes as chosen by ``per``);
:class:`Grid` lists them and turns a list of cells into boolean masks ``[K, pos|1, head, band]``;
:class:`CellOp` is what a cell receives (a :class:`~rope_interp.intervene.modes.ResolvedMode`
applied to the band view, or the source run's bands); :class:`MaskedBands` writes ``K``
conditions into ``K`` stacked copies of a run at one layer. :class:`SweepResult` holds the
values. A sweep builds them once, in a :class:`~rope_interp.sweep.selection.Selection`; the tiers
that use them live in :mod:`rope_interp.sweep.tiers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..bands import band_view, pass_view
from ..errors import ParameterError, RopeInterpError
from ..intervene.modes import ResolvedMode, check_target
from ..model import adapter
from ..model.hooks import SIDES, FwdHooks, HookSet, attn_hook, rot_site
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import indices

AXES = ("layer", "head", "band", "pos")


# ---- results ---------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Values of a sweep: ``values`` has one axis per name in ``dims`` (e.g. ``("layer", "band")``).

    ``coords[d]`` are the indices along axis ``d`` (model layers, heads, bands, positions);
    ``base`` is the metric of the run without any change, ``effect = values - base``.

    The head axis is named for what it indexes: ``"kv_head"`` (key/value heads, ``n_key_value_heads``
    of them) when a sweep per head targets ``k`` or ``qk`` on a GQA model, ``"head"`` (query heads)
    otherwise; without GQA the two coincide and it is ``"head"``. A sweep records the name as
    ``extra["head_axis"]`` and the result renames its ``"head"`` axis to it, in ``dims``, ``coords``,
    :meth:`to_dataframe`'s columns and the plot's labels.
    """

    values: Tensor
    dims: tuple[str, ...]
    coords: dict[str, list[int]]
    base: float
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        axis = self.extra.get("head_axis", "head")
        if axis != "head" and "head" in self.dims:
            self.dims = tuple(axis if d == "head" else d for d in self.dims)
            self.coords = {(axis if d == "head" else d): v for d, v in self.coords.items()}

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
        plt.close(fig)  # detached, as analyses.inputs.figure: shown as a cell's value, saved with savefig
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
def grid_dims(per: str | Sequence[str]) -> tuple[str, ...]:
    """The axes of a sweep's grid, in the canonical order of :data:`AXES` (``"layer"`` required).

    >>> grid_dims(["band", "layer"])
    ('layer', 'band')
    """
    per = (per,) if isinstance(per, str) else tuple(per)
    bad = [d for d in per if d not in AXES]
    if bad or "layer" not in per or len(set(per)) != len(per):
        raise RopeInterpError(f"per must list distinct axes from {AXES} including 'layer', got {per}")
    return tuple(d for d in AXES if d in per)


@dataclass
class Grid:
    """The conditions of a sweep, and the masks each one applies at its layer."""

    spec: RotaryBands
    dims: tuple[str, ...]
    coords: dict[str, list[int]]
    target: str
    n_pos: int

    @classmethod
    def build(
        cls,
        spec: RotaryBands,
        dims: tuple[str, ...],
        layers: list[int],
        heads: Sequence[int] | None,
        bands: Sequence[int] | None,
        positions: Sequence[int] | None,
        target: str,
        n_pos: int,
    ) -> Grid:
        """The grid over ``dims`` (from :func:`grid_dims`) of validated ``layers``; the other axes checked here."""
        check_target(target)
        n_head_axis = spec.n_heads if target == "q" else spec.n_kv_heads
        coords = {"layer": list(layers)}
        if "head" in dims:
            coords["head"] = (
                list(range(n_head_axis))
                if heads is None
                else indices("head" if target == "q" else "kv head", heads, n_head_axis)
            )
        elif heads is not None:
            raise RopeInterpError("heads= selects the head axis: add 'head' to per (or leave heads=None)")
        if "band" in dims or bands is not None:
            coords["band"] = spec.bands(bands)
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

    @property
    def head_axis(self) -> str:
        """What the ``"head"`` axis indexes, as the result names it (see :class:`SweepResult`).

        >>> from rope_interp.model.testing import tiny_model
        >>> spec = RotaryBands.from_model(tiny_model(n_key_value_heads=2))
        >>> [Grid.build(spec, ("layer", "head"), [0], None, None, None, t, 3).head_axis for t in ("q", "k", "qk")]
        ['head', 'kv_head', 'kv_head']
        """
        gqa = self.spec.n_kv_heads != self.spec.n_heads
        return "kv_head" if "head" in self.dims and self.target != "q" and gqa else "head"

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
        all_bands = torch.tensor(self.coords["band"] if "band" in self.coords else spec.bands())
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
@dataclass(frozen=True, eq=False)
class CellOp:
    """The new band view a selected cell gets: a :class:`~rope_interp.intervene.modes.ResolvedMode`
    applied to the run's own bands, or (``source``) the bands of another run.

    One per sweep, for all heads and bands of its layers (the masks pick cells): ``recipe`` from
    :func:`~rope_interp.intervene.modes.resolve_mode` with ``bands=None`` (a per-band ``phase`` has one
    value per band of the model); position-dependent modes use positions ``0 .. n - 1`` (a sweep has
    no KV cache). ``source``: ``{layer: {"q"/"k": [batch, pos, head, d_head]}}`` (:func:`capture_source`).

    >>> from rope_interp.intervene.modes import resolve_mode
    >>> from rope_interp.model.testing import tiny_model
    >>> m = tiny_model()
    >>> op = CellOp(RotaryBands.from_model(m), resolve_mode(m, "zero", layers=[0]))
    >>> op.new_view(torch.ones(1, 3, 4, 8, 2), 0, "q").abs().sum().item()
    0.0
    """

    spec: RotaryBands
    recipe: ResolvedMode | None = None
    source: dict[int, dict[str, Tensor]] | None = None

    def __post_init__(self) -> None:
        if (self.recipe is None) == (self.source is None):
            raise ParameterError(
                "a CellOp takes exactly one of recipe= (a resolved mode) or source= (patching)"
            )

    def new_view(self, v: Tensor, layer: int, side: str) -> Tensor:
        """The replacement for band view ``v`` ``[..., pos, head, band, 2]`` of ``side`` at ``layer``."""
        if self.source is not None:
            src = band_view(self.source[layer][side], self.spec.rotary_dim, self.spec.adjacent_pairs)
            return src.to(v.dtype).expand_as(v)
        assert self.recipe is not None
        return self.recipe.apply(v, layer, side)


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
        model: Model,
        layer: int,
        q_mask: Tensor | None,
        k_mask: Tensor | None,
        source: dict[str, Tensor] | None = None,
        passthrough: bool = False,
        *,
        op: CellOp | None = None,
    ):
        super().__init__(model)
        self.spec = RotaryBands.from_model(model) if op is None else op.spec  # one layout per sweep
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
        for side in SIDES:
            if self.masks[side] is not None:
                hooks.append(
                    (attn_hook(self.layer, rot_site(side)), lambda a, hook, s=side: self._apply(a, s))
                )
        return hooks


def capture_source(model: Model, tokens: Tensor, layers: Sequence[int]) -> dict[int, dict[str, Tensor]]:
    """Full ``hook_rot_q`` / ``hook_rot_k`` activations ``[batch, pos, head, d_head]`` of ``layers`` on ``tokens``."""
    store: dict[int, dict[str, Tensor]] = {L: {} for L in layers}

    def _store(act: Tensor, L: int, side: str) -> None:
        store[L][side] = act.detach().clone()

    fwd: FwdHooks = [
        (attn_hook(L, rot_site(s)), lambda a, hook, L=L, s=s: _store(a, L, s)) for L in layers for s in SIDES
    ]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=fwd, stop_at_layer=max(layers) + 1)
    return store
