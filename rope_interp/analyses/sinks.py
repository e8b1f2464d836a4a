"""Semantic / sink channels (Barbero et al., "Round and Round We Go!", their Tables 3–5).

A head that parks attention on the first (BOS) token can do it with a
low-frequency band: the band's score term is large for the BOS key and small or
negative for the others (Barbero et al. report about +24.9 for BOS and −85.5 for
other keys in one Gemma head). For every layer, head and band this module
measures, over query positions ``m >= start_pos``:

* ``bos_term``: mean ``<q_i(m), k_i(0)> / scale``;
* ``other_term``: mean over keys ``1..m`` of ``<q_i(m), k_i(n)> / scale`` (a prefix
  mean of the key, since the term is linear in it: O(pos));
* the Cauchy–Schwarz bounds ``‖q_i‖‖k_i‖ / scale`` for the same pairs; the ratio
  observed / bound says how close the band comes to using its full norm
  (1 = perfectly aligned, −1 = perfectly opposed);
* ``bos_attention``: the head's mean attention on BOS.

A *sink channel* of a head is a low-frequency band (index >= n_bands/2) with the
largest separation ``bos_term − other_term``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import band_norms
from ..model import adapter
from ..model.hooks import FwdHooks, per_device
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import positive_int
from .inputs import figure, heatmap, layer_head_band_frame, layer_list, pattern_hooks, prefix_mean
from .registry import Analysis, Block, Option
from .stream import Accumulator, run_pass


@dataclass
class SinkChannels:
    """Per layer × head × band: BOS vs other-key score terms and their Cauchy–Schwarz bounds."""

    bos_term: Float[Tensor, "layer head band"]
    other_term: Float[Tensor, "layer head band"]
    bos_bound: Float[Tensor, "layer head band"]
    other_bound: Float[Tensor, "layer head band"]
    separation_pass: Float[Tensor, "layer head"]
    bos_attention: Float[Tensor, "layer head"]
    layers: list[int]
    n_tokens: int

    @property
    def separation(self) -> Float[Tensor, "layer head band"]:
        """``bos_term − other_term`` per band."""
        return self.bos_term - self.other_term

    def channels(self, top: int = 1, low_only: bool = True):
        """DataFrame: each head's ``top`` sink-channel bands (largest separation), observed vs bound."""
        import pandas as pd

        sep = self.separation
        B = sep.shape[-1]
        first = B // 2 if low_only else 0
        total = sep.sum(-1) + self.separation_pass
        rows = []
        for i, layer in enumerate(self.layers):
            for h in range(sep.shape[1]):
                order = torch.argsort(sep[i, h, first:], descending=True)[:top] + first
                for b in order.tolist():
                    rows.append(
                        {
                            "layer": layer,
                            "head": h,
                            "band": b,
                            "bos_attention": float(self.bos_attention[i, h]),
                            "bos_term": float(self.bos_term[i, h, b]),
                            "other_term": float(self.other_term[i, h, b]),
                            "bos_bound": float(self.bos_bound[i, h, b]),
                            "other_bound": float(self.other_bound[i, h, b]),
                            "bos_ratio": float(
                                self.bos_term[i, h, b] / self.bos_bound[i, h, b].clamp_min(1e-30)
                            ),
                            "other_ratio": float(
                                self.other_term[i, h, b] / self.other_bound[i, h, b].clamp_min(1e-30)
                            ),
                            "share_of_separation": float(sep[i, h, b] / total[i, h])
                            if total[i, h] != 0
                            else float("nan"),
                        }
                    )
        return pd.DataFrame(rows)

    def to_dataframe(self):
        """Long table: layer, head, band, bos/other terms and bounds."""
        names = ("bos_term", "other_term", "bos_bound", "other_bound")
        return layer_head_band_frame(self.layers, {n: getattr(self, n) for n in names})

    def plot(self, layer: int | None = None, head: int | None = None):
        """BOS attention per layer × head, and per-band BOS / other terms with bounds for one head
        (default: the head with the most BOS attention)."""
        fig, (ax0, ax1) = figure(2, width=6.0, height=4.5)
        heatmap(ax0, self.bos_attention, "mean attention on BOS", "head", "layer position", vmin=0, vmax=1)
        ax0.set_yticks(range(len(self.layers)), [str(x) for x in self.layers])
        if layer is None or head is None:
            flat = int(self.bos_attention.argmax())
            i, head = divmod(flat, self.bos_attention.shape[1])
            layer = self.layers[i]
        i = self.layers.index(layer)
        x = torch.arange(self.bos_term.shape[-1]).numpy()
        ax1.bar(x - 0.2, self.bos_term[i, head].numpy(), width=0.4, label="BOS key term")
        ax1.bar(x + 0.2, self.other_term[i, head].numpy(), width=0.4, label="other keys term")
        ax1.plot(x, self.bos_bound[i, head].numpy(), "k--", lw=1, label="bound ‖q_i‖‖k_i(0)‖/scale")
        ax1.plot(x, -self.other_bound[i, head].numpy(), "r:", lw=1, label="−bound, other keys")
        ax1.set_title(f"layer {layer} head {head}: band score terms")
        ax1.set_xlabel("band (0 = highest frequency)")
        ax1.set_ylabel("mean score term")
        ax1.legend(fontsize=7)
        fig.suptitle(f"Sink channels over {self.n_tokens} tokens")
        fig.tight_layout()
        return fig


