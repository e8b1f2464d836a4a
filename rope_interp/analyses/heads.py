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
  positional score that survives. Uses :func:`rope_interp.interventions.ablate_bands`
  when it exists, otherwise the analytic equivalent for the head's own layer
  (:meth:`BandScores.pattern` with ``drop=``) — identical numbers, since only the
  head's own layer is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from .. import adapter
from ..decompose import iter_band_scores
from ..hooking import FwdHooks, HookSet, per_device
from ..hooks import attn_hook
from ..spec import RotaryBands
from .inputs import figure, heatmap, layer_list, qk_pair_hooks, windows

KIND = {0: "diagonal", 1: "previous"}


class OffsetAttention(HookSet):
    """Streaming sums of attention on fixed offsets ``α[m, m−o]`` per layer and head (from hook_pattern)."""

    def __init__(
        self, model: Any, layers: Sequence[int], offsets: Sequence[int] = (0, 1), start_pos: int = 1
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
        return [
            (attn_hook(layer, "pattern"), lambda p, hook, i=i: self._hook(p, hook, i))
            for i, layer in enumerate(self.layers)
        ]

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
    model: Any, cache: list[Tensor], layer: int, head: int, offset: int, drop: list[int], start_pos: int
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
    model: Any,
    cache: list[Tensor],
    layer: int,
    head: int,
    offset: int,
    drop: list[int],
    start_pos: int,
    ablate_bands: Any,
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


def causal_check(
    model: Any,
    cache: list[Tensor],
    layer: int,
    head: int,
    offset: int,
    k: int,
    start_pos: int = 1,
    method: Literal["auto", "hooks", "analytic"] = "auto",
) -> dict:
    """Survival of head ``(layer, head)``'s attention on ``offset`` when its ``k`` highest / lowest bands are zeroed."""
    n_bands = RotaryBands.from_model(model).n_bands
    if not 1 <= k <= n_bands:
        raise ValueError(f"k must be in 1..{n_bands}, got {k}")
    abl = None
    if method in ("auto", "hooks"):
        try:
            from ..interventions import ablate_bands as abl
        except ImportError:
            if method == "hooks":
                raise
    top, bottom = list(range(k)), list(range(n_bands - k, n_bands))
    if abl is not None:
        surv = [_survival_hooks(model, cache, layer, head, offset, d, start_pos, abl) for d in (top, bottom)]
        used = "hooks"
    else:
        surv = [_survival_analytic(model, cache, layer, head, offset, d, start_pos) for d in (top, bottom)]
        used = "analytic"
    return dict(
        layer=layer,
        head=head,
        offset=offset,
        k=k,
        top_k_survival=surv[0],
        bottom_k_survival=surv[1],
        method=used,
    )


def positional_heads(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    offsets: Sequence[int] = (0, 1),
    threshold: float = 0.5,
    start_pos: int = 1,
    window: int | None = None,
    ablate_k: int | None = 4,
    causal_windows: int = 2,
    method: Literal["auto", "hooks", "analytic"] = "auto",
    progress: bool = True,
) -> PositionalHeads:
    """Find diagonal / previous-token heads, the bands building their margin, and check causally.

    The causal check (``ablate_k`` bands, None to skip) runs on the first
    ``causal_windows`` windows, kept from the scoring pass (so ``data`` may be a generator).

    >>> import torch
    >>> from rope_interp.testing import tiny_model
    >>> r = positional_heads(tiny_model(), torch.randint(0, 50, (1, 20)), ablate_k=None, progress=False)
    >>> tuple(r.scores.shape), tuple(r.margin.shape)
    ((2, 4, 2), (2, 4, 2, 8))
    """
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    adapter.check_decomposable(model)
    if any(o < 0 for o in offsets):
        raise ValueError(f"offsets must be >= 0, got {list(offsets)}")
    att = OffsetAttention(model, layers, offsets, start_pos)
    L, H, B, n_off = len(layers), spec.n_heads, spec.n_bands, len(offsets)
    dev = adapter.device(model)
    margin = torch.zeros(L, H, n_off, B, dtype=torch.float64, device=dev)
    margin_pass = torch.zeros(L, H, n_off, dtype=torch.float64, device=dev)
    n_q = torch.zeros(n_off, dtype=torch.float64)
    kv_on = per_device(spec.kv_map, dev)

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        i = layers.index(layer)
        for j, o in enumerate(offsets):
            kv, scale = kv_on(k.device), float(spec.attn_scale[layer])
            mb, mp, n = offset_margins(q, k, qp, kp, kv, scale, o, start_pos)
            margin[i, :, j] += mb.to(dev)
            margin_pass[i, :, j] += mp.to(dev)
            if i == 0:
                n_q[j] += n

    capture = qk_pair_hooks(model, layers, on_pair)
    cache: list[Tensor] = []
    n_tokens = 0
    for tokens in windows(model, data, window, progress, "positional heads"):
        with torch.no_grad(), att, model.hooks(fwd_hooks=capture):
            model(tokens, stop_at_layer=max(layers) + 1)
        att.count(tokens)
        n_tokens += tokens.numel()
        if len(cache) < causal_windows:
            cache.append(tokens)
    result = PositionalHeads(
        scores=att.means().float(),
        margin=(margin.cpu() / n_q.clamp_min(1)[None, None, :, None]).float(),
        margin_pass=(margin_pass.cpu() / n_q.clamp_min(1)).float(),
        layers=layers,
        offsets=list(offsets),
        threshold=threshold,
        n_tokens=n_tokens,
    )
    if ablate_k:
        found = result.found()
        from tqdm.auto import tqdm

        for layer, h, o, s in tqdm(found, desc="causal check", disable=not progress, leave=False):
            c = causal_check(model, cache, layer, h, o, ablate_k, start_pos, method)
            result.causal.append(dict(c, score=s))
    return result
