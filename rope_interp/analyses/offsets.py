"""Rotary offset features (Jonasson, "Rotary Offset Features in Large Language Models").

An offset feature is a band where queries and keys carry large components that
point the same way for (almost) every token, so the band adds a near-constant,
position-dependent bias to the scores. Measured here, per layer × head × band,
on the pre-rotation q/k (``hook_q``/``hook_k``), where "same direction" is
meaningful:

* mean vectors ``q̄_i``, ``k̄_i`` and mean norms; consistency ``‖mean‖ / mean‖·‖``;
* the q–k angle ``φ_i = angle(q̄_i) − angle(k̄_i)`` in ``(−π, π]``.

**Our derivation** (not the paper's inequalities, which we did not have): the
mean parts contribute ``‖q̄_i‖‖k̄_i‖ cos(φ_i + θ_i Δ)`` to the score of a query at
``m`` and a key at ``n = m − Δ`` (rotation is ``exp(iθm)`` on ``q`` and ``exp(iθn)``
on ``k``). Over a causal context of ``L`` tokens, ``Δ ∈ [0, L−1]``, so the
argument sweeps an arc of length ``θ_i (L−1)``. The contribution keeps one sign
for every offset only if that arc is shorter than π, i.e. ``θ_i (L−1) < π``
(the *predicted* bands: they complete less than half a turn over the context),
and then only if ``φ_i`` lies in an interval of width ``π − θ_i (L−1)``:
``(−π/2, π/2 − θ_i(L−1))`` keeps it positive, ``(π/2, 3π/2 − θ_i(L−1))`` negative.
For SmolLM2 (base 1e5, 32 bands) and ``L = 2048`` this predicts bands ≥ 19.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..bands import band_angles, band_norms
from ..errors import ContextLengthError
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..read.capture import BandStats
from ..validate import finite, positive_int
from .inputs import figure, heatmap, layer_head_band_frame, layer_list
from .registry import Analysis, Block, Option, RunContext
from .stream import Accumulator, check_merge, run_pass


def predicted_bands(freqs: Float[Tensor, "... band"], context_length: int) -> Bool[Tensor, "... band"]:
    """Bands that can host an offset feature over ``context_length`` tokens: ``θ (L−1) < π`` (our derivation).

    >>> import torch
    >>> freqs = 1e5 ** (-torch.arange(32) / 32)
    >>> int(predicted_bands(freqs, 2048).nonzero()[0])
    19
    """
    return freqs * (context_length - 1) < math.pi


def sign_stable(
    angle: Float[Tensor, "..."], freqs: Float[Tensor, "..."], context_length: int
) -> Float[Tensor, "..."]:
    """+1 / −1 where ``cos(angle + θΔ)`` keeps that sign for all ``Δ`` in ``[0, L−1]``, else 0.

    >>> import torch, math
    >>> sign_stable(torch.tensor([0.0, math.pi, 0.0]), torch.tensor([1e-4, 1e-4, 1.0]), 100).tolist()
    [1.0, -1.0, 0.0]
    """
    sweep = freqs * (context_length - 1)
    a = torch.remainder(angle + math.pi / 2, 2 * math.pi)  # positive interval becomes (0, π − sweep)
    pos = (a > 0) & (a < math.pi - sweep)
    b = torch.remainder(angle - math.pi / 2, 2 * math.pi)  # negative interval becomes (0, π − sweep)
    neg = (b > 0) & (b < math.pi - sweep)
    return pos.to(angle.dtype) - neg.to(angle.dtype)


@dataclass
class OffsetFeatures:
    """Per layer × head × band mean q/k vectors (pre-rotation) and what the bound predicts.

    ``k_*`` tensors have ``kv_head`` on axis 1; ``angle`` and the derived per-head
    quantities pair query head ``h`` with kv head ``kv_map[h]``.
    """

    q_mean: Float[Tensor, "layer head band 2"]
    k_mean: Float[Tensor, "layer kv_head band 2"]
    q_norm: Float[Tensor, "layer head band"]
    k_norm: Float[Tensor, "layer kv_head band"]
    layers: list[int]
    freqs: Float[Tensor, "layer band"] = field(repr=False)
    kv_map: Tensor = field(repr=False)
    context_length: int = 2048
    n_tokens: int = 0
    min_consistency: float = 0.9
    spike: float = 10.0

    # ---- derived ----------------------------------------------------------------------
    @property
    def q_consistency(self) -> Float[Tensor, "layer head band"]:
        return band_norms(self.q_mean) / self.q_norm.clamp_min(1e-30)

    @property
    def k_consistency(self) -> Float[Tensor, "layer kv_head band"]:
        return band_norms(self.k_mean) / self.k_norm.clamp_min(1e-30)

    def _k(self, x: Tensor) -> Tensor:
        return x[:, self.kv_map]

    @property
    def angle(self) -> Float[Tensor, "layer head band"]:
        """``angle(q̄) − angle(k̄)`` wrapped to (−π, π]."""
        d = band_angles(self.q_mean) - self._k(band_angles(self.k_mean))
        return torch.atan2(torch.sin(d), torch.cos(d))

    @property
    def strength(self) -> Float[Tensor, "layer head band"]:
        """``‖q̄_i‖ ‖k̄_i‖``: amplitude of the band's constant (offset) score part (before 1/scale)."""
        return band_norms(self.q_mean) * self._k(band_norms(self.k_mean))

    def norm_ratio(self, site: str = "q") -> Float[Tensor, "layer band"]:
        """Head-averaged mean norm of each band over the median band of its layer (a spike detector)."""
        x = (self.q_norm if site == "q" else self.k_norm).mean(1)
        return x / x.median(-1, keepdim=True).values.clamp_min(1e-30)

    @property
    def predicted(self) -> Bool[Tensor, "layer band"]:
        return predicted_bands(self.freqs, self.context_length)

    @property
    def observed(self) -> Bool[Tensor, "layer head band"]:
        """Consistent q and k (both ≥ ``min_consistency``) and strength ≥ ``spike`` × the head's median band."""
        s = self.strength
        big = s >= self.spike * s.median(-1, keepdim=True).values
        cons = (self.q_consistency >= self.min_consistency) & (
            self._k(self.k_consistency) >= self.min_consistency
        )
        return big & cons

    @property
    def sign(self) -> Float[Tensor, "layer head band"]:
        """+1/−1 where the observed angle keeps the band's offset contribution one-signed over the context."""
        return sign_stable(self.angle, self.freqs[:, None, :].expand_as(self.angle), self.context_length)

    def merge(self, other: OffsetFeatures) -> OffsetFeatures:
        """Token-weighted combination of two results over the same layers (streaming)."""
        check_merge(self, other, "layers", what="offsets")
        n = self.n_tokens + other.n_tokens
        a, b = self.n_tokens / n, other.n_tokens / n
        mix = {
            k: a * getattr(self, k) + b * getattr(other, k) for k in ("q_mean", "k_mean", "q_norm", "k_norm")
        }
        return OffsetFeatures(
            **mix,
            layers=self.layers,
            freqs=self.freqs,
            kv_map=self.kv_map,
            context_length=self.context_length,
            n_tokens=n,
            min_consistency=self.min_consistency,
            spike=self.spike,
        )

    # ---- presentation ----------------------------------------------------------------
    def to_dataframe(self):
        """Long table: layer, head, band, consistencies, angle, strength, predicted, observed, sign."""
        cols = {
            "theta": self.freqs,
            "q_norm": self.q_norm,
            "k_norm": self._k(self.k_norm),
            "q_consistency": self.q_consistency,
            "k_consistency": self._k(self.k_consistency),
            "angle": self.angle,
            "strength": self.strength,
            "predicted": self.predicted,
            "observed": self.observed,
            "sign_stable": self.sign,
        }
        return layer_head_band_frame(self.layers, cols)

    def table(self):
        """Predicted vs observed, one row per band (first analysed layer's frequencies)."""
        import pandas as pd

        obs, sign = self.observed, self.sign
        n_lh = obs.shape[0] * obs.shape[1]
        rows = []
        for b in range(self.freqs.shape[-1]):
            o = obs[..., b]
            rows.append(
                {
                    "band": b,
                    "theta": float(self.freqs[0, b]),
                    f"sweep_over_{self.context_length}": float(self.freqs[0, b] * (self.context_length - 1)),
                    "predicted": bool(self.predicted[0, b]),
                    "observed_heads": int(o.sum()),
                    "observed_share": float(o.sum()) / n_lh,
                    "observed_sign_stable": int((o & (sign[..., b] != 0)).sum()),
                    "q_consistency": float(self.q_consistency[..., b].mean()),
                    "k_consistency": float(self.k_consistency[..., b].mean()),
                    "q_norm_ratio": float(self.norm_ratio("q")[:, b].mean()),
                    "k_norm_ratio": float(self.norm_ratio("k")[:, b].mean()),
                }
            )
        return pd.DataFrame(rows).set_index("band")

    def plot(self):
        """Norm ratio and consistency per layer × band, the bound marked; observed counts per band."""
        fig, axes = figure(3, width=5.0, height=4.2)
        first = int(self.predicted[0].nonzero()[0]) if self.predicted[0].any() else None
        heatmap(
            axes[0],
            self.norm_ratio("q"),
            "q band norm / layer median",
            "band (0 = highest frequency)",
            "layer position",
        )
        cons = (self.q_consistency.mean(1) + self.k_consistency.mean(1)) / 2
        heatmap(
            axes[1],
            cons,
            "mean q/k consistency",
            "band (0 = highest frequency)",
            "layer position",
            vmin=0,
            vmax=1,
        )
        t = self.table()
        axes[2].bar(
            t.index, t["observed_heads"], color=["tab:orange" if p else "tab:blue" for p in t["predicted"]]
        )
        axes[2].set_title("observed offset features (orange = predicted)")
        axes[2].set_xlabel("band (0 = highest frequency)")
        axes[2].set_ylabel("layer × head count")
        if first is not None:
            for ax in axes:
                ax.axvline(first - 0.5, color="red", ls="--", lw=1)
        fig.suptitle(f"Rotary offset features, bound θ(L−1) < π for L = {self.context_length}")
        fig.tight_layout()
        return fig


