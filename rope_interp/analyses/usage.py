"""Frequency usage (Barbero et al., "Round and Round We Go!"): how much norm each band carries.

For every layer, head and band: the mean over tokens of ``‖q_i‖`` and ``‖k_i‖``
(post-rotation; rotation keeps each band's norm, so pre/post are the same), with
the values ``v`` paired on the same dims as the control RoPE never touches.
A model that "uses" a frequency puts norm into it; Barbero et al. find the norm
concentrated in the lowest frequencies, the highest ones used mostly in the first
and last layers. The values should show no such pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float
from torch import Tensor

from ..model.kind import Model
from ..model.layout import RotaryBands
from ..read.capture import BandStats
from ..validate import positive_int
from .inputs import figure, heatmap, layer_head_band_frame, layer_list
from .registry import Analysis, Block, Option, RunContext
from .stream import Accumulator, check_merge, run_pass

SIDES = {"q": "rot_q", "k": "rot_k", "v": "v"}
"""Each reported side and the site its norms are read at."""


@dataclass
class FrequencyUsage:
    """Mean band norms per layer, head and band.

    Attributes:
        q_norm: ``[layer, head, band]`` mean ``‖q_i‖`` over tokens.
        k_norm: ``[layer, kv_head, band]`` mean ``‖k_i‖``.
        v_norm: ``[layer, kv_head, band]`` mean norm of the value dims paired like a band (control).
        layers: the model layers of axis 0.
        freqs: ``[layer, band]`` rad/token of those layers (band 0 = highest frequency).
        n_tokens: tokens averaged over.
    """

    q_norm: Float[Tensor, "layer head band"]
    k_norm: Float[Tensor, "layer kv_head band"]
    v_norm: Float[Tensor, "layer kv_head band"]
    layers: list[int]
    freqs: Float[Tensor, "layer band"] = field(repr=False)
    n_tokens: int = 0

    def per_layer(self, site: str = "q") -> Float[Tensor, "layer band"]:
        """Mean norm averaged over heads: ``[layer, band]`` for site ``q``, ``k`` or ``v``."""
        return self._site(site).mean(1)

    def share(self, site: str = "q") -> Float[Tensor, "layer band"]:
        """Per-layer norm share of each band (rows sum to 1)."""
        p = self.per_layer(site)
        return p / p.sum(-1, keepdim=True).clamp_min(1e-30)

    def low_high_ratio(self, site: str = "q") -> Float[Tensor, " layer"]:
        """Norm share of the lowest-frequency quarter of bands over that of the highest quarter."""
        s = self.share(site)
        n = max(1, s.shape[-1] // 4)
        return s[:, -n:].sum(-1) / s[:, :n].sum(-1).clamp_min(1e-30)

    def _site(self, site: str) -> Tensor:
        if site not in SIDES:
            raise ValueError(f"site must be one of {list(SIDES)}, got {site!r}")
        return {"q": self.q_norm, "k": self.k_norm, "v": self.v_norm}[site]

    def merge(self, other: FrequencyUsage) -> FrequencyUsage:
        """Token-weighted combination of two results over the same layers (streaming)."""
        check_merge(self, other, "layers", what="usage")
        n = self.n_tokens + other.n_tokens
        a, b = self.n_tokens / n, other.n_tokens / n
        return FrequencyUsage(
            a * self.q_norm + b * other.q_norm,
            a * self.k_norm + b * other.k_norm,
            a * self.v_norm + b * other.v_norm,
            self.layers,
            self.freqs,
            n,
        )

    def to_dataframe(self):
        """Long table: site, layer, head, band, theta, mean_norm."""
        import pandas as pd

        frames = []
        for site in SIDES:
            df = layer_head_band_frame(self.layers, {"theta": self.freqs, "mean_norm": self._site(site)})
            df.insert(0, "site", site)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def plot(self, layer: int | None = None):
        """Heatmaps of mean norm: per layer averaged over heads (``layer=None``) or per head of one layer."""
        fig, axes = figure(3, width=5.0, height=4.0)
        if layer is None:
            for ax, site in zip(axes, SIDES, strict=False):
                heatmap(
                    ax,
                    self.per_layer(site),
                    f"mean ‖{site}_i‖ (avg over heads)",
                    "band (0 = highest frequency)",
                    "layer index",
                )
            fig.suptitle(f"Frequency usage over {self.n_tokens} tokens (values = control)")
        else:
            if layer not in self.layers:
                raise ValueError(f"layer {layer} was not analysed; analysed layers: {self.layers}")
            i = self.layers.index(layer)
            for ax, site in zip(axes, SIDES, strict=False):
                heatmap(
                    ax,
                    self._site(site)[i],
                    f"layer {layer}: mean ‖{site}_i‖",
                    "band (0 = highest frequency)",
                    "head",
                )
            fig.suptitle(f"Frequency usage per head, layer {layer}")
        fig.tight_layout()
        return fig


def frequency_usage(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    start_pos: int = 0,
    progress: bool = True,
) -> FrequencyUsage:
    """Mean ``‖q_i‖``, ``‖k_i‖`` and (control) ``‖v_i‖`` per layer, head and band, streamed over ``data``.

    ``data``: text, token ids or an iterable of batches (see :mod:`rope_interp.analyses.inputs`);
    ``window`` cuts long input into windows of that many tokens. ``start_pos=1`` leaves out BOS.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> u = frequency_usage(tiny_model(), torch.randint(0, 50, (2, 16)), progress=False)
    >>> tuple(u.q_norm.shape), tuple(u.k_norm.shape), u.n_tokens
    ((2, 4, 8), (2, 2, 8), 32)
    """
    positive_int("start_pos", start_pos, minimum=0)
    acc = UsageAccumulator(model, layer_list(model, layers), start_pos=start_pos)
    run_pass(model, data, [acc], window=window, progress=progress, desc="frequency usage")
    return acc.finalize()


class UsageAccumulator(Accumulator):
    """Shared-pass state of :func:`frequency_usage`: a :class:`BandStats` over ``rot_q``, ``rot_k``, ``v``."""

    def __init__(self, model: Model, layers: list[int], start_pos: int = 0):
        self.model, self.layers = model, list(layers)
        self.stats = BandStats(model, layers=self.layers, sites=tuple(SIDES.values()), start_pos=start_pos)

    def fwd_hooks(self):
        return self.stats.fwd_hooks()

    def merge(self, other: UsageAccumulator) -> UsageAccumulator:
        self.stats.merge(other.stats)
        return self

    def finalize(self) -> FrequencyUsage:
        spec = RotaryBands.from_model(self.model)
        return FrequencyUsage(
            q_norm=self.stats.mean_norm("rot_q").cpu(),
            k_norm=self.stats.mean_norm("rot_k").cpu(),
            v_norm=self.stats.mean_norm("v").cpu(),
            layers=self.layers,
            freqs=spec.freqs[self.layers],
            n_tokens=self.stats.n_tokens,
        )


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
def _start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    return [UsageAccumulator(ctx.model, layer_list(ctx.model, ctx.layers), start_pos=opts["start_pos"])]


def _summary(r: FrequencyUsage) -> dict[str, Any]:
    ratio = {s: r.low_high_ratio(s).tolist() for s in SIDES}
    arg = {s: r.per_layer(s).argmax(-1).tolist() for s in ("q", "k")}
    return {
        "n_tokens": r.n_tokens,
        "per_layer": [
            {
                "layer": layer,
                "low_high_ratio_q": round(ratio["q"][i], 4),
                "low_high_ratio_k": round(ratio["k"][i], 4),
                "low_high_ratio_v": round(ratio["v"][i], 4),
                "top_band_q": arg["q"][i],
                "top_band_k": arg["k"][i],
            }
            for i, layer in enumerate(r.layers)
        ],
    }


def _findings(r: FrequencyUsage) -> list[str]:
    q, v = r.low_high_ratio("q"), r.low_high_ratio("v")
    n_low = int((q > 1).sum())
    return [
        f"Frequency usage: in {n_low} of {len(r.layers)} layers the lowest-frequency quarter of bands carries "
        f"more query norm than the highest quarter (median ratio {float(q.median()):.2g}, range "
        f"{float(q.min()):.2g}–{float(q.max()):.2g}); the values, which RoPE does not rotate, give "
        f"{float(v.median()):.2g}."
    ]


def _section(r: FrequencyUsage) -> list[Block]:
    import pandas as pd

    from ..view.html import paragraph, table_html

    rows = pd.DataFrame(_summary(r)["per_layer"])
    return [
        (None, paragraph(ANALYSIS.description)),
        (None, r.plot()),
        (None, paragraph("Per layer: norm share of the lowest over the highest quarter of bands.")),
        (None, table_html(rows)),
    ]


ANALYSIS = Analysis(
    name="usage",
    title="Frequency usage (Barbero et al.)",
    help="Frequency usage (Barbero et al.): mean band norms of q, k and v",
    description=(
        "Mean band norm of queries, keys and (control) values per layer, head and band (Barbero et al., "
        "Round and Round We Go!, 2024). Values are not rotated by RoPE: a band pattern in q/k that v lacks "
        "is RoPE's doing."
    ),
    start=_start,
    finish=lambda ctx, opts, accs: accs[0].finalize(),
    options=(Option("start_pos", int, 0, "first position counted (1 leaves out BOS)", minimum=0),),
    summary=_summary,
    summary_doc={
        "n_tokens": "tokens averaged over",
        "per_layer": "records: layer, low/high-quarter norm ratio of q, k, v, and the band of largest q/k norm",
    },
    findings=_findings,
    tables=lambda r: {"usage": r.to_dataframe()},
    section=_section,
)
