"""Phase alignment, causally: rotate one band of one head by Δφ and watch its sharpness.

Tests the claim of Ruscio et al. (arXiv 2410.18067 **v1/v2** only; v3/v4 drop it) that
q–k phase alignment amplifies activations and sharpens attention, as an intervention
(the experiment is ours). For head ``h`` of layer ``L`` and band ``i``, the q–k angle of
band ``i`` is moved by ``Δφ ∈ [0, π]`` at every query–key pair. We do it on the query
side (``ablate_bands(..., target="q", mode="shift", phase=-Δφ, heads=[h])``), which
gives head ``h`` exactly the scores of rotating its keys by ``+Δφ``
(``(R(−Δφ) q)·k = q·(R(Δφ) k)``) without touching the other query heads that share the
key under grouped-query attention. Measured, over queries ``m >= skip``:

* ``entropy``: the row's entropy over ``log(m + 1)`` (1 = uniform over the causal keys);
* ``max_weight``: the largest weight on a key other than the first (sink) key;
* ``mlp_norm``: the mean norm of layer ``L``'s MLP activation (``hook_post``), downstream.

The claim's prediction is sharpest at the **aligning shift** ``Δφ = −angle(C_i)``, with
``C_i = Σ p[m,n] conj(q_i(m)) k_i(n)`` over the clean run (sink key left out): for a band
already aligned that is 0 and sharpness falls with ``|Δφ|``; pass ``phases`` over ``[−π, π]``
to locate it for a band that is not.

Conditions: the head's most-used bands (largest mean ``|q_i|·|k_i|`` on the data), its
least-used band, and rotations of the same angle in random 2-planes of the head's query
(a perturbation of equal size that follows no band).

:func:`weighted_alignment` is the observational companion (ours too): per head and band, the
attention- and norm-weighted cosine of the q–k band angle over the non-sink keys, correlated
across queries with sharpness after partialling out ``log(m + 1)``.

What it can show: how much this head's sharpness and the next MLP depend on the phase
of one band, against equal-sized controls. What it cannot show: why (a shift in a
high-frequency band also moves the head's preferred offset, which changes sharpness
without any "alignment"), or anything about heads or bands not tested.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import band_norms
from ..errors import ContextLengthError, ParameterError
from ..intervene.ablate import ablate_bands
from ..model import adapter
from ..model.hooks import attn_hook, mlp_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..validate import finite, indices, positive_int
from .inputs import (
    figure,
    heatmap,
    iter_windows,
    layer_head_band_frame,
    layer_list,
    qk_pair_hooks,
    text_tokens,
    windows,
)
from .registry import Analysis, Option, RunContext, as_blocks, auto_size
from .signal import _add_sums, corr_from_sums

METRICS = ("entropy", "max_weight", "mlp_norm")


def sharpness(pattern: Float[Tensor, "... q k"], skip: int = 1) -> tuple[Tensor, Tensor, int]:
    """Sums over queries ``m >= skip`` of normalised entropy and of the max weight off the first key.

    Returns ``(Σ entropy / log(m + 1), Σ max_{1 <= n <= m} p[m, n], count)`` summed over leading axes.

    >>> import torch
    >>> uniform = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5.0)[:, None]
    >>> e, mx, n = sharpness(uniform)
    >>> round(float(e / n), 4), round(float(mx / n), 4), n
    (1.0, 0.3611, 3)
    """
    if skip < 1:
        raise ParameterError(f"skip must be >= 1 (query 0 sees only the sink key), got {skip}")
    p = pattern[..., skip:, :].double()
    m = torch.arange(skip, pattern.shape[-2], device=p.device, dtype=torch.float64)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1) / torch.log(m + 1)
    mx = p[..., 1:].amax(-1)
    return ent.sum(), mx.sum(), int(ent.numel())


def band_usage(
    q: Float[Tensor, "... pos band 2"], k: Float[Tensor, "... pos band 2"]
) -> Float[Tensor, " band"]:
    """Mean band norm of q times that of k: how much a band can contribute to the scores.

    >>> import torch
    >>> q = torch.zeros(1, 3, 2, 2); q[..., 0, 0] = 2.0
    >>> band_usage(q, torch.ones(1, 3, 2, 2)).tolist()
    [2.8284270763397217, 0.0]
    """
    qn = band_norms(q).flatten(0, -2).mean(0)
    kn = band_norms(k).flatten(0, -2).mean(0)
    return qn * kn


def _plane_hooks(layer: int, head: int, e1: Tensor, e2: Tensor, phi: float) -> list:
    c, s = math.cos(-phi), math.sin(-phi)

    def fn(q: Tensor, hook: Any) -> Tensor:
        x = q[:, :, head]
        u, v = e1.to(x.dtype), e2.to(x.dtype)
        a, b = x @ u, x @ v
        q[:, :, head] = x + (a * c - b * s - a)[..., None] * u + (a * s + b * c - b)[..., None] * v
        return q

    return [(attn_hook(layer, "rot_q"), fn)]


def complex_band_alignment(
    q: Float[Tensor, "batch m band 2"],
    k: Float[Tensor, "batch n band 2"],
    pattern: Float[Tensor, "batch m n"],
) -> tuple[Tensor, Tensor]:
    """``C_i = Σ_m Σ_{n>=1} p[m,n] conj(q_i(m)) k_i(n)`` (bands as complex numbers, sink key left out) and
    ``D_i = Σ p[m,n] |q_i(m)||k_i(n)|``. ``Re C / D`` is the weighted alignment; shifting the q–k angle by
    ``Δφ`` turns ``C`` into ``C e^{iΔφ}``, so ``Δφ = −angle(C)`` aligns the band.

    >>> import torch, math
    >>> q = torch.tensor([[[[1.0, 0.0]]]])                                    # [1, 1 query, 1 band, 2]
    >>> k = torch.tensor([[[[0.0, 0.0]], [[math.cos(0.5), math.sin(0.5)]]]])  # key 1 at +0.5 rad
    >>> c, d = complex_band_alignment(q, k, torch.tensor([[[0.0, 1.0]]]))     # the query attends key 1
    >>> round(float(c.angle()[0]), 3), round(float(c.real[0] / d[0]), 3)
    (0.5, 0.878)
    """
    p = pattern.clone()
    p[..., 0] = 0
    zq = torch.complex(q[..., 0], q[..., 1])
    zk = torch.complex(k[..., 0], k[..., 1])
    kbar = torch.einsum("bmn,bni->bmi", p.to(zk.dtype), zk)
    kn = torch.einsum("bmn,bni->bmi", p, zk.abs())
    return (zq.conj() * kbar).sum((0, 1)), (zq.abs() * kn).sum((0, 1))


@dataclass
class CausalAlignment:
    """Sharpness of one head and its layer's MLP activation norm against the phase shift Δφ.

    ``values[metric][c, p]``: the mean of ``metric`` under condition ``labels[c]`` and phase ``phases[p]``.
    """

    layer: int
    head: int
    phases: Float[Tensor, " phase"]
    labels: list[str]
    bands: list[int | None]
    usage: Float[Tensor, " band"]
    entropy: Float[Tensor, "cond phase"]
    max_weight: Float[Tensor, "cond phase"]
    mlp_norm: Float[Tensor, "cond phase"]
    n_queries: int
    clean_alignment: Float[Tensor, " band"] | None = None
    aligning_shift: Float[Tensor, " band"] | None = None

    def sharpest_shift(self) -> Float[Tensor, " cond"]:
        """Per condition, the tested Δφ with the lowest normalised entropy."""
        return self.phases[self.entropy.argmin(-1)]

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for c, label in enumerate(self.labels):
            for p, ph in enumerate(self.phases.tolist()):
                row = {"condition": label, "band": self.bands[c], "delta_phi": ph}
                for name in METRICS:
                    v = getattr(self, name)
                    row[name] = float(v[c, p])
                    row[f"d_{name}"] = float(v[c, p] - v[c, 0])
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Per condition: change of each metric from Δφ = 0 to the last Δφ (MLP norm in %), the sharpest
        tested Δφ and, for bands, the clean weighted alignment and the shift that would align the band."""
        out: dict[str, Any] = {"layer": self.layer, "head": self.head, "n_queries": self.n_queries}
        best = self.sharpest_shift()
        for c, label in enumerate(self.labels):
            out[label] = {
                "d_entropy": round(float(self.entropy[c, -1] - self.entropy[c, 0]), 4),
                "d_max_weight": round(float(self.max_weight[c, -1] - self.max_weight[c, 0]), 4),
                "d_mlp_norm_pct": round(float(100 * (self.mlp_norm[c, -1] / self.mlp_norm[c, 0] - 1)), 3),
                "sharpest_shift": round(float(best[c]), 3),
            }
            b = self.bands[c]
            if b is not None and self.clean_alignment is not None and self.aligning_shift is not None:
                out[label]["clean_alignment"] = round(float(self.clean_alignment[b]), 3)
                out[label]["aligning_shift"] = round(float(self.aligning_shift[b]), 3)
        return out

    def plot(self):
        fig, axes = figure(3, width=4.6, height=4.0)
        order = torch.argsort(self.phases)
        ph = self.phases[order].numpy()
        titles = ("normalised entropy H / log(m+1)", "max weight off the sink key", "MLP activation norm")
        for ax, name, title in zip(axes, METRICS, titles, strict=True):
            v = getattr(self, name)
            for c, label in enumerate(self.labels):
                (line,) = ax.plot(
                    ph,
                    v[c, order].numpy(),
                    "--" if self.bands[c] is None else "-",
                    marker="o",
                    ms=3,
                    label=label,
                )
                b = self.bands[c]
                if b is not None and self.aligning_shift is not None:
                    x = float(self.aligning_shift[b])
                    if ph.min() <= x <= ph.max():
                        ax.axvline(x, color=line.get_color(), lw=0.8, ls=":")
            ax.set_title(f"L{self.layer} H{self.head}: {title}")
            ax.set_xlabel("phase shift Δφ of the q–k angle (rad); dotted: aligning shift")
            ax.set_ylabel(name)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig


