"""Positional heads: diagonal and previous-token heads, the bands that build them, a causal check.

Barbero et al. ("Round and Round We Go!") show that a head can attend to the
current token (diagonal, ``α[m, m] > 1 − ε``) or the previous one
(``α[m, m−1] > 1 − ε``) by using the highest rotary frequencies (their Thm 5.3
construction), and found such heads by eye. Here:

* **score**: mean attention on offset ``o`` (0 = diagonal, 1 = previous token)
  over query positions ``m >= max(start_pos, o)``; a head is positional when its
  score exceeds ``threshold``;
* **band margin**: the exact per-band decomposition of the score of the target key
  ``m − o`` minus the mean score of the other keys ``1..m`` (BOS, key 0, is left
  out of the comparison: it is the sink, see :mod:`.sinks`). A score term is
  linear in the key, so the mean over keys is a prefix mean: O(pos), no
  ``[q_pos, k_pos]`` tensor per band. The margin of every band plus the
  pass-through remainder adds up to the head's full pre-softmax margin;
* **causal check**: zero the ``k`` highest-frequency bands of the head's q/k
  (bands ``0..k−1``) versus the ``k`` lowest, and report the fraction of the
  positional score that survives. Uses :func:`rope_interp.intervene.ablate.ablate_bands`
  when it exists, otherwise the analytic equivalent for the head's own layer
  (:meth:`BandScores.pattern` with ``drop=``) — identical numbers, since only the
  head's own layer is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

from ..errors import ContextLengthError
from ..intervene.ablate import ablate_bands
from ..model import adapter
from ..model.hooks import FwdHooks, HookSet, per_device
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..read.decompose import iter_band_scores
from ..validate import finite, positive_int
from .inputs import figure, heatmap, layer_list, pattern_hooks
from .registry import Analysis, Block, Option, RunContext, literal_choices
from .stream import Accumulator, run_pass

KIND = {0: "diagonal", 1: "previous"}
Method = Literal["auto", "hooks", "analytic"]
"""How :func:`causal_check` ablates: TransformerLens hooks, the analytic decomposition, or hooks when available."""


class OffsetAttention(HookSet):
    """Streaming sums of attention on fixed offsets ``α[m, m−o]`` per layer and head (from hook_pattern)."""

    def __init__(
        self, model: Model, layers: Sequence[int], offsets: Sequence[int] = (0, 1), start_pos: int = 1
    ):
        super().__init__(model)
        self.layers = list(layers)
        self.offsets = list(offsets)
        self.start_pos = int(start_pos)
        dev = adapter.device(model)
        self.sums = torch.zeros(
            len(self.layers), adapter.n_heads(model), len(self.offsets), dtype=torch.float64, device=dev
        )
        self.counts = torch.zeros(len(self.offsets), dtype=torch.float64)

    def _first(self, o: int) -> int:
        return max(self.start_pos, o)

    def _hook(self, pattern: Tensor, hook: Any, index: int) -> Tensor:
        for j, o in enumerate(self.offsets):
            diag = pattern.diagonal(offset=-o, dim1=-2, dim2=-1)  # [b, h, q - o], entry t is query m = t + o
            part = diag[..., self._first(o) - o :].to(torch.float64).sum((0, 2))
            self.sums[index, :, j] += part.to(self.sums.device)
        return pattern

    def fwd_hooks(self) -> FwdHooks:
        return pattern_hooks(self.layers, self._hook)

    def count(self, tokens: Tensor) -> None:
        b, n = tokens.shape
        for j, o in enumerate(self.offsets):
            self.counts[j] += b * max(0, n - self._first(o))

    def means(self) -> Float[Tensor, "layer head offset"]:
        return self.sums.cpu() / self.counts.clamp_min(1)


def offset_margins(
    q: Float[Tensor, "batch pos head band 2"],
    k: Float[Tensor, "batch pos kv_head band 2"],
    q_pass: Float[Tensor, "batch pos head n_pass"],
    k_pass: Float[Tensor, "batch pos kv_head n_pass"],
    kv_map: Tensor,
    attn_scale: float,
    offset: int,
    start_pos: int = 1,
) -> tuple[Float[Tensor, "head band"], Float[Tensor, " head"], int]:
    """Summed per-band margins ``term_i(m, m−o) − mean_{n in 1..m, n != m−o} term_i(m, n)``.

    Returns ``(band_sum [head, band], pass_sum [head], n_queries)``; divide by
    ``n_queries`` for means. Queries ``m >= max(start_pos, o + 1, 2)`` count (so the
    target is not BOS and at least one other key exists).

    >>> import torch
    >>> q, k = torch.randn(1, 6, 2, 3, 2), torch.randn(1, 6, 1, 3, 2)
    >>> e = torch.zeros(1, 6, 2, 0), torch.zeros(1, 6, 1, 0)
    >>> bands, rest, n = offset_margins(q, k, *e, torch.tensor([0, 0]), 1.0, offset=0)
    >>> tuple(bands.shape), n
    ((2, 3), 4)
    """
    kv = kv_map.to(k.device)
    kb, kp = k[:, :, kv].double(), k_pass[:, :, kv].double()
    qb, qp = q.double(), q_pass.double()
    first = max(start_pos, offset + 1, 2)
    out = []
    for qx, kx in ((qb, kb), (qp, kp)):
        kx = kx.clone()
        kx[:, 0] = 0  # BOS key out of the comparison
        target = torch.zeros_like(kx)
        target[:, offset:] = kx[:, : kx.shape[1] - offset]
        total = kx.cumsum(1)
        n_other = (torch.arange(kx.shape[1], device=kx.device) - 1).clamp_min(1).double()
        shape = (1, -1) + (1,) * (kx.ndim - 2)
        diff = target - (total - target) / n_other.view(shape)
        m = (qx * diff)[:, first:]
        out.append(m.sum(-1).sum((0, 1)) / attn_scale if qx.ndim == 5 else m.sum((0, 1, -1)) / attn_scale)
    n = q.shape[0] * max(0, q.shape[1] - first)
    return out[0], out[1], n


@dataclass
class PositionalHeads:
    """Diagonal / previous-token scores, band margins and causal checks.

    Attributes:
        scores: ``[layer, head, offset]`` mean attention on offset ``offsets[j]``.
        margin: ``[layer, head, offset, band]`` mean per-band margin of the target key.
        margin_pass: ``[layer, head, offset]`` mean margin from pass-through dims.
        causal: one dict per checked head (layer, head, offset, k, score, top_k_survival,
            bottom_k_survival, method).
    """

    scores: Float[Tensor, "layer head offset"]
    margin: Float[Tensor, "layer head offset band"]
    margin_pass: Float[Tensor, "layer head offset"]
    layers: list[int]
    offsets: list[int]
    threshold: float
    n_tokens: int
    causal: list[dict] = field(default_factory=list)

    @property
    def n_bands(self) -> int:
        return self.margin.shape[-1]

    def found(self) -> list[tuple[int, int, int, float]]:
        """``(layer, head, offset, score)`` of every head above the threshold, best first."""
        idx = (self.scores > self.threshold).nonzero().tolist()
        hits = [(self.layers[i], h, self.offsets[j], float(self.scores[i, h, j])) for i, h, j in idx]
        return sorted(hits, key=lambda t: -t[3])

    def band_share(self) -> tuple[Float[Tensor, "layer head offset"], Float[Tensor, "layer head offset"]]:
        """Share of the total margin from the high-frequency half (bands < n/2) and the low half."""
        total = self.margin.sum(-1) + self.margin_pass
        half = self.n_bands // 2
        denom = torch.where(total.abs() > 1e-12, total, torch.full_like(total, float("nan")))
        return self.margin[..., :half].sum(-1) / denom, self.margin[..., half:].sum(-1) / denom

    def to_dataframe(self):
        """One row per (layer, head, offset): score, positional flag, margin shares, causal survival."""
        import pandas as pd

        hi, lo = self.band_share()
        causal = {(c["layer"], c["head"], c["offset"]): c for c in self.causal}
        rows = []
        for i, layer in enumerate(self.layers):
            for h in range(self.scores.shape[1]):
                for j, o in enumerate(self.offsets):
                    c = causal.get((layer, h, o), {})
                    rows.append(
                        {
                            "layer": layer,
                            "head": h,
                            "kind": KIND.get(o, f"offset {o}"),
                            "score": float(self.scores[i, h, j]),
                            "positional": bool(self.scores[i, h, j] > self.threshold),
                            "margin": float(self.margin[i, h, j].sum() + self.margin_pass[i, h, j]),
                            "high_band_share": float(hi[i, h, j]),
                            "low_band_share": float(lo[i, h, j]),
                            "top_band": int(self.margin[i, h, j].argmax()),
                            "ablate_k": c.get("k"),
                            "survival_top_k": c.get("top_k_survival"),
                            "survival_bottom_k": c.get("bottom_k_survival"),
                        }
                    )
        return pd.DataFrame(rows)

    def plot(self):
        """Heatmaps of the scores per offset (layer × head) and per-band margins of the found heads."""
        fig, axes = figure(len(self.offsets) + 1, width=5.0, height=4.5)
        for ax, j in zip(axes, range(len(self.offsets)), strict=False):
            o = self.offsets[j]
            heatmap(
                ax,
                self.scores[:, :, j],
                f"mean attention on offset {o} ({KIND.get(o, '')})",
                "head",
                "layer position",
                vmin=0,
                vmax=1,
            )
            ax.set_yticks(range(len(self.layers)), [str(x) for x in self.layers])
        ax = axes[-1]
        for layer, h, o, s in self.found()[:6]:
            i, j = self.layers.index(layer), self.offsets.index(o)
            ax.plot(self.margin[i, h, j].numpy(), label=f"L{layer}H{h} {KIND.get(o, o)} ({s:.2f})")
        ax.set_title("per-band margin of the target key (found heads)")
        ax.set_xlabel("band (0 = highest frequency)")
        ax.set_ylabel("mean score margin")
        if self.found():
            ax.legend(fontsize=7)
        fig.suptitle(f"Positional heads (threshold {self.threshold}) over {self.n_tokens} tokens")
        fig.tight_layout()
        return fig


def _survival_analytic(
    model: Model, cache: list[Tensor], layer: int, head: int, offset: int, drop: list[int], start_pos: int
) -> float:
    base = kept = 0.0
    for tokens in cache:
        for bs in iter_band_scores(model, tokens, layer, heads=[head], chunk_size=128):
            m = torch.arange(bs.q_start, bs.q_start + bs.per_band.shape[-2])
            m = m[m >= max(start_pos, offset)]
            rows, cols = m - bs.q_start, m - offset
            base += float(bs.pattern()[:, 0, rows, cols].sum())
            kept += float(bs.pattern(drop=drop)[:, 0, rows, cols].sum())
    return kept / base if base else float("nan")


def _survival_hooks(
    model: Model,
    cache: list[Tensor],
    layer: int,
    head: int,
    offset: int,
    drop: list[int],
    start_pos: int,
) -> float:
    vals = []
    for ablate in (False, True):
        rec = OffsetAttention(model, [layer], [offset], start_pos)
        for tokens in cache:
            with torch.no_grad(), rec:
                if ablate:
                    # only this head's pattern is read, so changing the shared kv head (GQA) is harmless
                    kv = [int(RotaryBands.from_model(model).kv_map[head])]
                    with ablate_bands(
                        model, drop, layers=[layer], heads=[head], target="qk", mode="zero", kv_heads=kv
                    ):
                        model(tokens, stop_at_layer=layer + 1)
                else:
                    model(tokens, stop_at_layer=layer + 1)
        vals.append(float(rec.sums[0, head, 0]))
    return vals[1] / vals[0] if vals[0] else float("nan")


def _top_bottom(model: Model, k: int) -> tuple[list[int], list[int]]:
    """The ``k`` highest and the ``k`` lowest bands of the model (``k`` checked)."""
    n_bands = RotaryBands.from_model(model).n_bands
    if not 1 <= k <= n_bands:
        raise ValueError(f"k must be in 1..{n_bands}, got {k}")
    return list(range(k)), list(range(n_bands - k, n_bands))


def _causal_record(layer: int, head: int, offset: int, k: int, surv: list[float], method: str) -> dict:
    return dict(
        layer=layer,
        head=head,
        offset=offset,
        k=k,
        top_k_survival=surv[0],
        bottom_k_survival=surv[1],
        method=method,
    )


def causal_check(
    model: Model,
    cache: list[Tensor],
    layer: int,
    head: int,
    offset: int,
    k: int,
    start_pos: int = 1,
    method: Method = "auto",
) -> dict:
    """Survival of head ``(layer, head)``'s attention on ``offset`` when its ``k`` highest / lowest bands are zeroed."""
    top, bottom = _top_bottom(model, k)
    if method in ("auto", "hooks"):
        surv = [_survival_hooks(model, cache, layer, head, offset, d, start_pos) for d in (top, bottom)]
        used = "hooks"
    else:
        surv = [_survival_analytic(model, cache, layer, head, offset, d, start_pos) for d in (top, bottom)]
        used = "analytic"
    return _causal_record(layer, head, offset, k, surv, used)


