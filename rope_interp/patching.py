"""Band activation patching: copy band components of ``hook_rot_q`` / ``hook_rot_k`` from a
clean run into a corrupted run, per layer × head × band (× position), and measure a metric.

Like TransformerLens' ``patching`` module: one generic function (:func:`patch_sweep`) and
small named wrappers with documented output shapes —

* :func:`patch_layer_band`      -> ``[layer, band]``
* :func:`patch_layer_head_band` -> ``[layer, head, band]``
* :func:`patch_layer_band_pos`  -> ``[layer, band, pos]``

Every value is ``metric(logits of the patched corrupted run)``; the result's ``.base`` is
the metric of the unpatched corrupted run and ``.effect`` the difference. ``method``
chooses the tier from :mod:`rope_interp.sweeps` (``"exact"`` — default, prefix reuse and
batched conditions; ``"naive"`` — one full hooked forward per condition, the reference;
``"attribution"`` — gradient × (clean − corrupted), one forward + one backward).

The head axis: query heads for ``target="q"``; kv heads for ``"k"``; for ``"qk"`` kv
*groups* (kv head ``g`` with every query head reading it; the same as heads for
multi-head attention). Patching band ``i`` moves the 2 numbers of band ``i``; the
pass-through dims of partial-rotary models are left alone (``passthrough=True`` on
:class:`MaskedBands` moves them too).

Metrics take the logits ``[batch, pos, vocab]`` and return a scalar tensor:
:func:`logit_diff`, :func:`loss_metric`, :func:`kl_metric`; :class:`PatternDistance`
reads an attention pattern instead (it is a HookSet the sweeps attach themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from . import adapter
from .bands import band_view, pass_view
from .errors import RopeInterpError
from .hooking import FwdHooks, HookSet
from .hooks import attn_hook
from .spec import RotaryBands

Metric = Callable[[Tensor], Tensor]
AXES = ("layer", "head", "band", "pos")


# ---- metrics ---------------------------------------------------------------------------------------------
def logit_diff(answer: int | Tensor, wrong: int | Tensor, pos: int = -1) -> Metric:
    """Metric: mean over the batch of ``logit[answer] - logit[wrong]`` at position ``pos``.

    >>> m = logit_diff(2, 0)
    >>> m(torch.tensor([[[1.0, 0.0, 3.0]]])).item()
    2.0
    """
    a, w = torch.as_tensor(answer).reshape(-1), torch.as_tensor(wrong).reshape(-1)

    def metric(logits: Tensor) -> Tensor:
        last = logits[:, pos]
        ai, wi = a.to(last.device).expand(last.shape[0]), w.to(last.device).expand(last.shape[0])
        rows = torch.arange(last.shape[0], device=last.device)
        return (last[rows, ai] - last[rows, wi]).mean()

    return metric


def loss_metric(tokens: Tensor) -> Metric:
    """Metric: mean next-token cross-entropy of ``tokens`` ``[batch, pos]``.

    >>> abs(loss_metric(torch.tensor([[0, 1]]))(torch.zeros(1, 2, 4)).item() - 1.3862944) < 1e-6
    True
    """

    def metric(logits: Tensor) -> Tensor:
        t = tokens.to(logits.device)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return -logp.gather(-1, t[:, 1:, None]).mean()

    return metric


def kl_metric(reference_logits: Tensor, pos: int | None = -1) -> Metric:
    """Metric: ``KL(reference || patched)`` of the next-token distributions, mean over batch (and positions if ``pos=None``).

    >>> ref = torch.randn(1, 3, 5)
    >>> kl_metric(ref)(ref).abs().item() < 1e-6
    True
    """
    ref = reference_logits if pos is None else reference_logits[:, pos : (pos + 1) or None]
    ref_logp = torch.log_softmax(ref.float(), dim=-1)

    def metric(logits: Tensor) -> Tensor:
        new = logits if pos is None else logits[:, pos : (pos + 1) or None]
        logp = torch.log_softmax(new.float(), dim=-1)
        r = ref_logp.to(logp.device)
        return (r.exp() * (r - logp)).sum(-1).mean()

    return metric


class PatternDistance(HookSet):
    """Metric on an attention pattern: mean total-variation distance of ``layer``'s pattern rows
    (over batch, heads and query positions) from ``reference`` ``[batch, head, q_pos, k_pos]``.

    It ignores the logits; sweeps attach its hook (it is a HookSet). Conditions at layers
    after ``layer`` cannot change the pattern and get the base value.

    >>> from rope_interp.testing import tiny_model
    >>> model, toks = tiny_model(), torch.tensor([[1, 2, 3, 4]])
    >>> ref = PatternDistance.reference(model, toks, layer=1)
    >>> pd = PatternDistance(model, 1, ref)
    >>> with pd:
    ...     logits = model(toks)
    >>> pd(logits).item() < 1e-6   # the same pattern: distance 0 up to rounding
    True
    """

    def __init__(self, model: Any, layer: int, reference: Tensor, heads: Sequence[int] | None = None):
        super().__init__(model)
        self.layer = adapter.layers(model, layer)[0]
        self.heads = None if heads is None else adapter.heads(model, heads)
        self.ref = reference if self.heads is None else reference[:, self.heads]
        self._pattern: Tensor | None = None

    @staticmethod
    def reference(model: Any, tokens: Any, layer: int) -> Tensor:
        """The pattern of ``layer`` on ``tokens`` (one forward up to that layer)."""
        store: list[Tensor] = []
        with torch.no_grad():
            model.run_with_hooks(
                adapter.to_tokens(model, tokens),
                stop_at_layer=layer + 1,
                fwd_hooks=[(attn_hook(layer, "pattern"), lambda a, hook: store.append(a.detach().clone()))],
            )
        return store[0]

    def _record(self, act: Tensor, hook: Any) -> None:
        self._pattern = act if self.heads is None else act[:, self.heads]

    def fwd_hooks(self) -> FwdHooks:
        return [(attn_hook(self.layer, "pattern"), self._record)]

    def batched(self, logits: Tensor, n: int) -> Tensor:
        """One value per condition when ``n`` conditions are stacked along the batch."""
        if self._pattern is None:
            raise RopeInterpError(
                f"PatternDistance: layer {self.layer}'s pattern was not recorded in this run"
            )
        p = self._pattern.unflatten(0, (n, -1))
        tv = 0.5 * (p - self.ref.to(p)).abs().sum(-1)
        return tv.flatten(1).mean(1)

    def __call__(self, logits: Tensor) -> Tensor:
        return self.batched(logits, 1)[0]


def metric_values(metric: Metric, logits: Tensor, n: int) -> Tensor:
    """Evaluate ``metric`` on ``n`` conditions stacked along the batch: a float tensor ``[n]``.

    Raises a clear error if the metric does not return a scalar.
    """
    if hasattr(metric, "batched"):
        return metric.batched(logits, n)
    out = []
    for chunk in logits.unflatten(0, (n, -1)):
        v = metric(chunk)
        if isinstance(v, (int, float)):
            v = torch.tensor(float(v), device=logits.device)
        if not isinstance(v, Tensor) or v.ndim != 0:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise RopeInterpError(
                f"metric must return a scalar (0-dim tensor or float), got {shape}; reduce it, e.g. .mean()"
            )
        out.append(v)
    return torch.stack(out).float()


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
        if target not in ("q", "k", "qk"):
            raise RopeInterpError(f"unknown target {target!r}; expected 'q', 'k' or 'qk'")
        dims = tuple(d for d in AXES if d in per)
        n_head_axis = spec.n_heads if target == "q" else spec.n_kv_heads
        from .errors import check_index

        coords = {"layer": adapter.layers(model, layers)}
        if "head" in dims:
            coords["head"] = (
                list(range(n_head_axis))
                if heads is None
                else check_index("head" if target == "q" else "kv head", heads, n_head_axis)
            )
        elif heads is not None:
            raise RopeInterpError("heads= selects the head axis: add 'head' to per (or leave heads=None)")
        if "band" in dims or bands is not None:
            coords["band"] = (
                list(range(spec.n_bands)) if bands is None else check_index("band", bands, spec.n_bands)
            )
        if "pos" in dims:
            coords["pos"] = (
                list(range(n_pos))
                if positions is None
                else check_index("position", positions, n_pos, "the input")
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


# ---- the hook set that applies masks --------------------------------------------------------------------
class MaskedBands(HookSet):
    """At one layer, set the masked band cells of q/k to a source (clean bands) or to zero.

    Masks are ``[K, pos|1, head, band]`` bool: with ``K > 1`` the batch holds ``K`` stacked
    copies of the run and copy ``k`` gets mask ``k`` (several conditions in one forward).
    ``source`` maps ``"q"``/``"k"`` to full activations ``[batch, pos, head, d_head]`` of the
    source run (None = zero-ablation). Writes in place, on the model's device.

    >>> from rope_interp.testing import tiny_model
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
    ):
        super().__init__(model)
        self.spec = RotaryBands.from_model(model)
        self.layer = adapter.layers(model, layer)[0]
        self.masks = {"q": q_mask, "k": k_mask}
        self.source = source
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
        if self.source is None:
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