def causal_alignment(
    model: Model,
    data: Any,
    *,
    layer: int,
    head: int,
    bands: Sequence[int] | None = None,
    n_used: int = 2,
    phases: Sequence[float] | Tensor | None = None,
    n_random: int = 1,
    seed: int = 0,
    skip: int = 1,
    window: int | None = None,
    progress: bool = True,
) -> CausalAlignment:
    """Shift band ``i`` of head ``head``'s q–k angle by each Δφ in ``phases`` (default 0..π, 9 steps).

    ``bands``: the bands to shift (default: the ``n_used`` most used and the least used by
    :func:`band_usage` on ``data``); plus ``n_random`` random-plane rotations of the same angle.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> r = causal_alignment(tiny_model(), torch.randint(0, 50, (1, 16)), layer=0, head=1, phases=[0.0, 3.0],
    ...                      progress=False)
    >>> r.labels[-1], tuple(r.entropy.shape)
    ('random plane 0', (4, 2))
    """
    (layer,) = adapter.layers(model, layer)
    (head,) = adapter.heads(model, head)
    spec = RotaryBands.from_model(model)
    skip = positive_int("skip", skip, minimum=1)
    n_random = positive_int("n_random", n_random, minimum=0)
    ph = torch.linspace(0, math.pi, 9) if phases is None else torch.as_tensor(phases, dtype=torch.float64)
    finite("phases", ph)
    if ph.ndim != 1 or len(ph) < 2 or float(ph[0]) != 0.0:
        raise ParameterError(f"phases must be a 1-d list starting at 0.0 (the clean run), got {ph.tolist()}")
    if bool((ph.abs() > math.pi + 1e-6).any()):
        raise ParameterError(f"phases must lie in [-π, π] radians, got {ph.tolist()}")
    if bands is None:
        n_used = positive_int("n_used", n_used)
        if n_used >= spec.n_bands:  # the least-used band is added too: never list a band twice
            raise ParameterError(
                f"n_used={n_used} with {spec.n_bands} bands would list a band twice (the least-used band is "
                f"shifted too); use n_used <= {spec.n_bands - 1}, or name the bands with bands=[...]"
            )
    wins = list(iter_windows(model, data, window))
    short = min(int(w.shape[-1]) for w in wins) if wins else 0
    if short < skip + 2:  # a query after the skipped ones, with at least two keys to be sharp over
        raise ContextLengthError(
            f"causal_alignment needs windows of at least skip + 2 = {skip + 2} tokens (queries after the first "
            f"skip={skip}, each over two or more keys); the shortest has {short}: pass more text"
        )
    kv = int(spec.kv_map[head])

    # band usage and the clean alignment of each band on the clean run
    got: dict[str, Tensor] = {}
    dims = spec.dims.to(adapter.device(model))
    acc = {"q": [], "k": [], "C": 0.0, "D": 0.0}

    def grab(side: str, idx: int):
        def fn(x: Tensor, hook: Any) -> Tensor:
            got[side] = x[:, :, idx].detach().double()[..., dims]  # [b, pos, band, 2]
            return x

        return fn

    def on_clean_pattern(p: Tensor, hook: Any) -> Tensor:
        q, k = got.pop("q"), got.pop("k")
        acc["q"].append(q[:, skip:])
        acc["k"].append(k[:, skip:])
        c, d = complex_band_alignment(q[:, skip:], k, p[:, head, skip:].detach().double())
        acc["C"], acc["D"] = acc["C"] + c, acc["D"] + d
        return p

    cap = [
        (attn_hook(layer, "rot_q"), grab("q", head)),
        (attn_hook(layer, "rot_k"), grab("k", kv)),
        (attn_hook(layer, "pattern"), on_clean_pattern),
    ]
    for tokens in wins:
        with torch.no_grad(), model.hooks(fwd_hooks=cap):
            model(tokens, stop_at_layer=layer + 1)
    usage = band_usage(torch.cat(acc["q"], 1), torch.cat(acc["k"], 1)).cpu()
    C = torch.as_tensor(acc["C"]).cpu()
    clean = (C.real / torch.as_tensor(acc["D"]).cpu().clamp_min(1e-30)).float()
    aligning = (-C.angle()).float()
    if bands is None:
        order = torch.argsort(usage, descending=True).tolist()
        chosen = order[:n_used] + [order[-1]]
        labels = [f"band {b} (used #{i + 1})" for i, b in enumerate(order[:n_used])] + [
            f"band {order[-1]} (least used)"
        ]
    else:
        chosen = indices("band", bands, spec.n_bands, allow_empty=False)
        labels = [f"band {b}" for b in chosen]
    g = torch.Generator().manual_seed(seed)
    planes = []
    for r in range(n_random):
        e = torch.zeros(spec.d_head, 2, dtype=torch.float64)
        e[: spec.rotary_dim] = torch.linalg.qr(
            torch.randn(spec.rotary_dim, 2, generator=g, dtype=torch.float64)
        )[0]
        planes.append(e.to(adapter.device(model)))
        labels.append(f"random plane {r}")
    conds: list[int | None] = [*chosen, *([None] * n_random)]

    sums = torch.zeros(3, len(conds), len(ph), dtype=torch.float64)
    state: dict[str, Any] = {}

    def on_pattern(p: Tensor, hook: Any) -> Tensor:
        e, mx, n = sharpness(p[:, head], skip)
        state["e"], state["mx"], state["n"] = e, mx, n
        return p

    def on_post(x: Tensor, hook: Any) -> Tensor:
        state["mlp"] = x[:, skip:].detach().double().norm(dim=-1).sum()
        return x

    measure = [(attn_hook(layer, "pattern"), on_pattern), (mlp_hook(layer, "post"), on_post)]
    n_q = 0
    bar = progress_bar(total=len(wins) * len(conds) * len(ph), desc="causal alignment", enabled=progress)
    for tokens in wins:
        for c, band in enumerate(conds):
            for p, phi in enumerate(ph.tolist()):
                if band is not None and math.remainder(phi, 2 * math.pi) == 0:
                    hooks = []  # Δφ = 0 (mod 2π) is the clean run: no intervention to attach
                elif band is not None:
                    hooks = ablate_bands(
                        model, [band], layers=[layer], heads=[head], target="q", mode="shift", phase=-phi
                    ).fwd_hooks()
                else:
                    e = planes[c - len(chosen)]
                    hooks = _plane_hooks(layer, head, e[:, 0], e[:, 1], phi)
                with torch.no_grad(), model.hooks(fwd_hooks=hooks + measure):
                    model(tokens, stop_at_layer=layer + 1)
                sums[:, c, p] += torch.stack([state["e"].cpu(), state["mx"].cpu(), state["mlp"].cpu()])
                bar.update()
        n_q += state["n"]
    bar.close()
    if n_q == 0:
        raise ParameterError(f"no query at position >= skip={skip}: pass longer windows")
    v = (sums / n_q).float()
    return CausalAlignment(
        layer, head, ph.float(), labels, conds, usage.float(), v[0], v[1], v[2], n_q, clean, aligning
    )


