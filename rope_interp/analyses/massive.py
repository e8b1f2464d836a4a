"""Massive values (Jin et al., "Massive Values in Self-Attention Modules are the Key to
Contextual Knowledge Understanding").

``M[h, d]`` is the L2 norm over the sequence of the post-RoPE query (or key)
``Q[:, h, d]``; a (head, dim) is *massive* when ``M > λ · mean(M)`` (mean over the
layer's whole ``[head, dim]`` matrix, ``λ = 5``). Jin et al. find them in Q and K
(not V), concentrated in low-frequency dims, and show that replacing them by
their mean over positions wrecks contextual tasks while doing the same to as
many non-massive dims barely matters.

Streaming: the sums of squares add up over windows, so ``M`` over all windows is
``sqrt`` of the summed squares (:meth:`MassiveValues.merge`). The criterion is
scale-free, so the number of tokens does not change which dims are massive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .. import distributed
from ..model import adapter
from ..model.hooks import ROT_SITES, FwdHooks, HookSet, RotSite, attn_hook, per_device
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import finite, positive_int
from .inputs import figure, heatmap, layer_list, windows
from .registry import Analysis, Block, Option, RunContext
from .stream import Accumulator, check_merge, run_pass

SITES = ROT_SITES
"""The sites whose massive values are measured: queries and keys after rotation."""

Masks = dict[tuple[int, RotSite], Tensor]
"""Per (layer, site): a boolean ``[head, d_head]`` mask of the dims to mean-ablate."""


@dataclass
class MassiveValues:
    """Per-(layer, head, dim) sums of squares of post-RoPE q and k, and the λ·mean criterion."""

    q_sq: Float[Tensor, "layer head d_head"]
    k_sq: Float[Tensor, "layer kv_head d_head"]
    layers: list[int]
    band_of_dim: Tensor = field(repr=False)  # [d_head], -1 for pass-through dims
    lam: float = 5.0
    n_tokens: int = 0

    def M(self, site: str = "q") -> Float[Tensor, "layer head d_head"]:
        """``M[h, d]``: L2 norm over all analysed positions."""
        return (self.q_sq if site == "q" else self.k_sq).sqrt()

    def massive(self, site: str = "q") -> Bool[Tensor, "layer head d_head"]:
        """``M > λ · mean(M)`` with the mean over each layer's ``[head, d_head]`` matrix."""
        m = self.M(site)
        return m > self.lam * m.mean((1, 2), keepdim=True)

    def band_counts(self, site: str = "q") -> Tensor:
        """``[n_bands + 1]``: massive (layer, head, dim) entries per band; the last slot counts pass-through dims."""
        per_dim = self.massive(site).sum((0, 1))
        n = int(self.band_of_dim.max()) + 1
        idx = torch.where(self.band_of_dim < 0, n, self.band_of_dim)
        return torch.zeros(n + 1, dtype=torch.long).index_add_(0, idx, per_dim.long())

    def merge(self, other: MassiveValues) -> MassiveValues:
        check_merge(self, other, "layers", what="massive values")
        return MassiveValues(
            self.q_sq + other.q_sq,
            self.k_sq + other.k_sq,
            self.layers,
            self.band_of_dim,
            self.lam,
            self.n_tokens + other.n_tokens,
        )

    def to_dataframe(self):
        """One row per massive (site, layer, head, dim): M, ratio to the layer mean, band."""
        import pandas as pd

        rows = []
        for site in ("q", "k"):
            m = self.M(site)
            mean = m.mean((1, 2))
            for i, h, d in self.massive(site).nonzero().tolist():
                rows.append(
                    {
                        "site": site,
                        "layer": self.layers[i],
                        "head": h,
                        "dim": d,
                        "band": int(self.band_of_dim[d]),
                        "M": float(m[i, h, d]),
                        "ratio_to_mean": float(m[i, h, d] / mean[i]),
                    }
                )
        return pd.DataFrame(rows, columns=["site", "layer", "head", "dim", "band", "M", "ratio_to_mean"])

    def plot(self, layer: int | None = None):
        """``M / mean(M)`` of one layer (default: the middle analysed one) for q and k, per head × dim."""
        layer = self.layers[len(self.layers) // 2] if layer is None else layer
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not analysed; analysed layers: {self.layers}")
        i = self.layers.index(layer)
        fig, axes = figure(3, width=5.0, height=4.0)
        for ax, site in zip(axes[:2], ("q", "k"), strict=False):
            m = self.M(site)[i]
            heatmap(ax, m / m.mean(), f"layer {layer}: M/mean(M), post-RoPE {site}", "dim of d_head", "head")
        counts = self.band_counts("q") + self.band_counts("k")
        axes[2].bar(range(len(counts)), counts.numpy())
        axes[2].set_title(f"massive entries per band (λ = {self.lam})")
        axes[2].set_xlabel("band (0 = highest frequency; last = pass-through)")
        axes[2].set_ylabel("count over layers × heads (q + k)")
        fig.suptitle(f"Massive values over {self.n_tokens} tokens")
        fig.tight_layout()
        return fig


class MassiveAccumulator(Accumulator):
    """Shared-pass state of :func:`massive_values`: per-(layer, head, dim) sums of squares of post-RoPE q/k."""

    def __init__(
        self,
        model: Model,
        layers: list[int],
        lam: float = 5.0,
        baseline_loss: bool = False,
        loss_windows: int = 0,
    ):
        self.model, self.layers, self.lam = model, list(layers), lam
        self.needs_loss = baseline_loss  # the ablation's baseline condition, read off the shared forward
        self.loss_sum, self.loss_count = 0.0, 0
        self.loss_windows = loss_windows  # > 0: also keep the first windows' (loss sum, count), in order
        self.first_losses: list[tuple[float, int]] = []
        dev, dh = adapter.device(model), int(adapter.config(model).d_head)
        L = len(self.layers)
        self.sums = {
            "rot_q": torch.zeros(L, adapter.n_heads(model), dh, dtype=torch.float64, device=dev),
            "rot_k": torch.zeros(L, adapter.n_kv_heads(model), dh, dtype=torch.float64, device=dev),
        }
        self.n_tokens = 0

    def fwd_hooks(self) -> FwdHooks:
        hooks: FwdHooks = []
        for i, layer in enumerate(self.layers):
            for site in SITES:

                def fn(x: Tensor, hook: Any, i: int = i, site: str = site) -> Tensor:
                    acc = self.sums[site]
                    acc[i] += x.detach().double().square().sum((0, 1)).to(acc.device)
                    return x

                hooks.append((attn_hook(layer, site), fn))
        return hooks

    def observe(self, tokens: Tensor) -> None:
        self.n_tokens += tokens.numel()
        if tokens.shape[1] < 2 and len(self.first_losses) < self.loss_windows:
            self.first_losses.append((0.0, 0))  # no loss for a 1-token window, but it is one of the first

    def observe_loss(self, tokens: Tensor, loss: Tensor) -> None:
        total, count = float(loss.double().sum()), int(loss.numel())
        self.loss_sum += total
        self.loss_count += count
        if len(self.first_losses) < self.loss_windows:
            self.first_losses.append((total, count))

    def baseline(self) -> tuple[float, int]:
        """``(summed loss, token count)`` of the unmodified forward over every window, or over the first
        ``loss_windows`` when set (the windows the ablation runs on)."""
        if not self.loss_windows:
            return self.loss_sum, self.loss_count
        return sum(t for t, _ in self.first_losses), sum(c for _, c in self.first_losses)

    def merge(self, other: MassiveAccumulator) -> MassiveAccumulator:
        self.check_merge(other, "layers", what="massive sums")
        self.add_sums(other, "sums", "n_tokens", "loss_sum", "loss_count")
        self.first_losses = (self.first_losses + other.first_losses)[: self.loss_windows]
        return self

    def finalize(self) -> MassiveValues:
        spec = RotaryBands.from_model(self.model)
        band_of_dim = torch.tensor(
            [-1 if (b := spec.band_of_dim(d)) is None else b for d in range(spec.d_head)]
        )
        return MassiveValues(
            self.sums["rot_q"].cpu(),
            self.sums["rot_k"].cpu(),
            self.layers,
            band_of_dim,
            self.lam,
            self.n_tokens,
        )


def massive_values(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    lam: float = 5.0,
    window: int | None = None,
    progress: bool = True,
) -> MassiveValues:
    """The per-(head, dim) norm matrix of post-RoPE q and k, streamed over ``data``.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> mv = massive_values(tiny_model(), torch.randint(0, 50, (2, 16)), progress=False)
    >>> tuple(mv.M("q").shape), tuple(mv.M("k").shape)
    ((2, 4, 16), (2, 2, 16))
    """
    finite("lam", lam)
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    acc = MassiveAccumulator(model, layer_list(model, layers), lam)
    run_pass(model, data, [acc], window=window, progress=progress, desc="massive values")
    return acc.finalize()


class MeanAblateDims(HookSet):
    """Replace chosen (head, dim) entries of post-RoPE q/k by their mean over positions.

    ``masks[(layer, site)]`` is a bool ``[heads, d_head]`` (``site`` "rot_q" or "rot_k").

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> mask = torch.zeros(4, 16, dtype=torch.bool); mask[0, 3] = True
    >>> with MeanAblateDims(model, {(0, "rot_q"): mask}):
    ...     _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter="blocks.0.attn.hook_rot_q")
    >>> q = cache["blocks.0.attn.hook_rot_q"][0, :, 0, 3]
    >>> bool(torch.allclose(q, q.mean().expand(3)))
    True
    """

    def __init__(self, model: Model, masks: Masks):
        super().__init__(model)
        _check_masks(model, masks)
        self.masks = masks

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, site), _mean_where(per_device(mask, adapter.device(self.model))))
            for (layer, site), mask in self.masks.items()
        ]