MIN_QUERIES = 8  # ours: fewest scored (batch × query) positions per offset for a head score to mean anything


def positional_heads(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    offsets: Sequence[int] = (0, 1),
    threshold: float = 0.5,
    start_pos: int = 1,
    window: int | None = None,
    ablate_k: int | None = 4,
    causal_windows: int = 2,
    method: Method = "auto",
    progress: bool = True,
) -> PositionalHeads:
    """Find diagonal / previous-token heads, the bands building their margin, and check causally.

    The causal check (``ablate_k`` bands, None to skip) runs on the first
    ``causal_windows`` windows, kept from the scoring pass (so ``data`` may be a generator).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> r = positional_heads(tiny_model(), torch.randint(0, 50, (1, 20)), ablate_k=None, progress=False)
    >>> tuple(r.scores.shape), tuple(r.margin.shape)
    ((2, 4, 2), (2, 4, 2, 8))
    """
    finite("threshold", threshold)
    positive_int("start_pos", start_pos, minimum=0)
    positive_int("causal_windows", causal_windows, minimum=0)
    acc = HeadsAccumulator(model, layer_list(model, layers), offsets, threshold, start_pos, causal_windows)
    run_pass(model, data, [acc], window=window, progress=progress, desc="positional heads")
    if float(acc.n_q.min()) < MIN_QUERIES:  # a score over a handful of queries is no finding
        raise ContextLengthError(
            f"positional_heads scored only {int(acc.n_q.min())} query positions at some offset (queries from "
            f"start_pos={start_pos}, after the offset); it needs at least {MIN_QUERIES}: pass more text"
        )
    result = acc.finalize()
    if ablate_k:
        add_causal_checks(model, result, acc.cache, ablate_k, start_pos, method, progress)
    return result