def offset_features(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    context_length: int | None = None,
    start_pos: int = 1,
    window: int | None = None,
    min_consistency: float = 0.9,
    spike: float = 10.0,
    progress: bool = True,
) -> OffsetFeatures:
    """Mean q/k vectors per band and the predicted-vs-observed offset features.

    ``context_length`` (default: the model's ``n_ctx``) sets the bound; ``start_pos=1``
    leaves out the BOS token, whose q/k are atypical.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> r = offset_features(tiny_model(), torch.randint(0, 50, (2, 16)), progress=False)
    >>> tuple(r.angle.shape), tuple(r.table().shape)
    ((2, 4, 8), (8, 10))
    """
    finite("min_consistency", min_consistency)
    finite("spike", spike)
    positive_int("start_pos", start_pos, minimum=0)
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    L = int(context_length or spec.n_ctx)
    if L < 2:
        raise ValueError(f"context_length must be >= 2, got {L}")
    if L > spec.n_ctx:
        raise ContextLengthError(f"context_length {L} exceeds the model's context of n_ctx={spec.n_ctx}")
    acc = OffsetAccumulator(model, layers, L, start_pos, min_consistency, spike)
    run_pass(model, data, [acc], window=window, progress=progress, desc="offset features")
    return acc.finalize()


class OffsetAccumulator(Accumulator):
    """Shared-pass state of :func:`offset_features`: a :class:`BandStats` over pre-rotation ``q``, ``k``."""

    def __init__(
        self,
        model: Model,
        layers: list[int],
        context_length: int,
        start_pos: int = 1,
        min_consistency: float = 0.9,
        spike: float = 10.0,
    ):
        self.model, self.layers = model, list(layers)
        self.options: dict[str, Any] = dict(
            context_length=context_length, min_consistency=min_consistency, spike=spike
        )
        self.start_pos = start_pos
        self.stats = BandStats(model, layers=self.layers, sites=("q", "k"), start_pos=start_pos)

    def fwd_hooks(self):
        return self.stats.fwd_hooks()

    def merge(self, other: OffsetAccumulator) -> OffsetAccumulator:
        self.stats.merge(other.stats)
        return self

    def finalize(self) -> OffsetFeatures:
        stats, spec = self.stats, RotaryBands.from_model(self.model)
        if stats.n_tokens == 0:
            raise ValueError(f"no tokens at positions >= start_pos={self.start_pos}")
        f = lambda t: t.cpu().float()  # noqa: E731
        return OffsetFeatures(
            q_mean=f(stats.mean_vector("q")),
            k_mean=f(stats.mean_vector("k")),
            q_norm=f(stats.mean_norm("q")),
            k_norm=f(stats.mean_norm("k")),
            layers=self.layers,
            freqs=spec.freqs[self.layers].float(),
            kv_map=spec.kv_map,
            n_tokens=stats.n_tokens,
            **self.options,
        )


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
def _start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    n_ctx = RotaryBands.from_model(ctx.model).n_ctx
    L = opts["context_length"] or min(2048, n_ctx)
    if L > n_ctx:
        raise ContextLengthError(f"context_length {L} exceeds the model's context of n_ctx={n_ctx}")
    layers = layer_list(ctx.model, ctx.layers)
    return [OffsetAccumulator(ctx.model, layers, L, 1, opts["min_consistency"], opts["spike"])]