def _check_masks(model: Model, masks: Masks) -> None:
    for layer, site in masks:
        if site not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {site!r}")
        adapter.layers(model, layer)


def _mean_where(on: Any) -> Any:
    """Hook: entries where the mask (``on(device)``, copied once per device) is set become their mean over positions."""

    def fn(x: Tensor, hook: Any) -> Tensor:
        return torch.where(on(x.device), x.mean(1, keepdim=True), x)

    return fn


class StackedMeanAblate(HookSet):
    """Several :class:`MeanAblateDims` conditions in one forward: the input is the window repeated once
    per condition (condition-major along the batch), and copy ``c`` gets condition ``c``'s masks.

    ``conditions`` holds one ``masks`` dict per condition (``None``: unmodified); ``batch`` is the
    window's own batch size. Each copy's mean over positions is its own, so every copy equals the
    condition run alone (to float rounding of the batched matmuls).
    """

    def __init__(self, model: Model, conditions: Sequence[Masks | None], batch: int):
        super().__init__(model)
        for c in conditions:
            _check_masks(model, c or {})
        self.conditions, self.batch = list(conditions), batch

    def fwd_hooks(self) -> FwdHooks:
        keys = sorted({k for c in self.conditions if c for k in c})
        hooks: FwdHooks = []
        for layer, site in keys:
            some = next(c[(layer, site)] for c in self.conditions if c and (layer, site) in c)
            per = [
                c[(layer, site)] if c and (layer, site) in c else torch.zeros_like(some)
                for c in self.conditions
            ]
            mask = torch.stack(per).repeat_interleave(self.batch, 0)[:, None]  # [conditions * batch, 1, h, d]
            hooks.append((attn_hook(layer, site), _mean_where(per_device(mask, adapter.device(self.model)))))
        return hooks