def add_causal_checks(
    model: Model,
    result: PositionalHeads,
    cache: list[Tensor],
    k: int,
    start_pos: int = 1,
    method: Method = "auto",
    progress: bool = True,
) -> PositionalHeads:
    """The causal check of every head ``result`` found, on ``cache`` (token windows); returns ``result``.

    ``method="hooks"`` runs :func:`causal_check` head by head (four hooked forwards each).
    ``"analytic"`` and ``"auto"`` use :func:`layer_causal_checks`: one forward per layer and
    window for all the layer's heads — the same numbers (only the head's own pattern is read,
    and it depends on nothing the ablation changes upstream), far fewer forwards.
    """
    found = result.found()
    if method == "hooks":
        for layer, h, o, s in progress_bar(found, desc="causal check", enabled=progress):
            c = causal_check(model, cache, layer, h, o, k, start_pos, method)
            result.causal.append(dict(c, score=s))
        return result
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for layer, h, o, _ in found:
        by_layer.setdefault(layer, []).append((h, o))
    checks: dict[tuple[int, int, int], dict] = {}
    for layer, pairs in progress_bar(by_layer.items(), desc="causal check", enabled=progress):
        for c in layer_causal_checks(model, cache, layer, pairs, k, start_pos):
            checks[c["layer"], c["head"], c["offset"]] = c
    result.causal.extend(dict(checks[layer, h, o], score=s) for layer, h, o, s in found)
    return result