def sink_channels(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    start_pos: int = 1,
    window: int | None = None,
    progress: bool = True,
) -> SinkChannels:
    """Per band, how much a head's score separates the first key (BOS/sink) from the others.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = sink_channels(tiny_model(), torch.randint(0, 50, (1, 12)), progress=False)
    >>> tuple(s.bos_term.shape), tuple(s.bos_attention.shape)
    ((2, 4, 8), (2, 4))
    """
    positive_int("start_pos", start_pos, minimum=1)
    acc = SinkAccumulator(model, layer_list(model, layers), start_pos)
    run_pass(model, data, [acc], window=window, progress=progress, desc="sink channels")
    return acc.finalize()


class SinkAccumulator(Accumulator):
    """Shared-pass state of :func:`sink_channels`: per-band BOS / other-key term sums, bounds, BOS attention."""

    def __init__(self, model: Model, layers: list[int], start_pos: int = 1):
        adapter.check_decomposable(model)
        self.spec = RotaryBands.from_model(model)
        self.layers = self.pair_layers = list(layers)
        self.start_pos = start_pos
        dev = adapter.device(model)
        L, H, B = len(layers), self.spec.n_heads, self.spec.n_bands
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=dev)  # noqa: E731
        self.sums = {n: z(L, H, B) for n in ("bos", "other", "bos_b", "other_b")}
        self.sep_pass, self.bos_sum = z(L, H), z(L, H)
        self.dev, self._kv_on = dev, per_device(self.spec.kv_map, dev)
        self.n_q = self.n_tokens = 0

    def accepts(self, tokens: Tensor) -> bool:
        return tokens.shape[1] > self.start_pos

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        spec, start_pos, sums = self.spec, self.start_pos, self.sums
        i, scale = self.layers.index(layer), float(spec.attn_scale[layer])
        kv, dev = self._kv_on(k.device), self.dev
        q, qp = q.double()[:, start_pos:], qp.double()[:, start_pos:]
        k, kp = k.double()[:, :, kv], kp.double()[:, :, kv]
        k_mean, kp_mean = prefix_mean(k, start=1)[:, start_pos:], prefix_mean(kp, start=1)[:, start_pos:]
        qn, kn = band_norms(q), band_norms(k)
        sums["bos"][i] += (torch.einsum("bmhic,bhic->hi", q, k[:, 0]) / scale).to(dev)
        sums["other"][i] += (torch.einsum("bmhic,bmhic->hi", q, k_mean) / scale).to(dev)
        sums["bos_b"][i] += (torch.einsum("bmhi,bhi->hi", qn, kn[:, 0]) / scale).to(dev)
        sums["other_b"][i] += (
            torch.einsum("bmhi,bmhi->hi", qn, prefix_mean(kn, start=1)[:, start_pos:]) / scale
        ).to(dev)
        self.sep_pass[i] += (torch.einsum("bmhd,bhd->h", qp, kp[:, 0]) / scale).to(dev)
        self.sep_pass[i] -= (torch.einsum("bmhd,bmhd->h", qp, kp_mean) / scale).to(dev)

    def _on_pattern(self, p: Tensor, hook: Any, i: int) -> Tensor:
        self.bos_sum[i] += p[:, :, self.start_pos :, 0].double().sum((0, 2)).to(self.dev)
        return p

    def fwd_hooks(self) -> FwdHooks:
        return pattern_hooks(self.layers, self._on_pattern)

    def observe(self, tokens: Tensor) -> None:
        self.n_q += tokens.shape[0] * (tokens.shape[1] - self.start_pos)
        self.n_tokens += tokens.numel()

    def merge(self, other: SinkAccumulator) -> SinkAccumulator:
        self.check_merge(other, "layers", "start_pos", what="sink sums")
        self.add_sums(other, "sums", "sep_pass", "bos_sum", "n_q", "n_tokens")
        return self

    def finalize(self) -> SinkChannels:
        if self.n_q == 0:
            raise ValueError(f"every window is shorter than start_pos + 1 = {self.start_pos + 1} tokens")
        f = lambda t: (t.cpu() / self.n_q).float()  # noqa: E731
        return SinkChannels(
            bos_term=f(self.sums["bos"]),
            other_term=f(self.sums["other"]),
            bos_bound=f(self.sums["bos_b"]),
            other_bound=f(self.sums["other_b"]),
            separation_pass=f(self.sep_pass),
            bos_attention=f(self.bos_sum),
            layers=self.layers,
            n_tokens=self.n_tokens,
        )


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
_COLUMNS = [
    "layer",
    "head",
    "band",
    "bos_attention",
    "bos_term",
    "other_term",
    "bos_ratio",
    "share_of_separation",
]