CAN_AND_CANNOT = (
    "Ruscio et al. v1/v2's alignment claim (phase alignment sharpens attention and amplifies activations; "
    "dropped in v3/v4), tested causally (our experiment): one band of one head has its q-k angle shifted by "
    "Δφ at every query-key pair, against its least-used band and a rotation of equal angle in a random plane. "
    "The claim predicts the sharpest Δφ to be the one that aligns the band (Δφ = −angle of the attention- and "
    "norm-weighted q-k band product, dotted in the figure). It can show how much the head's sharpness "
    "(entropy / log(m+1), max weight off the sink) and the next MLP's activation norm depend on that band's "
    "phase. It cannot show why: a shift in a high-frequency band also moves the offset the head prefers, "
    "which changes sharpness without any alignment story."
)


def report_section(result: CausalAlignment | WeightedAlignment) -> list:
    """Items for the report page: the can/cannot text, the changes at the largest Δφ, the figure, the table.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> r = causal_alignment(tiny_model(), torch.randint(0, 50, (1, 16)), layer=0, head=1, phases=[0.0, 3.0],
    ...                      progress=False)
    >>> [type(x).__name__ for x in report_section(r)]
    ['str', 'str', 'Figure', 'DataFrame']
    """
    import matplotlib.pyplot as plt

    if isinstance(result, WeightedAlignment):
        fig = result.plot()
        plt.close(fig)
        s = result.summary()
        return [
            f"<p>{html.escape(OBSERVATIONAL_CAN_AND_CANNOT)}</p>",
            f"<p>{s['n_queries']} queries; median |partial corr| with entropy per layer: "
            f"{html.escape(str(s['median_abs_pcorr_entropy']))}.</p>",
            fig,
            result.to_dataframe().sort_values("pcorr_entropy").head(15),
        ]
    s = result.summary()
    changes = "; ".join(
        f"{k}: Δentropy {v['d_entropy']:+.3f}, Δmax {v['d_max_weight']:+.3f}, MLP norm {v['d_mlp_norm_pct']:+.2f}%, "
        f"sharpest at Δφ = {v['sharpest_shift']:+.2f}"
        + (
            f" (clean alignment {v['clean_alignment']:+.2f}, aligning shift {v['aligning_shift']:+.2f})"
            if "aligning_shift" in v
            else ""
        )
        for k, v in s.items()
        if isinstance(v, dict)
    )
    fig = result.plot()
    plt.close(fig)
    return [
        f"<p>{html.escape(CAN_AND_CANNOT)}</p>",
        f"<p>Layer {result.layer}, head {result.head}, {result.n_queries} queries; at Δφ = "
        f"{float(result.phases[-1]):.2f}: {html.escape(changes)}.</p>",
        fig,
        result.to_dataframe(),
    ]