def layer_causal_checks(
    model: Model,
    cache: list[Tensor],
    layer: int,
    pairs: Sequence[tuple[int, int]],
    k: int,
    start_pos: int = 1,
) -> list[dict]:
    """:func:`causal_check` (analytic) for several ``(head, offset)`` pairs of one layer at once.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> m, toks = tiny_model(), [torch.randint(0, 50, (1, 12))]
    >>> c = layer_causal_checks(m, toks, 1, [(2, 1)], k=3)[0]
    >>> ref = causal_check(m, toks, 1, 2, 1, k=3, method="analytic")
    >>> abs(c["top_k_survival"] - ref["top_k_survival"]) < 1e-6
    True
    """
    heads = sorted({h for h, _ in pairs})
    drops = ([], *_top_bottom(model, k))  # none, top k, bottom k
    sums = torch.zeros(len(pairs), 3, dtype=torch.float64)
    for tokens in cache:
        for bs in iter_band_scores(model, tokens, layer, heads=heads, chunk_size=128):
            pats = [bs.pattern(drop=d) for d in drops]
            m_all = torch.arange(bs.q_start, bs.q_start + bs.per_band.shape[-2])
            for j, (h, o) in enumerate(pairs):
                m = m_all[m_all >= max(start_pos, o)]
                rows, cols, hi = m - bs.q_start, m - o, heads.index(h)
                for c, p in enumerate(pats):
                    sums[j, c] += float(p[:, hi, rows, cols].double().sum())
    out = []
    for j, (h, o) in enumerate(pairs):
        base = float(sums[j, 0])
        surv = [float(sums[j, c]) / base if base else float("nan") for c in (1, 2)]
        out.append(_causal_record(layer, h, o, k, surv, "analytic"))
    return out


