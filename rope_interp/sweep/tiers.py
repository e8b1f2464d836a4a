"""Band sweeps: one engine, every intervention mode, five tiers that trade exactness for speed.

Every sweep changes one cell of a grid (layer × band, layer × head × band, layer × band ×
pos; see :class:`rope_interp.sweep.grid.Grid`) at a time and records a metric. A cell gets any
mode of :data:`rope_interp.intervene.modes.MODE_TABLE` (``mode="zero"`` by default; ``params`` as for
:func:`~rope_interp.intervene.ablate.ablate_bands`) or, with ``source=clean_tokens``, the bands
of a clean run (patching). ``target`` None means the mode's default (``"k"`` for shift,
``"qk"`` otherwise; ``"qk"`` for patching). Every tier takes these selection keywords
(:class:`~rope_interp.sweep.selection.SelectionArgs`), validates them once into a
:class:`~rope_interp.sweep.selection.Selection` and runs on that (:func:`~rope_interp.sweep.selection.sweep_tier`).
The tiers (:data:`TIERS`, one per ``Method``):

* ``"naive"`` — one full hooked forward per condition (what TransformerLens' patching does).
  The reference; use it to check the others.
* ``"exact"`` — the same numbers (to float rounding). The unchanged run is computed once
  and its residual stream before every layer kept; a condition at layer ``L`` runs only
  blocks ``L..end`` (``start_at_layer``), and several conditions are stacked along the
  batch of one forward (``batch_size``).
* ``"attribution"`` — a first-order estimate of every cell at once (attribution patching,
  Nanda 2023; AtP in Kramár et al. 2024, arXiv:2403.00745):
  ``grad(metric) · (new − run)`` at the band views of ``hook_rot_q`` / ``hook_rot_k``, from
  one forward and one backward (plus one forward of the source run).
* ``"qk_attribution"`` — AtP*'s QK-fix (Kramár et al. 2024, §3.1), per band: the change of
  every head's attention pattern at the cell's layer is computed *exactly* from the per-band
  score decomposition (:func:`rope_interp.sweep.direct.band_changed_patterns`), then dotted with
  the gradient of the metric with respect to that layer's ``hook_pattern`` — all layers from
  one captured forward and one backward. Only the path from the pattern onwards is
  linearised, so it is exact when the metric is linear in that layer's pattern.
* ``"refine"`` — what users do by hand, built in: rank every cell with ``qk_attribution``,
  run the exact tier on a growing shortlist until doubling it no longer changes the exact
  top-``top`` (``extra["stable"]``; evidence, not a proof — see :func:`refine_sweep`), and
  return exact values for the shortlist and estimates for the rest
  (``result.extra["exact_mask"]`` marks which is which).

``"exact"`` and ``"refine"`` resume runs at a layer (``start_at_layer``), which a
TransformerBridge cannot: they refuse one (:class:`ParameterError`) before any work.

The analytic direct effect (:func:`ablated_patterns`, :func:`direct_effect_sweep`) lives in
:mod:`rope_interp.sweep.direct` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import distributed
from ..bands import band_view
from ..errors import ParameterError
from ..intervene.modes import METHODS, Method
from ..model import adapter
from ..model.hooks import SIDES, HookList, HookSet, Side, attn_hook, rot_site
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..validate import positive_int
from .direct import ablated_patterns, band_changed_patterns, direct_effect_sweep, pass_scores  # noqa: F401
from .grid import CellOp, Grid, MaskedBands, SweepResult
from .metrics import Metric, metric_values
from .selection import PER_DEFAULT, Selection, SelectionArgs

if TYPE_CHECKING:
    from typing_extensions import Unpack


def _metric_hooks(metric: Any) -> list:
    return metric.fwd_hooks() if isinstance(metric, HookSet) else []


def _progress(total: int, desc: str, progress: bool):
    return progress_bar(total=total, desc=desc, enabled=progress, leave=True)


def naive_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = PER_DEFAULT,
    *,
    progress: bool = True,
    **selection: Unpack[SelectionArgs],
) -> SweepResult:
    """Reference tier: one full hooked forward per condition. ``values`` shape follows ``per``.

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import logit_diff
    >>> r = naive_sweep(tiny_model(), torch.tensor([[1, 2, 3]]), logit_diff(1, 2), layers=[0], progress=False)
    >>> r.values.shape
    torch.Size([1, 8])
    """
    sel = Selection.build(model, tokens, per, selection, where="naive_sweep")
    tokens, grid, op = sel.tokens, sel.grid, sel.op
    dev, cells = adapter.device(model), grid.cells()
    todo = [(L, cell) for L in grid.coords["layer"] for cell in cells]
    with torch.no_grad(), model.hooks(fwd_hooks=_metric_hooks(metric)):
        base = metric_values(metric, model(tokens), 1)[0]

        def one_cell(group: list[int]) -> Tensor:
            L, cell = todo[group[0]]
            qm, km = grid.masks([cell], dev)
            with MaskedBands(model, L, qm, km, op=op):
                return metric_values(metric, model(tokens), 1).float().cpu()

        bar = _progress(len(todo), "naive sweep", progress)
        values = _sharded([[i] for i in range(len(todo))], one_cell, bar).reshape(grid.shape)
        bar.close()
    return SweepResult(values.cpu(), grid.dims, grid.coords, float(base), "naive", sel.extra())


def residuals(model: Model, tokens: Tensor, layers: Sequence[int]) -> tuple[dict[int, Tensor], Tensor]:
    """The residual stream entering each of ``layers`` (one block at a time) and the final logits."""
    res: dict[int, Tensor] = {}
    x = model(tokens, stop_at_layer=0)
    need = set(layers)
    n = adapter.n_layers(model)
    for L in range(n):
        if L in need:
            res[L] = x
        x = model(x, start_at_layer=L, stop_at_layer=L + 1)
    return res, model(x, start_at_layer=n)


def _batch_size(batch_size: int | None, max_batch_tokens: int, tokens: Tensor) -> int:
    if batch_size is None:
        return max(1, positive_int("max_batch_tokens", max_batch_tokens) // tokens.numel())
    return int(positive_int("batch_size", batch_size))  # type: ignore[arg-type]


def _exact_cells(
    model: Model,
    grid: Grid,
    op: CellOp,
    metric: Metric,
    res: dict[int, Tensor],
    base: Tensor,
    todo: Sequence[tuple[int, int]],
    batch_size: int,
    bar: Any = None,
    across_layers: bool = False,
) -> Tensor:
    """Exact metric of each ``(layer, cell index)`` in ``todo``: a float tensor.

    Default: one layer at a time, its cells stacked (prefix reuse: the forward starts at that
    layer). ``across_layers``: cells of different layers share a forward that starts at the
    earliest of them (each copy changed only at its own layer) — fewer, larger forwards, for a
    scattered shortlist.
    """
    dev, cells = adapter.device(model), grid.cells()
    metric_layer = getattr(metric, "layer", None)
    out = torch.empty(len(todo), dtype=torch.float32)
    groups: list[list[int]] = []
    live = [i for i, (L, _) in enumerate(todo) if metric_layer is None or L <= metric_layer]
    live_set = set(live)
    dead = [i for i in range(len(todo)) if i not in live_set]
    if dead:  # cannot reach the metric's layer
        out[dead] = base.float().cpu()
    if across_layers:
        live.sort(key=lambda i: todo[i][0])
        groups = [live[i : i + batch_size] for i in range(0, len(live), batch_size)]
    else:
        by_layer: dict[int, list[int]] = {}
        for i in live:
            by_layer.setdefault(todo[i][0], []).append(i)
        for idx in by_layer.values():
            groups += [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    if live:
        chunk = functools.partial(_exact_chunk, model, grid, op, metric, res, todo, dev=dev, cells=cells)
        out[[i for g in groups for i in g]] = _sharded(groups, chunk, bar)
    if bar is not None and dead:
        bar.update(len(dead))
    return out


def _sharded(groups: list[list[int]], run_group: Callable[[list[int]], Tensor], bar: Any = None) -> Tensor:
    """``run_group`` of every group (a batch of item indices run together), concatenated in order.

    Under torchrun each rank runs a contiguous block of the groups — the same batches as one
    process — and the values are gathered in rank order (:func:`rope_interp.distributed.map_shard`);
    ``bar`` then counts this rank's items.
    """

    def run(block: list[list[int]]) -> list[float]:
        if bar is not None and distributed.world() is not None:
            bar.total = bar.n + sum(len(g) for g in block)
        vals = []
        for g in block:
            vals += run_group(g).tolist()
            if bar is not None:
                bar.update(len(g))
        return vals

    parts = distributed.map_shard(groups, run, "the sweep's cells")
    return torch.tensor([v for part in parts for v in part], dtype=torch.float32)


def _exact_chunk(model, grid, op, metric, res, todo, chunk, *, dev, cells) -> Tensor:
    """The metric of the cells ``todo[chunk]`` stacked along the batch of one forward."""
    layers = [todo[j][0] for j in chunk]
    start = min(layers)
    qm, km = grid.masks([cells[todo[j][1]] for j in chunk], dev)
    hooks = []
    for L in sorted(set(layers)):
        mine = torch.tensor([lay == L for lay in layers], device=dev)[:, None, None, None]
        hooks.append(
            MaskedBands(model, L, None if qm is None else qm & mine, None if km is None else km & mine, op=op)
        )
    x = res[start].repeat(len(chunk), *([1] * (res[start].ndim - 1)))
    with contextlib.ExitStack() as stack:
        for h in hooks:
            stack.enter_context(h)
        return metric_values(metric, model(x, start_at_layer=start), len(chunk)).float().cpu()


def _check_resumable(model: Model, where: str) -> None:
    """Refuse, before any work, a model that cannot resume a run at a layer (the prefix-reusing tiers)."""
    if not adapter.of(model).resumes_at_layer:
        raise ParameterError(
            f"{where}: this model ({type(model).__name__}) cannot resume a run at a layer (start_at_layer), "
            "which the 'exact' and 'refine' tiers need; use method='naive' (same numbers, one full forward "
            "per cell), or the estimates 'attribution' / 'qk_attribution'"
        )


def exact_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = PER_DEFAULT,
    *,
    batch_size: int | None = None,
    max_batch_tokens: int = 1024,
    progress: bool = True,
    **selection: Unpack[SelectionArgs],
) -> SweepResult:
    """Exact tier: prefix reuse + ``batch_size`` conditions per forward (default: as many as
    fit in ``max_batch_tokens`` tokens). Same values as :func:`naive_sweep` to float rounding.

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import logit_diff
    >>> m, t, ld = tiny_model(), torch.tensor([[1, 2, 3]]), logit_diff(1, 2)
    >>> ex = exact_sweep(m, t, ld, layers=[1], progress=False)
    >>> torch.allclose(ex.values, naive_sweep(m, t, ld, layers=[1], progress=False).values, atol=1e-5)
    True
    >>> sh = exact_sweep(m, t, ld, mode="shift", params={"delta": 2}, progress=False)   # keys 2 later
    >>> sh.extra["target"], sh.values.shape
    ('k', torch.Size([2, 8]))
    """
    _check_resumable(model, "exact_sweep")
    sel = Selection.build(model, tokens, per, selection, where="exact_sweep")
    tokens, grid, op = sel.tokens, sel.grid, sel.op
    bs = _batch_size(batch_size, max_batch_tokens, tokens)
    n_cells = len(grid.cells())
    todo = [(L, c) for L in grid.coords["layer"] for c in range(n_cells)]
    with torch.no_grad(), model.hooks(fwd_hooks=_metric_hooks(metric)):
        res, logits = residuals(model, tokens, grid.coords["layer"])
        base = metric_values(metric, logits, 1)[0]
        bar = _progress(len(todo), "exact sweep", progress)
        values = _exact_cells(model, grid, op, metric, res, base, todo, bs, bar)
        bar.close()
    return SweepResult(
        values.reshape(grid.shape),
        grid.dims,
        grid.coords,
        float(base),
        "exact",
        sel.extra(batch_size=bs),
    )


# ---- first-order tiers -----------------------------------------------------------------------------------
def _grad_run(model, tokens, metric, hooks_at: dict[str, Any]) -> tuple[Tensor, dict, dict]:
    """One forward keeping the activations at ``hooks_at`` (name -> key) and one backward of the metric."""
    acts: dict[Any, Tensor] = {}

    def keep(act: Tensor, key: Any) -> Tensor:
        if not act.requires_grad:
            act.requires_grad_(True)
        acts[key] = act
        return act

    hooks = [(name, lambda a, hook, key=key: keep(a, key)) for name, key in hooks_at.items()]
    # a HookList, not model.hooks: the thread guard refuses to measure another thread's ablation
    with torch.enable_grad(), HookList(model, hooks + _metric_hooks(metric)):
        value = metric_values(metric, model(tokens), 1)[0]
        keys = list(acts)
        grads = torch.autograd.grad(value, [acts[k] for k in keys], allow_unused=True)
    grads_d = {k: (torch.zeros_like(acts[k]) if g is None else g) for k, g in zip(keys, grads, strict=True)}
    return value.detach(), {k: a.detach() for k, a in acts.items()}, grads_d


def _flat_estimate(est: SweepResult) -> bool:
    """Whether every estimated effect is ~0 (``<= 1e-6 * max(1, |base|)``, float32 rounding: a KL to the run
    itself estimates ~4e-8): the metric's gradient at the base run is zero (e.g. ``kl_metric`` or
    ``PatternDistance`` against the run itself), so the ranking is void."""
    return float((est.values.float() - est.base).abs().max()) <= 1e-6 * max(1.0, abs(est.base))


def _warn_flat(est: SweepResult, metric: Metric, where: str) -> SweepResult:
    if _flat_estimate(est):
        warnings.warn(
            f"{where}: every estimated effect is 0 for metric {_metric_name(metric)}: its gradient at the base "
            "run is zero (a KL or pattern distance to the run itself is minimal there), so a first-order "
            "estimate says nothing; use method='exact'",
            UserWarning,
            stacklevel=3,
        )
    return est


def _metric_name(metric: Any) -> str:
    return getattr(metric, "__name__", None) or type(metric).__name__


def attribution_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = PER_DEFAULT,
    *,
    progress: bool = True,
    **selection: Unpack[SelectionArgs],
) -> SweepResult:
    """Attribution tier: ``values = base + Σ grad · (new − run)`` over each cell's band
    components (zero-ablation: ``0 − run``; patching: ``source − run``). One forward + one backward.

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import logit_diff
    >>> r = attribution_sweep(tiny_model(), torch.tensor([[1, 2, 3]]), logit_diff(1, 2), progress=False)
    >>> r.values.shape, r.method
    (torch.Size([2, 8]), 'attribution')
    """
    sel = Selection.build(model, tokens, per, selection, where="attribution_sweep")
    return _warn_flat(_attribution_sweep(model, sel, metric, progress=progress), metric, "attribution_sweep")


def _attribution_sweep(
    model: Model,
    sel: Selection,
    metric: Metric,
    *,
    progress: bool = True,
) -> SweepResult:
    tokens, grid, op = sel.tokens, sel.grid, sel.op
    spec = grid.spec
    sides: list[Side] = [s for s in SIDES if s in grid.target]
    at = {attn_hook(L, rot_site(s)): (L, s) for L in grid.coords["layer"] for s in sides}
    value, acts, grads = _grad_run(model, tokens, metric, at)
    rd, adj = spec.rotary_dim, spec.adjacent_pairs
    rows = []
    with torch.no_grad():
        for L in grid.coords["layer"]:
            contrib = {}
            for s in sides:
                v = band_view(acts[L, s], rd, adj)
                delta = op.new_view(v, L, s) - v
                contrib[s] = (
                    (band_view(grads[L, s], rd, adj) * delta).sum(-1).sum(0).float()
                )  # [pos, head, B]
            rows.append(_aggregate(grid, contrib, spec))
    values = torch.stack(rows).reshape(grid.shape) + value.float()
    return SweepResult(values.cpu(), grid.dims, grid.coords, float(value), "attribution", sel.extra())


def qk_attribution_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = PER_DEFAULT,
    *,
    progress: bool = True,
    **selection: Unpack[SelectionArgs],
) -> SweepResult:
    """QK-fixed attribution (AtP*, Kramár et al. 2024, per band): ``values = base + Σ_heads
    grad_pattern · (pattern with the cell changed − pattern)`` at the cell's layer.

    The pattern change is exact (per-band score decomposition, softmax and mask included);
    the gradient of the metric w.r.t. each layer's ``hook_pattern`` comes from one forward and
    one backward. Exact when the metric is linear in that layer's pattern.

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import logit_diff
    >>> r = qk_attribution_sweep(tiny_model(), torch.tensor([[1, 2, 3]]), logit_diff(1, 2), progress=False)
    >>> r.values.shape, r.method
    (torch.Size([2, 8]), 'qk_attribution')
    """
    sel = Selection.build(model, tokens, per, selection, where="qk_attribution_sweep")
    return _warn_flat(
        _qk_attribution_sweep(model, sel, metric, progress=progress), metric, "qk_attribution_sweep"
    )


def _qk_attribution_sweep(
    model: Model,
    sel: Selection,
    metric: Metric,
    *,
    progress: bool = True,
) -> SweepResult:
    tokens, grid, op = sel.tokens, sel.grid, sel.op
    spec = grid.spec
    adapter.check_decomposable(model)
    at: dict[str, Any] = {}
    for L in grid.coords["layer"]:
        at[attn_hook(L, "pattern")] = (L, "pattern")
        at[attn_hook(L, "rot_q")] = (L, "q")
        at[attn_hook(L, "rot_k")] = (L, "k")
    value, acts, grads = _grad_run(model, tokens, metric, at)
    rd, adj = spec.rotary_dim, spec.adjacent_pairs
    softcap, rows = adapter.softcap(model), []
    bar = _progress(len(grid.coords["layer"]), "qk attribution", progress)
    with torch.no_grad():
        for L in grid.coords["layer"]:
            q, k = band_view(acts[L, "q"], rd, adj), band_view(acts[L, "k"], rd, adj)
            qn = op.new_view(q, L, "q") if "q" in grid.target else None
            kn = op.new_view(k, L, "k") if "k" in grid.target else None
            scale, window = float(spec.attn_scale[L]), adapter.local_window(model, L)
            rest = pass_scores(acts[L, "q"], acts[L, "k"], rd, scale)
            g = grads[L, "pattern"].float()[:, :, None]  # [b, head, 1, q, k]
            if "pos" in grid.dims:
                c = torch.zeros(grid.n_pos, spec.n_heads, spec.n_bands)
                for p in grid.coords["pos"]:
                    pat, new = band_changed_patterns(q, k, qn, kn, rest, scale, softcap, window, pos=p)
                    c[p] = (g * (new - pat[:, :, None])).sum(dim=(0, 3, 4)).cpu()
            else:
                pat, new = band_changed_patterns(q, k, qn, kn, rest, scale, softcap, window)
                c = (g * (new - pat[:, :, None])).sum(dim=(0, 3, 4)).cpu()[None]  # [1, head, band]
            contrib = {"q": c}
            if grid.target != "q":
                contrib["k"] = torch.zeros(c.shape[0], spec.n_kv_heads, spec.n_bands)
            rows.append(_aggregate(grid, contrib, spec))
            bar.update(1)
    bar.close()
    values = torch.stack(rows).reshape(grid.shape) + value.float().cpu()
    return SweepResult(values, grid.dims, grid.coords, float(value), "qk_attribution", sel.extra())


def _aggregate(grid: Grid, contrib: dict[str, Tensor], spec: RotaryBands) -> Tensor:
    """Sum per-(pos, head, band) contributions into the cells of one layer: shape ``grid.shape[1:]``."""
    dims = grid.dims
    if "head" in dims:
        if grid.target == "q":
            c = contrib["q"]
        else:
            c = contrib["k"]
            if "q" in contrib:  # group query heads by the kv head they read
                c = c + contrib["q"].unflatten(1, (spec.n_kv_heads, -1)).sum(2)
        c = c[:, grid.coords["head"]]
    else:
        c = torch.stack([x.sum(1, keepdim=True) for x in contrib.values()]).sum(0)
    band_idx = grid.coords["band"] if "band" in grid.coords else spec.bands()
    c = c[:, :, band_idx]
    if "band" not in dims:
        c = c.sum(2, keepdim=True)
    c = c[grid.coords["pos"]] if "pos" in dims else c.sum(0, keepdim=True)
    c = c.permute(1, 2, 0)  # [head, band, pos]
    keep = [d in dims for d in ("head", "band", "pos")]
    return c.reshape([s for s, k in zip(c.shape, keep, strict=True) if k])


# ---- refine: estimate everything, confirm the top exactly ------------------------------------------------
def refine_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = PER_DEFAULT,
    *,
    top: int = 20,
    estimate: Method = "qk_attribution",
    max_exact: int | None = None,
    batch_size: int | None = None,
    max_batch_tokens: int = 1024,
    progress: bool = True,
    **selection: Unpack[SelectionArgs],
) -> SweepResult:
    """Rank every cell with ``estimate``, then run the exact tier on a growing shortlist until a
    check finds the exact top-``top`` cells (by |effect|) settled.

    The rule (our own): evaluate the ``2 * top`` cells with the largest estimated |effect|
    exactly; let ``t`` be the ``top``-th largest exact |effect| so far and ``r`` the largest
    relative error ``|exact − estimate| / |estimate|`` (of the effects) among evaluated cells.
    An unevaluated cell with ``|estimate| * (1 + r) >= t`` could still enter the top, so the
    shortlist grows by those (at most doubling each round) until none is left. Then a check
    block — as many unevaluated cells as were evaluated so far (at least ``top``), next by
    estimated rank — is evaluated exactly; if one of them enters the exact top, the shortlist
    doubles again (next cells by estimated rank) and the rule and the check run again.

    What ``extra["stable"]`` means, precisely: True when every cell was evaluated exactly, or
    when the last check block was evaluated exactly and none of its cells entered the exact
    top-``top``. That is evidence, not a proof: a cell ranked far below the check block by a
    misleading estimate can still belong to the exact top (only the exact tier guarantees it).
    False (with a warning) when ``max_exact`` cut the shortlist or the check short.
    When every estimate is ~0 (the metric's gradient at the base run is zero, e.g.
    ``kl_metric`` / ``PatternDistance`` against the run itself) the ranking is void: refine
    warns and evaluates every cell exactly, or raises :class:`ParameterError` when that
    exceeds ``max_exact``. Raises :class:`ParameterError` for a model that cannot resume a run at a
    layer (a TransformerBridge), before any work.

    Returns exact values for the shortlist, estimates elsewhere; ``extra["exact_mask"]`` (bool,
    grid shape) says which, ``extra["n_exact"]`` how many, ``extra["relative_error"]`` the final ``r``,
    ``extra["fallback"]`` whether the flat-estimate fallback ran.

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import logit_diff
    >>> m, t, ld = tiny_model(), torch.tensor([[1, 2, 3]]), logit_diff(1, 2)
    >>> r = refine_sweep(m, t, ld, top=3, progress=False)
    >>> ex = exact_sweep(m, t, ld, progress=False)
    >>> top3 = ex.effect.abs().flatten().topk(3).indices
    >>> bool(r.extra["exact_mask"].flatten()[top3].all()), r.extra["stable"]
    (True, True)
    >>> torch.allclose(r.values.flatten()[top3], ex.values.flatten()[top3], atol=1e-5)
    True
    """
    _check_resumable(model, "refine_sweep")
    sel = Selection.build(model, tokens, per, selection, where="refine_sweep")
    top = int(positive_int("top", top))  # type: ignore[arg-type]
    max_exact = positive_int("max_exact", max_exact, allow_none=True)
    if estimate not in ("attribution", "qk_attribution"):
        raise ParameterError(f"estimate must be 'attribution' or 'qk_attribution', got {estimate!r}")
    est = _ESTIMATES[estimate](model, sel, metric, progress=False)
    tokens_t, grid, op = sel.tokens, sel.grid, sel.op
    bs = _batch_size(batch_size, max_batch_tokens, tokens_t)
    n_cells = len(grid.cells())
    flat_est = est.values.flatten().float()
    est_eff = (flat_est - est.base).abs()
    order = est_eff.argsort(descending=True).tolist()
    N, k = len(order), min(top, len(order))
    cap = N if max_exact is None else max(k, min(N, max_exact))
    fallback = _flat_estimate(est)
    if fallback:
        if N > cap:
            raise ParameterError(
                f"refine_sweep: every {estimate} estimate is 0 for metric {_metric_name(metric)} (its gradient at "
                f"the base run is zero), so it cannot rank the {N} cells; use method='exact' or max_exact >= {N}"
            )
        warnings.warn(
            f"refine_sweep: every {estimate} estimate is 0 for metric {_metric_name(metric)} (its gradient at the "
            f"base run is zero); evaluating all {N} cells exactly",
            UserWarning,
            stacklevel=2,
        )
    exact = torch.full((N,), float("nan"))
    done = torch.zeros(N, dtype=torch.bool)
    want = order if fallback else order[: min(cap, 2 * k)]
    r, stable = float("nan"), False
    with torch.no_grad(), model.hooks(fwd_hooks=_metric_hooks(metric)):
        res, logits = residuals(model, tokens_t, grid.coords["layer"])
        base_t = metric_values(metric, logits, 1)[0]
        base = float(base_t)
        bar = _progress(N, "refine (exact cells)", progress)

        def evaluate(cells: list[int]) -> list[int]:
            """Evaluate ``cells`` exactly; the flat indices of the exact top-``k`` so far."""
            todo = [(grid.coords["layer"][i // n_cells], i % n_cells) for i in cells]
            exact[cells] = _exact_cells(
                model, grid, op, metric, res, base_t, todo, bs, bar, across_layers=True
            )
            done[cells] = True
            ev = done.nonzero().flatten()
            return ev[(exact[ev] - base).abs().topk(k).indices].tolist()

        while want:
            tops = evaluate(want)
            ev = done.nonzero().flatten()
            ex_eff = exact - base
            t = float(ex_eff[tops].abs().min())
            err = (ex_eff[ev] - (flat_est[ev] - est.base)).abs()
            r = float((err / est_eff[ev].clamp_min(1e-12)).max())
            left = [i for i in order if not done[i]]
            could = [i for i in left if float(est_eff[i]) * (1 + r) >= t]
            room = cap - int(done.sum())
            if not left:
                stable = True
                break
            if could:  # the error rule: grow by those (at most doubling); none left to grow into: unstable
                want = could[: min(room, int(done.sum()))]
                continue
            block = left[: max(k, int(done.sum()))]  # the check: as many again, next by estimated rank
            if len(block) > room:
                break
            if not set(evaluate(block)) & set(block):
                stable = True
                break
            want = [i for i in order if not done[i]][: min(cap - int(done.sum()), int(done.sum()))]
        stable = stable or bool(done.all())  # exact everywhere
        bar.close()
    if not stable:
        warnings.warn(
            f"refine_sweep stopped at max_exact={cap} exact cells before its check of the exact top-{k} passed "
            "(cells that could still enter it were left); raise max_exact (or use the exact tier) for a stable top",
            stacklevel=2,
        )
    values = torch.where(done, exact, flat_est).reshape(grid.shape)
    extra = sel.extra(
        exact_mask=done.reshape(grid.shape),
        n_exact=int(done.sum()),
        relative_error=r,
        stable=stable,
        fallback=fallback,
        top=k,
        estimate=estimate,
        batch_size=bs,
    )
    return SweepResult(values, grid.dims, grid.coords, base, "refine", extra)


_ESTIMATES = {"attribution": _attribution_sweep, "qk_attribution": _qk_attribution_sweep}


# ---- the tier table -------------------------------------------------------------------------------------
TIERS: dict[str, Callable[..., SweepResult]] = {
    "exact": exact_sweep,
    "naive": naive_sweep,
    "attribution": attribution_sweep,
    "qk_attribution": qk_attribution_sweep,
    "refine": refine_sweep,
}
assert tuple(TIERS) == METHODS, "TIERS and the Method Literal must list the same tiers"


def run_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = ("layer", "band"),
    method: Method = "exact",
    **kwargs,
) -> SweepResult:
    """Any tier by name (:data:`TIERS`); ``kwargs`` go to it (``source=``, ``mode=``, ``params=``, selections...).

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import loss_metric
    >>> t = torch.tensor([[1, 2, 3, 4]])
    >>> run_sweep(tiny_model(), t, loss_metric(t), method="naive", mode="no_rotation", progress=False).values.shape
    torch.Size([2, 8])
    """
    if not isinstance(method, str) or method not in TIERS:
        raise ParameterError(f"unknown method {method!r}; expected one of {METHODS}")
    options = {"per": per, "method": method, **{k: v for k, v in kwargs.items() if k != "progress"}}
    distributed.same_inputs(f"the {method} sweep", {"tokens": tokens, "metric": metric, "options": options})
    return TIERS[method](model, tokens, metric, per, **kwargs)


def ablation_sweep(
    model: Model,
    tokens: Any,
    metric: Metric,
    per: Sequence[str] = ("layer", "band"),
    method: Method = "exact",
    **kwargs: Any,
) -> SweepResult:
    """Intervene on one cell at a time (``mode=``, default zero; ``method`` picks the tier).

    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp.sweep.metrics import loss_metric
    >>> t = torch.tensor([[1, 2, 3, 4]])
    >>> ablation_sweep(tiny_model(), t, loss_metric(t), progress=False).values.shape
    torch.Size([2, 8])
    """
    if kwargs.get("source") is not None:
        raise ParameterError("ablation_sweep takes no source=; use patch_sweep for clean→corrupted patching")
    return run_sweep(model, tokens, metric, per, method, **kwargs)