# ---- the observational version -----------------------------------------------------------------------------
def partial_corr(r_xy: Tensor, r_xz: Tensor, r_yz: Tensor) -> Tensor:
    """Correlation of x and y with z partialled out, from the three pairwise correlations.

    >>> import torch
    >>> float(partial_corr(torch.tensor(0.5), torch.tensor(0.0), torch.tensor(0.0)))
    0.5
    """
    den = ((1 - r_xz.square()) * (1 - r_yz.square())).clamp_min(1e-30).sqrt()
    return (r_xy - r_xz * r_yz) / den


def weighted_band_alignment(
    q: Float[Tensor, "batch m head band 2"],
    k: Float[Tensor, "batch n head band 2"],
    pattern: Float[Tensor, "batch head m n"],
) -> Float[Tensor, "batch m head band"]:
    """``Σ_{n>=1} p[m,n] q_i(m)·k_i(n) / Σ_{n>=1} p[m,n] |q_i(m)||k_i(n)|``: the mean cos of band ``i``'s
    q–k angle, weighted by attention and by norms, the first (sink) key left out. ``k`` per query head.

    >>> import torch
    >>> q = torch.tensor([[[[[1.0, 0.0]]], [[[1.0, 0.0]]]]])        # [1, 2, 1, 1, 2]
    >>> k = torch.tensor([[[[[5.0, 5.0]]], [[[0.0, 2.0]]]]])
    >>> p = torch.tensor([[[[1.0, 0.0], [0.3, 0.7]]]])
    >>> weighted_band_alignment(q, k, p)[0, 1, 0, 0].item()            # key 1: angle π/2; the sink is ignored
    0.0
    """
    p = pattern.clone()
    p[..., 0] = 0
    kbar = torch.einsum("bhmn,bnhic->bmhic", p, k)
    kn = torch.einsum("bhmn,bnhi->bmhi", p, band_norms(k))
    return (q * kbar).sum(-1) / (band_norms(q) * kn).clamp_min(1e-30)