class HeadsAccumulator(Accumulator):
    """Shared-pass state of :func:`positional_heads`: offset attention, per-band margins, cached windows."""

    def __init__(
        self,
        model: Model,
        layers: list[int],
        offsets: Sequence[int] = (0, 1),
        threshold: float = 0.5,
        start_pos: int = 1,
        causal_windows: int = 2,
    ):
        adapter.check_decomposable(model)
        if any(o < 0 for o in offsets):
            raise ValueError(f"offsets must be >= 0, got {list(offsets)}")
        self.spec = RotaryBands.from_model(model)
        self.layers = self.pair_layers = list(layers)
        self.offsets, self.threshold, self.start_pos = list(offsets), threshold, start_pos
        self.causal_windows = causal_windows
        self.att = OffsetAttention(model, self.layers, self.offsets, start_pos)
        L, H, B, n_off = len(layers), self.spec.n_heads, self.spec.n_bands, len(self.offsets)
        dev = adapter.device(model)
        self.margin = torch.zeros(L, H, n_off, B, dtype=torch.float64, device=dev)
        self.margin_pass = torch.zeros(L, H, n_off, dtype=torch.float64, device=dev)
        self.n_q = torch.zeros(n_off, dtype=torch.float64)
        self._kv_on = per_device(self.spec.kv_map, dev)
        self.cache: list[Tensor] = []
        self.n_tokens = 0

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        i, spec = self.layers.index(layer), self.spec
        for j, o in enumerate(self.offsets):
            scale = float(spec.attn_scale[layer])
            mb, mp, n = offset_margins(q, k, qp, kp, self._kv_on(k.device), scale, o, self.start_pos)
            self.margin[i, :, j] += mb.to(self.margin.device)
            self.margin_pass[i, :, j] += mp.to(self.margin_pass.device)
            if i == 0:
                self.n_q[j] += n

    def fwd_hooks(self) -> FwdHooks:
        return self.att.fwd_hooks()

    def observe(self, tokens: Tensor) -> None:
        self.att.count(tokens)
        self.n_tokens += tokens.numel()
        if len(self.cache) < self.causal_windows:
            self.cache.append(tokens)

    def merge(self, other: HeadsAccumulator) -> HeadsAccumulator:
        self.check_merge(other, "layers", "offsets", "start_pos", what="positional-head sums")
        self.att.sums += other.att.sums.to(self.att.sums.device)
        self.att.counts += other.att.counts
        self.add_sums(other, "margin", "margin_pass", "n_q", "n_tokens")
        self.cache = (self.cache + other.cache)[: self.causal_windows]
        return self

    def finalize(self) -> PositionalHeads:
        n_q = self.n_q.clamp_min(1)
        return PositionalHeads(
            scores=self.att.means().float(),
            margin=(self.margin.cpu() / n_q[None, None, :, None]).float(),
            margin_pass=(self.margin_pass.cpu() / n_q).float(),
            layers=self.layers,
            offsets=self.offsets,
            threshold=self.threshold,
            n_tokens=self.n_tokens,
        )


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
def _start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    layers = layer_list(ctx.model, ctx.layers)
    return [
        HeadsAccumulator(
            ctx.model, layers, threshold=opts["threshold"], causal_windows=opts["causal_windows"]
        )
    ]


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list[Accumulator]) -> PositionalHeads:
    acc = accs[0]
    assert isinstance(acc, HeadsAccumulator)
    result = acc.finalize()
    if opts["ablate_k"]:
        add_causal_checks(
            ctx.model, result, acc.cache, opts["ablate_k"], method=opts["method"], progress=ctx.progress
        )
    return result