def check_pair(model: Any, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    """Tokens of a clean/corrupted pair; they must have the same shape."""
    clean, corrupted = adapter.to_tokens(model, clean), adapter.to_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise RopeInterpError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} differ in shape; "
            "patching needs aligned positions (pad or choose prompts with the same token count)"
        )
    return clean, corrupted


# ---- sweeps ----------------------------------------------------------------------------------------------
Method = Literal["exact", "naive", "attribution"]


def patch_sweep(
    model: Any,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    per: Sequence[str] = ("layer", "band"),
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    target: str = "qk",
    method: Method = "exact",
    progress: bool = True,
    **kwargs: Any,
) -> SweepResult:
    """Patch clean band components into the corrupted run, one condition per cell of ``per``.

    ``values`` has shape ``[len(layers), (heads), (bands), (positions)]`` following ``per``
    (axes in the canonical order layer, head, band, pos; see the module docstring for the
    head axis). ``kwargs`` go to the tier (e.g. ``batch_size`` for ``"exact"``).

    >>> from rope_interp.testing import tiny_model
    >>> model = tiny_model()
    >>> clean, corrupt = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 9, 4]])
    >>> r = patch_sweep(model, clean, corrupt, logit_diff(5, 6), ["layer", "band"], progress=False)
    >>> r.values.shape, r.dims
    (torch.Size([2, 8]), ('layer', 'band'))
    """
    from . import sweeps

    clean, corrupted = check_pair(model, clean, corrupted)
    tiers = {
        "exact": sweeps.exact_sweep,
        "naive": sweeps.naive_sweep,
        "attribution": sweeps.attribution_sweep,
    }
    if method not in tiers:
        raise RopeInterpError(f"unknown method {method!r}; expected one of {tuple(tiers)}")
    return tiers[method](
        model,
        corrupted,
        metric,
        per,
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

    >>> from rope_interp.testing import tiny_model
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