@dataclass
class WeightedAlignment:
    """Per layer × head × band: mean weighted alignment and its partial correlations (given log(m+1))
    across queries with the normalised entropy and with the max weight off the sink."""

    alignment: Float[Tensor, "layer head band"]
    pcorr_entropy: Float[Tensor, "layer head band"]
    pcorr_max: Float[Tensor, "layer head band"]
    layers: list[int]
    n_queries: int

    def to_dataframe(self):
        cols = {
            "alignment": self.alignment,
            "pcorr_entropy": self.pcorr_entropy,
            "pcorr_max_weight": self.pcorr_max,
        }
        return layer_head_band_frame(self.layers, cols)

    def summary(self) -> dict[str, Any]:
        pe = self.pcorr_entropy.flatten(1).nan_to_num()
        return {
            "n_queries": self.n_queries,
            "median_abs_pcorr_entropy": {
                layer: round(float(pe[i].abs().median()), 3) for i, layer in enumerate(self.layers)
            },
            "share_pcorr_entropy_below_-0.3": {
                layer: round(float((pe[i] < -0.3).float().mean()), 3) for i, layer in enumerate(self.layers)
            },
        }

    def plot(self, layer: int | None = None):
        i = 0 if layer is None else self.layers.index(layer)
        fig, axes = figure(2, width=5.5, height=4.2)
        for ax, v, what in zip(
            axes, (self.pcorr_entropy, self.pcorr_max), ("entropy", "max weight off sink"), strict=True
        ):
            heatmap(
                ax,
                v[i],
                f"L{self.layers[i]}: partial corr(weighted alignment, {what} | log(m+1))",
                "band (0 = highest frequency)",
                "head",
                cmap="coolwarm",
                vmin=-1,
                vmax=1,
            )
        fig.tight_layout()
        return fig