_SUMMARY_COLUMNS = [
    "layer",
    "head",
    "kind",
    "score",
    "high_band_share",
    "top_band",
    "survival_top_k",
    "survival_bottom_k",
]


def _found_table(r: PositionalHeads):
    df = r.to_dataframe()
    df = cast("pd.DataFrame", df[df["positional"]]).sort_values(by="score", ascending=False)
    return df[_SUMMARY_COLUMNS].reset_index(drop=True)


def _summary(r: PositionalHeads) -> dict[str, Any]:
    rows = _found_table(r).head(20).to_dict(orient="records")
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in rows]
    return {"n_tokens": r.n_tokens, "threshold": r.threshold, "positional_heads": clean}


def _findings(r: PositionalHeads) -> list[str]:
    found = r.found()
    if not found:
        i, h, j = (int(x) for x in torch.nonzero(r.scores == r.scores.max())[0])
        return [
            f"Positional heads: no head puts more than {r.threshold:g} of its attention on a fixed offset; the "
            f"highest score is {float(r.scores.max()):.2f} (layer {r.layers[i]} head {h}, "
            f"{KIND.get(r.offsets[j], r.offsets[j])})."
        ]
    layer, h, o, s = found[0]
    i, j = r.layers.index(layer), r.offsets.index(o)
    hi, _ = r.band_share()
    text = (
        f"Positional heads: {len(found)} (layer, head, offset) triples score above {r.threshold:g}; the strongest is "
        f"layer {layer} head {h} ({KIND.get(o, o)}, mean attention {s:.2f}), whose margin comes "
        f"{100 * float(hi[i, h, j]):.0f}% from the highest-frequency half of the bands"
    )
    c = next((c for c in r.causal if (c["layer"], c["head"], c["offset"]) == (layer, h, o)), None)
    if c:
        text += (
            f"; zeroing its {c['k']} highest-frequency bands leaves {100 * c['top_k_survival']:.0f}% of that attention, "
            f"zeroing the {c['k']} lowest leaves {100 * c['bottom_k_survival']:.0f}%"
        )
    return [text + "."]


def _section(r: PositionalHeads) -> list[Block]:
    from ..view.html import paragraph, table_html

    blocks: list[Block] = [(None, paragraph(ANALYSIS.description)), (None, r.plot())]
    found = _found_table(r)
    if len(found):
        blocks.append((None, paragraph(f"Heads above the threshold {r.threshold:g} (best 15).")))
        blocks.append((None, table_html(found, max_rows=15)))
    return blocks


ANALYSIS = Analysis(
    name="heads",
    title="Positional heads",
    help="Positional heads: diagonal / previous-token heads, their bands, an ablation check",
    description=(
        "Diagonal (offset 0) and previous-token (offset 1) heads (Barbero et al., Round and Round We Go!, 2024): "
        "mean attention on that offset, the share of the score margin built by the highest- vs lowest-frequency "
        "bands (exact decomposition), and how much of the pattern survives zeroing the k highest vs the k lowest "
        "bands in that head."
    ),
    start=_start,
    finish=_finish,
    options=(
        Option("threshold", float, 0.5, "mean attention above which a head is positional", minimum=0.0),
        Option("ablate_k", int, 4, "bands zeroed in the causal check (0 skips it)", minimum=0),
        Option("causal_windows", int, 2, "windows used by the causal check", minimum=1),
        Option("method", str, "auto", "how the causal check ablates", choices=literal_choices(Method)),
    ),
    summary=_summary,
    summary_doc={
        "n_tokens": "tokens analysed",
        "threshold": "score above which a head counts as positional",
        "positional_heads": "records, best first (max 20): layer, head, kind, score, high_band_share, top_band, "
        "survival_top_k, survival_bottom_k (null when not checked)",
    },
    findings=_findings,
    tables=lambda r: {"positional_heads": r.to_dataframe()},
    section=_section,
)