def _table(r: OffsetFeatures):
    t = r.table().reset_index()
    return t.rename(columns={f"sweep_over_{r.context_length}": "sweep"})


def _summary(r: OffsetFeatures) -> dict[str, Any]:
    pred = r.predicted[0].nonzero().flatten().tolist()
    return {
        "n_tokens": r.n_tokens,
        "context_length": r.context_length,
        "first_predicted_band": pred[0] if pred else None,
        "per_band": _table(r).to_dict(orient="records"),
    }


def _findings(r: OffsetFeatures) -> list[str]:
    t = _table(r)
    pred = t[t.predicted]
    n_obs, n_in = int(t.observed_heads.sum()), int(pred.observed_heads.sum())
    bound = f"bands {int(pred.band.min())}–{int(t.band.max())}" if len(pred) else "no band"
    share = f" ({100 * n_in / n_obs:.0f}%)" if n_obs else ""
    return [
        f"Offset features: the bound θ(L−1) < π for L = {r.context_length} allows them in {bound}; "
        f"{n_obs} (layer, head, band) features are observed, {n_in} of them inside that range{share}."
    ]


def _section(r: OffsetFeatures) -> list[Block]:
    from ..view.html import paragraph, table_html

    return [
        (None, paragraph(ANALYSIS.description + f" Here L = {r.context_length}.")),
        (None, r.plot()),
        (None, table_html(_table(r))),
    ]