def weighted_alignment(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    skip: int = 1,
    progress: bool = True,
) -> WeightedAlignment:
    """Observational alignment (ours): :func:`weighted_band_alignment` per query ``m >= skip``, correlated
    across queries with normalised entropy and max weight off the sink, ``log(m + 1)`` partialled out.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> w = weighted_alignment(tiny_model(), torch.randint(0, 50, (1, 16)), progress=False)
    >>> tuple(w.pcorr_entropy.shape), w.n_queries
    ((2, 4, 8), 15)
    """
    layers = layer_list(model, layers)
    skip = positive_int("skip", skip, minimum=1)
    spec = RotaryBands.from_model(model)
    L, H, B = len(layers), spec.n_heads, spec.n_bands
    sums = {key: torch.zeros(6, L, H, B, dtype=torch.float64) for key in ("xe", "xm", "xz", "ez", "mz")}
    mean = torch.zeros(L, H, B, dtype=torch.float64)
    held: dict[int, tuple[Tensor, Tensor]] = {}

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        held[layer] = (q.double(), k[:, :, spec.kv_map.to(k.device)].double())

    def on_pattern(pat: Tensor, hook: Any, layer: int) -> Tensor:
        q, k = held.pop(layer)
        p = pat.detach().double()
        a = weighted_band_alignment(q[:, skip:], k, p[:, :, skip:]).cpu()  # [b, m, h, B]
        rows = p[:, :, skip:]
        m = torch.arange(skip, p.shape[-2], dtype=torch.float64, device=p.device)
        ent = (
            (-(rows * rows.clamp_min(1e-30).log()).sum(-1) / torch.log(m + 1)).transpose(1, 2).cpu()
        )  # [b, m, h]
        mxw = rows[..., 1:].amax(-1).transpose(1, 2).cpu()
        z = torch.log(m + 1).cpu()[None, :, None].expand_as(ent)
        i = layers.index(layer)
        E, M, Z = (t[..., None].expand_as(a) for t in (ent, mxw, z))
        _add_sums(sums["xe"][:, i], a, E, (0, 1))
        _add_sums(sums["xm"][:, i], a, M, (0, 1))
        _add_sums(sums["xz"][:, i], a, Z, (0, 1))
        _add_sums(sums["ez"][:, i], E, Z, (0, 1))
        _add_sums(sums["mz"][:, i], M, Z, (0, 1))
        mean[i] += a.sum((0, 1))
        return pat

    hooks = qk_pair_hooks(model, layers, on_pair) + [
        (attn_hook(layer, "pattern"), lambda p, hook, layer=layer: on_pattern(p, hook, layer))
        for layer in layers
    ]
    for tokens in windows(model, data, window, progress, "weighted alignment"):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
    n = int(sums["xe"][0, 0, 0, 0])
    if n == 0:
        raise ParameterError(f"no query at position >= skip={skip}: pass longer windows")
    r = {key: corr_from_sums(v) for key, v in sums.items()}
    return WeightedAlignment(
        (mean / n).float(),
        partial_corr(r["xe"], r["xz"], r["ez"]).float(),
        partial_corr(r["xm"], r["xz"], r["mz"]).float(),
        layers,
        n,
    )