@dataclass
class MassiveAblation:
    """Mean loss on text: unmodified, massive dims mean-ablated, and matched controls."""

    baseline: float
    massive: float
    control: list[float]
    n_dims: int
    n_tokens: int

    def to_dataframe(self):
        import pandas as pd

        rows = [("baseline", self.baseline), ("massive dims mean-ablated", self.massive)]
        rows += [(f"control {i} ({self.n_dims} non-massive dims)", c) for i, c in enumerate(self.control)]
        return pd.DataFrame(rows, columns=["condition", "loss"])

    def plot(self):
        fig, (ax,) = figure(1, width=6.5, height=4.0)
        df = self.to_dataframe()
        ax.bar(range(len(df)), df["loss"], color=["grey", "tab:red"] + ["tab:blue"] * len(self.control))
        ax.set_xticks(
            range(len(df)), ["baseline", "massive"] + [f"control {i}" for i in range(len(self.control))]
        )
        ax.set_title(f"Mean-ablating {self.n_dims} massive q/k dims vs matched controls")
        ax.set_xlabel("condition")
        ax.set_ylabel(f"mean next-token loss ({self.n_tokens} tokens)")
        fig.tight_layout()
        return fig


def control_masks(massive: Masks, seed: int = 0) -> Masks:
    """For every head, as many random non-massive dims as it has massive ones (seeded).

    >>> import torch
    >>> m = {(0, "rot_q"): torch.tensor([[True, False, False, True]])}
    >>> c = control_masks(m)[(0, "rot_q")]
    >>> int(c.sum()), bool((c & m[(0, "rot_q")]).any())
    (2, False)
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, mask in massive.items():
        ctrl = torch.zeros_like(mask)
        for h in range(mask.shape[0]):
            k = int(mask[h].sum())
            free = (~mask[h]).nonzero().flatten()
            if k > len(free):
                raise ValueError(f"head {h} of {key} has more massive dims ({k}) than non-massive ones")
            ctrl[h, free[torch.randperm(len(free), generator=g)[:k]]] = True
        out[key] = ctrl
    return out


def massive_ablation(
    model: Model,
    data: Any,
    found: MassiveValues,
    *,
    n_control: int = 2,
    seed: int = 0,
    window: int | None = None,
    progress: bool = True,
    baseline: tuple[float, int] | None = None,
    max_batch_tokens: int = 2048,
    max_windows: int | None = None,
) -> MassiveAblation:
    """Loss with the massive q/k dims of ``found`` mean-ablated vs ``n_control`` matched random controls.

    ``baseline``: ``(summed loss, token count)`` of the unmodified model on the same windows,
    when already known (the shared pass of :mod:`rope_interp.analyses.registry` computes it), saving
    one forward per window. Conditions are stacked along the batch of one forward while they fit
    in ``max_batch_tokens`` tokens (:class:`StackedMeanAblate`; 1 runs one condition per forward).
    ``max_windows``: only the first windows of ``data`` (the experiment on a prefix of the text).
    """
    if max_windows is not None:
        positive_int("max_windows", max_windows)
    positive_int("max_batch_tokens", max_batch_tokens)
    per_site: Masks = {
        (layer, s): found.massive(s[-1])[i] for i, layer in enumerate(found.layers) for s in SITES
    }
    masks: Masks = {k: v for k, v in per_site.items() if v.any()}
    n_dims = int(sum(int(v.sum()) for v in masks.values()))
    if not masks:
        raise ValueError(f"no massive values at λ = {found.lam}: nothing to ablate")
    conditions: list[dict | None] = [None, masks] + [control_masks(masks, seed + i) for i in range(n_control)]
    if baseline is not None:
        conditions = conditions[1:]
    StackedMeanAblate(model, conditions, 1)  # validates layers and sites before any forward

    def ablate(stream: Any) -> tuple[Tensor, int]:
        """Summed loss of each condition and the predicted-token count over ``stream``'s windows."""
        totals, count = torch.zeros(len(conditions), dtype=torch.float64), 0
        for tokens in stream:
            if tokens.shape[1] < 2:
                continue
            b = tokens.shape[0]
            per = max(1, max_batch_tokens // tokens.numel())  # conditions per forward
            for first in range(0, len(conditions), per):
                group = conditions[first : first + per]
                with torch.no_grad(), StackedMeanAblate(model, group, b):
                    loss = model(tokens.repeat(len(group), 1), return_type="loss", loss_per_token=True)
                totals[first : first + len(group)] += loss.double().view(len(group), -1).sum(1).cpu()
            count += b * (tokens.shape[1] - 1)
        return totals, count

    if distributed.world() is None:
        totals, count = ablate(windows(model, data, window, progress, "massive ablation", limit=max_windows))
    else:  # under torchrun: each rank its block of windows, the loss sums added in rank order
        parts = distributed.map_shard(
            lambda: list(windows(model, data, window, False, "massive ablation", limit=max_windows)),
            ablate,
            "the massive-value ablation",
        )
        totals, count = torch.stack([t for t, _ in parts]).sum(0), sum(c for _, c in parts)
    if count == 0:
        raise ValueError("no window has two or more tokens: cannot measure next-token loss")
    means = (totals / count).tolist()
    if baseline is not None:
        if baseline[1] != count:
            raise ValueError(
                f"baseline covers {baseline[1]} tokens, the ablation {count}: not the same windows"
            )
        means = [baseline[0] / baseline[1], *means]
    return MassiveAblation(means[0], means[1], means[2:], n_dims, count)


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
@dataclass
class MassiveResult:
    """What the registered ``massive`` analysis returns: the values and (unless skipped) their ablation."""

    values: MassiveValues
    ablation: MassiveAblation | None = None
    ablation_windows: int = 0
    """> 0: the ablation ran on the first that many windows only."""

    def to_dataframe(self):
        return self.values.to_dataframe()


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list[Accumulator]) -> MassiveResult:
    acc = accs[0]
    assert isinstance(acc, MassiveAccumulator)
    values = acc.finalize()
    has_any = bool(values.massive("q").any() or values.massive("k").any())
    ablation = None
    if opts["ablation"] and has_any:
        ablation = massive_ablation(
            ctx.model,
            ctx.data,
            values,
            n_control=opts["n_control"],
            window=ctx.window,
            progress=ctx.progress,
            baseline=acc.baseline(),
            max_windows=opts["ablation_windows"] or None,
        )
    return MassiveResult(values, ablation, opts["ablation_windows"])