def _top_channels(r: SinkChannels, n: int = 10):
    ch = r.channels(top=1).sort_values("bos_attention", ascending=False)
    return ch[_COLUMNS].head(n).reset_index(drop=True)


def _summary(r: SinkChannels) -> dict[str, Any]:
    rows = _top_channels(r).to_dict(orient="records")
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in rows]
    return {
        "n_tokens": r.n_tokens,
        "n_sink_heads": int((r.bos_attention > 0.5).sum()),
        "top_sink_heads": clean,
    }


def _findings(r: SinkChannels) -> list[str]:
    n_heads = r.bos_attention.numel()
    n_sink = int((r.bos_attention > 0.5).sum())
    top = _top_channels(r, 1).to_dict(orient="records")[0]
    return [
        f"Sinks: {n_sink} of {n_heads} heads put more than half their attention on the first token; in the "
        f"strongest (layer {int(top['layer'])} head {int(top['head'])}, {100 * top['bos_attention']:.0f}% on it) the "
        f"low-frequency band separating that key most is band {int(top['band'])}, with a BOS term of "
        f"{top['bos_term']:.3g} against {top['other_term']:.3g} for the other keys ({100 * top['bos_ratio']:.0f}% of its "
        "Cauchy–Schwarz bound)."
    ]


def _section(r: SinkChannels) -> list[Block]:
    from ..view.html import paragraph, table_html

    return [
        (None, paragraph(ANALYSIS.description)),
        (None, r.plot()),
        (None, paragraph("The ten heads with the most attention on the first token and their sink channel.")),
        (None, table_html(_top_channels(r))),
    ]


ANALYSIS = Analysis(
    name="sinks",
    title="Sink / semantic channels",
    help="Sink channels: per head, the bands separating the BOS key, observed vs Cauchy-Schwarz bound",
    description=(
        "Per head, the low-frequency bands whose score term separates the first (BOS) key from the others "
        "(Barbero et al., Round and Round We Go!, 2024, Tables 3–5); observed terms against the Cauchy–Schwarz "
        "bound |q_i||k_i|/scale."
    ),
    start=lambda ctx, opts: [
        SinkAccumulator(ctx.model, layer_list(ctx.model, ctx.layers), opts["start_pos"])
    ],
    finish=lambda ctx, opts, accs: accs[0].finalize(),
    options=(Option("start_pos", int, 1, "first query position counted", minimum=1),),
    summary=_summary,
    summary_doc={
        "n_tokens": "tokens analysed",
        "n_sink_heads": "heads with more than half their attention on the first token",
        "top_sink_heads": "records (10 heads with most attention on BOS): layer, head, band (its sink channel), "
        "bos_attention, bos_term, other_term, bos_ratio (term / bound), share_of_separation",
    },
    findings=_findings,
    tables=lambda r: {"sinks": r.to_dataframe(), "sink_channels": r.channels(top=1)},
    section=_section,
)