OBSERVATIONAL_CAN_AND_CANNOT = (
    "Our own observational companion to the causal test: per head and band, the cosine of the q-k band angle "
    "averaged over the non-sink keys with weights attention x |q_i||k_i|, correlated across queries with "
    "sharpness after partialling out log(m+1). It can show whether queries whose attended keys are better "
    "aligned in a band are also sharper, position aside. It cannot show cause, and weighting by attention "
    "ties the alignment to the scores that make the attention, so some correlation is expected by construction."
)


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
@dataclass
class AlignmentResult:
    """What the registered ``alignment`` analysis returns: the observational scan and the causal test."""

    weighted: WeightedAlignment
    causal: CausalAlignment | None = None

    def to_dataframe(self):
        return self.weighted.to_dataframe()


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list) -> AlignmentResult:
    pool = layer_list(ctx.model, ctx.layers)
    layer = opts["layer"] if opts["layer"] is not None else pool[len(pool) // 2]
    (layer,) = adapter.layers(ctx.model, layer)
    layers = sorted({pool[0], layer, pool[-1]})
    tokens = text_tokens(ctx.model, ctx.data, auto_size(ctx, opts["n_tokens"], 16, 64, 128))
    w = weighted_alignment(ctx.model, tokens, layers=layers, window=ctx.window, progress=ctx.progress)
    causal = None
    if opts["n_phases"]:
        head = opts["head"]
        if (
            head is None
        ):  # the head whose weighted alignment goes most with sharper rows (most negative pcorr)
            head = int(w.pcorr_entropy[layers.index(layer)].nan_to_num(0.0).amin(-1).argmin())
        causal = causal_alignment(
            ctx.model,
            tokens,
            layer=layer,
            head=head,
            n_used=opts["n_used"],
            phases=torch.linspace(0, math.pi, opts["n_phases"]).tolist(),
            n_random=opts["n_random"],
            window=ctx.window,
            progress=ctx.progress,
        )
    return AlignmentResult(w, causal)


def _summary(r: AlignmentResult) -> dict[str, Any]:
    w = r.weighted
    pe = w.pcorr_entropy.flatten(1).nan_to_num()
    out: dict[str, Any] = {
        "n_queries": w.n_queries,
        "weighted": [
            {
                "layer": layer,
                "median_abs_pcorr_entropy": round(float(pe[i].abs().median()), 4),
                "share_pcorr_entropy_below_-0.3": round(float((pe[i] < -0.3).float().mean()), 4),
            }
            for i, layer in enumerate(w.layers)
        ],
    }
    c = r.causal
    if c is not None:
        s = c.summary()
        out["causal_layer"], out["causal_head"] = c.layer, c.head
        out["causal"] = [{"condition": k, **v} for k, v in s.items() if isinstance(v, dict)]
    return out


def _findings(r: AlignmentResult) -> list[str]:
    s = _summary(r)
    med = ", ".join(f"L{x['layer']} {x['median_abs_pcorr_entropy']:.2f}" for x in s["weighted"])
    out = [
        f"Weighted alignment (ours): median |partial correlation| of a band's weighted q-k alignment with row entropy, "
        f"given log(m+1), per layer: {med}."
    ]
    if r.causal is not None:
        last = float(r.causal.phases[-1])
        parts = "; ".join(
            f"{x['condition']}: Δentropy {x['d_entropy']:+.3f}, MLP norm {x['d_mlp_norm_pct']:+.2f}%"
            for x in s["causal"]
        )
        out.append(
            f"Causal alignment (Ruscio et al. v1/v2 claim, our intervention): shifting one band of L{r.causal.layer}"
            f"H{r.causal.head}'s q-k angle by Δφ = {last:.2f}: {parts}."
        )
    return out


def _section(r: AlignmentResult) -> list:
    blocks = as_blocks(report_section(r.weighted))
    if r.causal is not None:
        blocks += as_blocks(report_section(r.causal))
    return blocks


def _tables(r: AlignmentResult) -> dict[str, Any]:
    out = {"weighted_alignment": r.weighted.to_dataframe()}
    if r.causal is not None:
        out["causal_alignment"] = r.causal.to_dataframe()
    return out


ANALYSIS = Analysis(
    name="alignment",
    title="Phase alignment and sharpness (Ruscio et al. v1/v2 claim)",
    help="Does q-k phase alignment sharpen attention? Weighted alignment vs sharpness, then one band's phase shifted",
    description=(
        "Our tests of Ruscio et al.'s v1/v2 alignment claim on the first n_tokens of the text: per head and band, the "
        "attention- and norm-weighted cosine of the q-k band angle correlated with row sharpness given log(m+1) "
        "(first, middle and last analysed layer); then, for one head, a band's q-k angle shifted by Δφ in [0, π] "
        "against its least-used band and a random-plane rotation, on entropy, max weight and the MLP norm."
    ),
    finish=_finish,
    options=(
        Option("layer", int, None, "layer of the causal test (None: the middle analysed layer)", minimum=0),
        Option(
            "head",
            int,
            None,
            "head of the causal test (None: the most negative partial correlation)",
            minimum=0,
        ),
        Option(
            "n_tokens", int, None, "first tokens of the text (0: all; None: 1/16 of it, 64 to 128)", minimum=0
        ),
        Option("n_phases", int, 3, "phase shifts from 0 to π (0: skip the causal test)", minimum=0),
        Option("n_used", int, 1, "most-used bands shifted", minimum=1),
        Option("n_random", int, 1, "random-plane controls", minimum=0),
    ),
    summary=_summary,
    summary_doc={
        "n_queries": "queries of the weighted scan",
        "weighted": "records per layer: median_abs_pcorr_entropy, share_pcorr_entropy_below_-0.3",
        "causal_layer": "layer of the causal test",
        "causal_head": "head of the causal test",
        "causal": "records per condition: d_entropy, d_max_weight, d_mlp_norm_pct (clean to Δφ = π), "
        "sharpest_shift, clean_alignment and aligning_shift (bands only)",
    },
    findings=_findings,
    tables=_tables,
    section=_section,
)