def _summary(r: MassiveResult) -> dict[str, Any]:
    v = r.values
    q, k = v.band_counts("q").tolist(), v.band_counts("k").tolist()
    n = len(q) - 1
    return {
        "n_tokens": v.n_tokens,
        "lam": v.lam,
        "n_massive_q": int(v.massive("q").sum()),
        "n_massive_k": int(v.massive("k").sum()),
        "per_band": [
            {"band": b if b < n else "pass-through", "q": q[b], "k": k[b]}
            for b in range(n + 1)
            if q[b] or k[b]
        ],
        "ablation": [] if r.ablation is None else r.ablation.to_dataframe().to_dict(orient="records"),
    }


def _findings(r: MassiveResult) -> list[str]:
    v = r.values
    counts = v.band_counts("q") + v.band_counts("k")
    total, n = int(counts.sum()), len(counts) - 1
    if not total:
        return [f"Massive values: no (head, dim) of q or k exceeds {v.lam:g} times its layer's mean norm."]
    low = int(counts[n // 2 : n].sum())
    text = (
        f"Massive values: {int(v.massive('q').sum())} query and {int(v.massive('k').sum())} key (layer, head, dim) "
        f"entries exceed {v.lam:g}× their layer's mean, {100 * low / total:.0f}% of them in the lowest-frequency "
        "half of the bands"
    )
    a = r.ablation
    if a is not None:
        ctrl = sum(a.control) / len(a.control) if a.control else float("nan")
        text += (
            f"; mean-ablating those {a.n_dims} dims moves the loss from {a.baseline:.3f} to {a.massive:.3f}, "
            f"against {ctrl:.3f} for {len(a.control)} matched random controls (loss over {a.n_tokens} "
            "predicted tokens)"
        )
    return [text + "."]


def _section(r: MassiveResult) -> list[Block]:
    from ..view.html import paragraph, table_html

    blocks: list[Block] = [(None, paragraph(ANALYSIS.description)), (None, r.values.plot())]
    a = r.ablation
    if a is not None:
        note = (
            f"Mean next-token loss over {a.n_tokens} predicted tokens"
            + (f" (the first {r.ablation_windows} window{'s' * (r.ablation_windows > 1)}: option ablation_windows)"
               if r.ablation_windows else "")
            + f"; each control mean-ablates {a.n_dims} random non-massive dims matched per (layer, site, head)."
        )  # fmt: skip
        blocks += [(None, a.plot()), (None, paragraph(note)), (None, table_html(a.to_dataframe(), digits=4))]
    return blocks


def _tables(r: MassiveResult) -> dict[str, Any]:
    out = {"massive": r.values.to_dataframe()}
    if r.ablation is not None:
        out["massive_ablation"] = r.ablation.to_dataframe()
    return out


ANALYSIS = Analysis(
    name="massive",
    title="Massive values (Jin et al.)",
    help="Massive values (Jin et al.): M > lambda*mean(M) in post-RoPE q/k, and a mean-ablation vs control",
    description=(
        "M[h, d] = L2 norm over the sequence of post-RoPE q/k; massive if M > lambda mean(M) (Jin et al., Massive "
        "Values in Self-Attention Modules are the Key to Contextual Knowledge Understanding, 2025). Then the loss "
        "with those dims mean-ablated against matched controls of as many non-massive dims."
    ),
    start=lambda ctx, opts: [
        MassiveAccumulator(
            ctx.model,
            layer_list(ctx.model, ctx.layers),
            opts["lam"],
            baseline_loss=opts["ablation"],
            loss_windows=opts["ablation_windows"],
        )
    ],
    finish=_finish,
    options=(
        Option("lam", float, 5.0, "lambda of the M > lambda*mean(M) criterion", minimum=1e-9),
        Option("n_control", int, 2, "random matched controls", minimum=0),
        Option("ablation", bool, True, "skip the loss experiment"),
        Option(
            "ablation_windows",
            int,
            0,
            "run the loss experiment on the first N windows only (0: all; the report uses 2)",
            minimum=0,
        ),
    ),
    summary=_summary,
    summary_doc={
        "n_tokens": "tokens analysed",
        "lam": "lambda of the criterion",
        "n_massive_q": "massive (layer, head, dim) entries of post-RoPE queries",
        "n_massive_k": "same for keys",
        "per_band": "records for bands with massive entries: band (or 'pass-through'), q, k counts",
        "ablation": "records: condition, loss (empty when skipped or nothing is massive)",
    },
    findings=_findings,
    tables=_tables,
    section=_section,
)