ANALYSIS = Analysis(
    name="offsets",
    title="Rotary offset features (Jonasson)",
    help="Rotary offset features (Jonasson) against the bound theta*(L-1) < pi (our derivation)",
    description=(
        "Bands where q and k have large, consistent mean vectors (Jonasson, Rotary Offset Features in Large "
        "Language Models, 2025). Our derivation: band i keeps one sign of its contribution for every causal "
        "offset only if theta_i (L-1) < pi, and then only for q-k angles inside an interval of width "
        "pi - theta_i (L-1). Predicted bands are compared with the observed ones, per band over all analysed "
        "layers and heads."
    ),
    start=_start,
    finish=lambda ctx, opts, accs: accs[0].finalize(),
    options=(
        Option(
            "context_length", int, None, "context length L of the bound (None: min(2048, n_ctx))", minimum=2
        ),
        Option("min_consistency", float, 0.9, "q and k consistency needed for a feature", minimum=0.0),
        Option(
            "spike", float, 10.0, "strength over the head's median band needed for a feature", minimum=0.0
        ),
    ),
    summary=_summary,
    summary_doc={
        "n_tokens": "tokens analysed",
        "context_length": "L of the bound theta (L-1) < pi",
        "first_predicted_band": "lowest band index the bound allows (null: none)",
        "per_band": "records, one per band: band, theta, sweep (theta (L-1)), predicted, observed_heads, "
        "observed_share, observed_sign_stable, q/k_consistency, q/k_norm_ratio",
    },
    findings=_findings,
    tables=lambda r: {"offsets": r.to_dataframe(), "offsets_table": _table(r)},
    section=_section,
)
