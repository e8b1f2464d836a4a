"""Harmonic generation in the real FFN, driven by a synthetic rotating input.

Tests the claim of Ruscio et al. (arXiv 2410.18067 **v1/v2** only; v3/v4 drop it) that
FFN nonlinearities applied to RoPE's oscillations generate harmonics, in the form it
can take in a Llama-style model, where nothing in the residual stream rotates by itself
(see :mod:`.carrier`). The experiment is ours: layer ``L``'s normalisation + MLP is fed

``x(m) = x̄ + a·(cos(θ m)·u + sin(θ m)·v)``,  ``m = 0 .. n_pos − 1``,

with ``x̄`` the mean residual (``hook_resid_mid``, positions ``>= skip``) over real text,
``u, v`` an orthonormal basis of the residual directions that head ``h``'s ``W_Q``
(times ``ln1``'s weight) reads into band ``i`` (or, as the control, a random orthonormal
pair), ``a`` a multiple of the residual's typical deviation ``σ = sqrt(E‖x − x̄‖²)``
and ``θ`` the band's frequency snapped to ``2π c / n_pos`` (an integer ``c`` cycles), so
that with a rectangular window every harmonic ``k θ`` (folded below Nyquist) is one
exact DFT bin: no leakage, and a missing harmonic reads as ~0. A second tone (band
``j``, in directions orthogonal to the first) gives the intermodulation products
``θ1 ± θ2``, ``2θ1 − θ2``, ``2θ2 − θ1``.

Stages: ``resid`` (the drive itself: no harmonics, by construction), ``mlp_in``
(``ln2(x)``: the normalisation alone already makes some, as ``‖x‖`` varies with ``m``)
and ``mlp_out`` (``mlp(ln2(x))``). Generation by the MLP is ``rel(mlp_out) / rel(mlp_in)``
with ``rel = A_k / A_1`` the harmonic's amplitude over the fundamental's. A polynomial
nonlinearity of degree ``≥ k`` makes ``A_k ∝ a^k`` for small ``a`` (log-log slope ``k``).

What it can show: whether this FFN, at this operating point ``x̄``, turns a rotating
input into harmonics, how fast they grow with ``a``, and whether W_Q's band directions
differ from random ones. What it cannot show: that such an input ever occurs in the
model on text (:mod:`.carrier` looks for that), or anything about later layers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import band_norms
from ..errors import ParameterError, RopeInterpError
from ..model import adapter
from ..model.hooks import attn_hook, resid_mid_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import finite, indices, positive_int
from .inputs import figure, layer_list, text_tokens, windows
from .registry import Analysis, Option, RunContext, as_blocks

STAGES = ("resid", "mlp_in", "mlp_out")
DIRS = ("band", "random")


def _fold(j: int, n: int) -> int:
    j %= n
    return n - j if j > n // 2 else j


@dataclass(frozen=True)
class Tone:
    """A tracked frequency: ``label`` (e.g. ``"2θ1"``), its order and its DFT bin of ``n_pos``."""

    label: str
    order: int
    bin: int


def harmonic_tones(cycles: int, n_pos: int, harmonics: int) -> list[Tone]:
    """Bins of ``k·θ`` for ``k = 1..harmonics``, ``θ = 2π·cycles/n_pos``, folded below Nyquist.

    >>> [t.bin for t in harmonic_tones(41, 256, 4)]
    [41, 82, 123, 92]
    """
    return [Tone("θ" if k == 1 else f"{k}θ", k, _fold(k * cycles, n_pos)) for k in range(1, harmonics + 1)]


def intermod_tones(c1: int, c2: int, n_pos: int) -> list[Tone]:
    """Bins of the two fundamentals and the 2nd/3rd-order intermodulation products.

    >>> [(t.label, t.bin) for t in intermod_tones(41, 28, 256)]
    [('θ1', 41), ('θ2', 28), ('θ1+θ2', 69), ('θ1−θ2', 13), ('2θ1−θ2', 54), ('2θ2−θ1', 15)]
    """
    pairs = [
        ("θ1", 1, c1),
        ("θ2", 1, c2),
        ("θ1+θ2", 2, c1 + c2),
        ("θ1−θ2", 2, c1 - c2),
        ("2θ1−θ2", 3, 2 * c1 - c2),
        ("2θ2−θ1", 3, 2 * c2 - c1),
    ]
    return [Tone(label, order, _fold(c, n_pos)) for label, order, c in pairs]


def check_tones(tones: Sequence[Tone], n_pos: int) -> None:
    """Refuse tracked frequencies that land on DC, Nyquist or on each other."""
    bins = [t.bin for t in tones]
    bad = [t.label for t in tones if t.bin in (0, n_pos // 2) or bins.count(t.bin) > 1]
    if bad:
        raise ParameterError(
            f"tracked frequencies {bad} fall on DC, Nyquist or on another tracked frequency with n_pos={n_pos} "
            f"(bins {bins}); choose another n_pos or band"
        )


def drive(
    x_bar: Float[Tensor, " d"],
    dirs: Float[Tensor, "tone 2 d"],
    cycles: Sequence[int],
    n_pos: int,
    amplitudes: Float[Tensor, " amp"],
) -> Float[Tensor, "amp pos d"]:
    """``x̄ + a·Σ_t (cos(θ_t m)·dirs[t, 0] + sin(θ_t m)·dirs[t, 1])`` with ``θ_t = 2π·cycles[t]/n_pos``.

    >>> import torch
    >>> x = drive(torch.zeros(2), torch.eye(2)[None], [1], 4, torch.tensor([1.0]))
    >>> (x[0].round() + 0.0).tolist()
    [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    """
    m = torch.arange(n_pos, dtype=dirs.dtype, device=dirs.device)
    osc = torch.zeros(n_pos, dirs.shape[-1], dtype=dirs.dtype, device=dirs.device)
    for t, c in enumerate(cycles):
        ph = 2 * math.pi * c * m / n_pos
        osc = osc + torch.cos(ph)[:, None] * dirs[t, 0] + torch.sin(ph)[:, None] * dirs[t, 1]
    return x_bar + amplitudes.to(dirs.dtype)[:, None, None] * osc


def tone_amplitudes(y: Float[Tensor, "... pos d"], bins: Sequence[int]) -> Float[Tensor, "... tone"]:
    """Amplitude ``sqrt(Σ_d (2|Y_d[j]|/n)²)`` of ``y`` at each DFT bin ``j`` (rectangular window, mean removed).

    A real sinusoid ``A cos(2π j m / n + φ)`` on an exact bin has amplitude ``A`` (so the circular
    drive ``a(cos·u + sin·v)`` with orthonormal ``u, v`` has ``a·√2``):

    >>> import torch, math
    >>> m = torch.arange(64.0)
    >>> y = (3 * torch.cos(2 * math.pi * 5 * m / 64 + 0.3))[:, None]
    >>> [round(float(a), 4) for a in tone_amplitudes(y, [5, 6])]
    [3.0, 0.0]
    """
    n = y.shape[-2]
    Y = torch.fft.rfft(y - y.mean(-2, keepdim=True), dim=-2)  # [..., F, d]
    sel = Y[..., list(bins), :]
    return (2 * sel.abs() / n).square().sum(-1).sqrt()


def drive_response(
    stages: dict[str, Callable[[Tensor], Tensor]],
    x_bar: Float[Tensor, " d"],
    dirs: Float[Tensor, "tone 2 d"],
    cycles: Sequence[int],
    n_pos: int,
    amplitudes: Float[Tensor, " amp"],
    tones: Sequence[Tone],
) -> Float[Tensor, "stage amp tone"]:
    """Amplitudes at ``tones`` of each ``stages[name](drive(...))``: the pure core of :func:`ffn_harmonics`.

    >>> import torch
    >>> from rope_interp.analyses.harmonics import harmonic_tones
    >>> d = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))[0].T[None]
    >>> r = drive_response({"sq": lambda x: x.square()}, torch.zeros(8, dtype=torch.float64), d, [5], 64,
    ...                    torch.tensor([1.0, 2.0]), harmonic_tones(5, 64, 3))
    >>> bool(r[0, 1, 1] / r[0, 0, 1] > 3.99), float(r[0, :, 2].max()) < 1e-12   # 2θ grows like a², no 3θ
    (True, True)
    """
    x = drive(x_bar, dirs, cycles, n_pos, amplitudes)
    bins = [t.bin for t in tones]
    return torch.stack([tone_amplitudes(fn(x).double(), bins) for fn in stages.values()])


def loglog_slope(a: Float[Tensor, " amp"], y: Float[Tensor, "... amp"]) -> Float[Tensor, "..."]:
    """Least-squares slope of ``log y`` against ``log a`` (NaN where any ``y <= 0``).

    >>> import torch
    >>> round(float(loglog_slope(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3.0, 24.0, 192.0]))), 6)
    3.0
    """
    la = a.double().log()
    la = la - la.mean()
    ly = y.double().clamp_min(0).log()
    ly = ly - ly.mean(-1, keepdim=True)
    s = (ly * la).sum(-1) / la.square().sum()
    return torch.where((y > 0).all(-1), s, torch.full_like(s, float("nan")))


# ---- the model experiment -----------------------------------------------------------------------------------
@dataclass
class FFNHarmonics:
    """Amplitudes at the harmonics (one tone) and intermodulation products (two tones).

    ``amp1[dirs, stage, a, k]``: amplitude at ``(k+1)θ`` for the single tone;
    ``amp2[dirs, stage, a, t]``: amplitude at ``intermod[t]`` for the two tones. ``dirs``:
    ``("band", "random")``; ``stage``: ``("resid", "mlp_in", "mlp_out")``; ``a``: multiples of ``sigma``.
    """

    layer: int
    head: int
    bands: tuple[int, int]
    theta: tuple[float, float]
    cycles: tuple[int, int]
    n_pos: int
    a_rel: Float[Tensor, " amp"]
    sigma: float
    harmonics: list[Tone]
    intermod: list[Tone]
    amp1: Float[Tensor, "dirs stage amp harmonic"]
    amp2: Float[Tensor, "dirs stage amp tone"]
    n_fit: int = 3

    def rel(self, stage: str = "mlp_out") -> Float[Tensor, "dirs amp harmonic"]:
        """Harmonic amplitude over the fundamental's, single tone."""
        a = self.amp1[:, STAGES.index(stage)]
        return a / a[..., :1].clamp_min(1e-300)

    def generation(self) -> Float[Tensor, "dirs amp harmonic"]:
        """``rel(mlp_out) / rel(mlp_in)``: how much the MLP raises each harmonic over its input's."""
        return self.rel("mlp_out") / self.rel("mlp_in").clamp_min(1e-300)

    def slopes(self, stage: str = "mlp_out") -> Float[Tensor, "dirs harmonic"]:
        """Log-log slope of each harmonic's amplitude against ``a`` over the ``n_fit`` smallest amplitudes."""
        return loglog_slope(
            self.a_rel[: self.n_fit], self.amp1[:, STAGES.index(stage), : self.n_fit].movedim(1, -1)
        ).float()

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for tones, amp, kind in (
            (self.harmonics, self.amp1, "one tone"),
            (self.intermod, self.amp2, "two tones"),
        ):
            for d, dname in enumerate(DIRS):
                for s, stage in enumerate(STAGES):
                    for i, a in enumerate(self.a_rel.tolist()):
                        fund = float(amp[d, s, i, 0])
                        for t, tone in enumerate(tones):
                            rows.append(
                                {
                                    "drive": kind,
                                    "dirs": dname,
                                    "stage": stage,
                                    "a_over_sigma": a,
                                    "freq": tone.label,
                                    "order": tone.order,
                                    "omega": 2 * math.pi * tone.bin / self.n_pos,
                                    "amplitude": float(amp[d, s, i, t]),
                                    "rel_fundamental": float(amp[d, s, i, t]) / max(fund, 1e-300),
                                }
                            )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        sl, gen = self.slopes(), self.generation()
        out: dict[str, Any] = {"layer": self.layer, "head": self.head, "bands": list(self.bands)}
        for d, dname in enumerate(DIRS):
            for k in range(1, len(self.harmonics)):
                out[f"{dname}_slope_{k + 1}θ"] = round(float(sl[d, k]), 2)
                out[f"{dname}_rel_{k + 1}θ_at_max_a"] = float(f"{float(self.rel()[d, -1, k]):.3g}")
                out[f"{dname}_generation_{k + 1}θ_at_max_a"] = float(f"{float(gen[d, -1, k]):.3g}")
        return out

    def plot(self):
        fig, (ax0, ax1) = figure(2, width=5.5, height=4.2)
        a = self.a_rel.numpy()
        for d, (dname, ls) in enumerate(zip(DIRS, ("-", "--"), strict=True)):
            for k, tone in enumerate(self.harmonics):
                y = self.amp1[d, STAGES.index("mlp_out"), :, k].clamp_min(1e-12).numpy()
                ax0.loglog(a, y, ls, marker="o", ms=3, color=f"C{k}", label=f"{tone.label} ({dname})")
            for t, tone in enumerate(self.intermod):
                y = self.amp2[d, STAGES.index("mlp_out"), :, t].clamp_min(1e-12).numpy()
                ax1.loglog(a, y, ls, marker="o", ms=3, color=f"C{t}", label=f"{tone.label} ({dname})")
        ax0.set_title(f"L{self.layer} MLP output at kθ, θ = band {self.bands[0]} (solid) vs random (dashed)")
        ax0.set_xlabel("drive amplitude a / σ")
        ax0.set_ylabel("amplitude at kθ (residual units)")
        ax0.legend(fontsize=6, ncol=2)
        ax1.set_title(f"two tones: bands {self.bands[0]}, {self.bands[1]}; intermodulation")
        ax1.set_xlabel("drive amplitude a / σ (each tone)")
        ax1.set_ylabel("amplitude (residual units)")
        ax1.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        return fig


def _ffn_stages(model: Model, layer: int) -> dict[str, Callable[[Tensor], Tensor]]:
    if not adapter.of(model).hooked_blocks or not hasattr(model, "blocks"):
        raise RopeInterpError(
            "ffn_harmonics calls blocks[layer].ln2 and .mlp directly: load the model as a HookedTransformer "
            "(rope_interp.load_model(..., bridge=False))"
        )
    block = model.blocks[layer]
    dt = next(model.parameters()).dtype

    def norm(x: Tensor) -> Tensor:
        return block.ln2(x.to(dt))

    return {"resid": lambda x: x, "mlp_in": norm, "mlp_out": lambda x: block.mlp(norm(x))}


def band_directions(model: Model, layer: int, head: int, bands: Sequence[int]) -> Float[Tensor, "d_model n"]:
    """Orthonormal basis (QR) of the residual directions ``ln1.w ⊙ W_Q[:, band dims]`` of ``head``, float64.

    Column ``2t, 2t + 1`` span band ``bands[t]``'s read directions (orthogonalised against earlier bands).

    >>> from rope_interp.model.testing import tiny_model
    >>> u = band_directions(tiny_model(), 0, 1, [2, 5])
    >>> tuple(u.shape), bool(torch.allclose(u.T @ u, torch.eye(4, dtype=torch.float64), atol=1e-10))
    ((32, 4), True)
    """
    spec = RotaryBands.from_model(model)
    w_q = model.W_Q[layer, head].detach().double()  # [d_model, d_head]
    w1 = getattr(model.blocks[layer].ln1, "w", None)
    if w1 is not None:
        w_q = w1.detach().double()[:, None] * w_q
    cols = torch.cat([w_q[:, spec.dims[b]] for b in bands], 1)
    return torch.linalg.qr(cols)[0]


def ffn_harmonics(
    model: Model,
    data: Any,
    *,
    layer: int,
    head: int = 0,
    band: int | None = None,
    second_band: int | None = None,
    a_rel: Sequence[float] = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0),
    n_pos: int = 256,
    harmonics: int = 4,
    skip: int = 4,
    seed: int = 0,
    window: int | None = None,
    progress: bool = True,
) -> FFNHarmonics:
    """Drive layer ``layer``'s ``ln2`` + MLP with a rotating input in ``head``'s band directions (and random ones).

    ``band`` / ``second_band`` default to the head's two highest-norm query bands (on ``data``) whose
    snapped frequencies give distinct, non-DC bins for all tracked harmonics and products.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> h = ffn_harmonics(tiny_model(), torch.randint(0, 50, (1, 32)), layer=0, band=0, second_band=1,
    ...                   n_pos=64, a_rel=[0.25, 0.5, 1.0], progress=False)
    >>> tuple(h.amp1.shape), tuple(h.amp2.shape)
    ((2, 3, 3, 4), (2, 3, 3, 6))
    """
    (layer,) = adapter.layers(model, layer)
    (head,) = adapter.heads(model, head)
    spec = RotaryBands.from_model(model)
    n_pos = positive_int("n_pos", n_pos, minimum=8)
    harmonics = positive_int("harmonics", harmonics, minimum=2)
    skip = positive_int("skip", skip, minimum=0)
    a = torch.tensor([float(finite("a_rel", x)) for x in a_rel], dtype=torch.float64)
    if len(a) < 2 or bool((a <= 0).any()) or bool((a.diff() <= 0).any()):
        raise ParameterError(f"a_rel must be >= 2 increasing positive amplitudes, got {list(a_rel)}")
    stages = _ffn_stages(model, layer)

    # operating point and band usage from real text
    sums: dict[str, Any] = {"x": 0.0, "xx": 0.0, "n": 0, "qn": 0.0}

    def on_resid(x: Tensor, hook: Any) -> Tensor:
        y = x[:, skip:].detach().double().flatten(0, 1)
        sums["x"] = sums["x"] + y.sum(0)
        sums["xx"] = sums["xx"] + y.square().sum()
        sums["n"] += y.shape[0]
        return x

    def on_q(q: Tensor, hook: Any) -> Tensor:
        b = q[:, skip:, head].detach().double()[..., spec.dims]  # [b, pos, band, 2]
        sums["qn"] = sums["qn"] + band_norms(b).sum((0, 1))
        return q

    hooks = [(resid_mid_hook(layer), on_resid), (attn_hook(layer, "rot_q"), on_q)]
    for tokens in windows(model, data, window, progress, "ffn harmonics"):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=layer + 1)
    if sums["n"] == 0:
        raise ParameterError(f"no position >= skip={skip} in the data: pass longer text or a smaller skip")
    n = sums["n"]
    x_bar = sums["x"] / n
    sigma = math.sqrt(max(float(sums["xx"] / n - x_bar.square().sum()), 0.0))
    theta = spec.freqs[layer].tolist()
    cyc = [round(t * n_pos / (2 * math.pi)) for t in theta]

    def fits(b: int) -> bool:
        try:
            check_tones(harmonic_tones(cyc[b], n_pos, harmonics), n_pos)
        except ParameterError:
            return False
        return cyc[b] >= 1

    order = [int(b) for b in torch.argsort(sums["qn"].cpu(), descending=True)]
    if band is None:
        ok = [b for b in order if fits(b)]
        if not ok:
            raise ParameterError(
                f"no band's frequency fits {harmonics} harmonics in n_pos={n_pos}: raise n_pos"
            )
        band = ok[0]
    (band,) = indices("band", band, spec.n_bands)
    if second_band is None:
        cands = [b for b in order if b != band and fits(b)]
        cands = [b for b in cands if _distinct(intermod_tones(cyc[band], cyc[b], n_pos), n_pos)]
        if not cands:
            raise ParameterError(f"no second band gives distinct intermodulation bins with n_pos={n_pos}")
        second_band = cands[0]
    (second_band,) = indices("band", second_band, spec.n_bands)
    if second_band == band:
        raise ParameterError(f"second_band must differ from band ({band})")
    h_tones = harmonic_tones(cyc[band], n_pos, harmonics)
    i_tones = intermod_tones(cyc[band], cyc[second_band], n_pos)
    if cyc[band] < 1 or cyc[second_band] < 1:
        raise ParameterError(
            f"bands {band}, {second_band} turn less than half a cycle in n_pos={n_pos}: pick higher-frequency bands"
        )
    check_tones(h_tones, n_pos)
    check_tones(i_tones, n_pos)

    d = x_bar.shape[0]
    g = torch.Generator().manual_seed(seed)
    bases = {
        "band": band_directions(model, layer, head, [band, second_band]).to(x_bar.device),
        "random": torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=torch.float64))[0].to(x_bar.device),
    }
    amps = a * sigma
    # the drive's norm is <= |x̄| + 2·a·σ (two tones); RMSNorm squares it: keep its square finite in the model dtype
    mdt = next(model.parameters()).dtype
    top, big = float(x_bar.norm()) + 2 * float(amps[-1]), math.sqrt(torch.finfo(mdt).max)
    if not top < big:
        limit = (big - float(x_bar.norm())) / (2 * sigma) if sigma > 0 else math.inf
        raise ParameterError(
            f"a_rel up to {float(a[-1]):g} gives a drive of norm {top:.3g} (sigma={sigma:.3g}) whose square "
            f"overflows {str(mdt).removeprefix('torch.')}: pass a_rel below {max(limit, 0.0):.3g}"
        )
    one, two = [], []
    with torch.no_grad():
        for dname in DIRS:
            u = bases[dname].T.reshape(2, 2, d)  # [tone, (u, v), d]
            one.append(drive_response(stages, x_bar, u[:1], [cyc[band]], n_pos, amps, h_tones))
            two.append(drive_response(stages, x_bar, u, [cyc[band], cyc[second_band]], n_pos, amps, i_tones))
    for name, r in (("one-tone", one), ("two-tone", two)):
        if not all(bool(torch.isfinite(x).all()) for x in r):
            raise ParameterError(
                f"the {name} response at a_rel={list(a.tolist())} is not finite (the MLP overflowed): "
                "pass smaller a_rel values"
            )
    return FFNHarmonics(
        layer,
        head,
        (band, second_band),
        (2 * math.pi * cyc[band] / n_pos, 2 * math.pi * cyc[second_band] / n_pos),
        (cyc[band], cyc[second_band]),
        n_pos,
        a.float(),
        sigma,
        h_tones,
        i_tones,
        torch.stack(one).cpu().float(),
        torch.stack(two).cpu().float(),
    )


def _distinct(tones: Sequence[Tone], n_pos: int) -> bool:
    try:
        check_tones(tones, n_pos)
    except ParameterError:
        return False
    return True


CAN_AND_CANNOT = (
    "Ruscio et al. v1/v2's harmonic claim (dropped in v3/v4), tested our way: layer L's RMSNorm + MLP is driven "
    "with x̄ + a(cos θm u + sin θm v), u, v spanning the residual directions W_Q reads into one band of one head "
    "(dashed: a random pair), θ snapped to an exact DFT bin. It can show whether this FFN makes harmonics and "
    "intermodulation products from a rotating input, how they grow with a (slope k for the k-th harmonic "
    "means a smooth nonlinearity in its polynomial regime) and how much is the MLP's doing beyond the norm's. "
    "It cannot show that such a rotating input occurs on real text (see the carrier detector), nor what later "
    "layers do with the harmonics."
)


def report_section(result: FFNHarmonics) -> list:
    """Items for the report page: the can/cannot text, slopes and levels, the figure, the table at max ``a``.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> h = ffn_harmonics(tiny_model(), torch.randint(0, 50, (1, 32)), layer=0, band=0, second_band=1,
    ...                   n_pos=64, a_rel=[0.25, 0.5, 1.0], progress=False)
    >>> [type(x).__name__ for x in report_section(h)]
    ['str', 'str', 'Figure', 'DataFrame']
    """
    import matplotlib.pyplot as plt

    s = result.summary()
    found = ", ".join(f"{k} = {v}" for k, v in s.items() if "slope" in k or "rel_" in k)
    fig = result.plot()
    plt.close(fig)
    df = result.to_dataframe()
    top = df[(df.a_over_sigma == df.a_over_sigma.max()) & (df.stage != "resid")]
    return [
        f"<p>{html.escape(CAN_AND_CANNOT)}</p>",
        f"<p>Layer {result.layer}, head {result.head}, bands {result.bands} (θ = "
        f"{result.theta[0]:.3f}, {result.theta[1]:.3f} rad/token), σ = {result.sigma:.3g}: "
        f"{html.escape(found)}.</p>",
        fig,
        top.pivot_table(
            index=["drive", "dirs", "freq"], columns="stage", values="rel_fundamental"
        ).reset_index(),
    ]


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
@dataclass
class HarmonicsResult:
    """What the registered ``harmonics`` analysis returns: the experiment, or why it could not run."""

    result: FFNHarmonics | None
    skipped: str = ""

    def to_dataframe(self):
        import pandas as pd

        return self.result.to_dataframe() if self.result is not None else pd.DataFrame()


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list) -> HarmonicsResult:
    layers = layer_list(ctx.model, ctx.layers)
    layer = opts["layer"] if opts["layer"] is not None else layers[len(layers) // 2]
    try:
        r = ffn_harmonics(
            ctx.model,
            text_tokens(ctx.model, ctx.data, opts["n_tokens"]),
            layer=layer,
            head=opts["head"],
            a_rel=opts["a_rel"],
            n_pos=opts["n_pos"],
            window=ctx.window,
            progress=ctx.progress,
        )
    except ParameterError as e:  # e.g. no band's frequency fits the harmonics in n_pos
        return HarmonicsResult(None, str(e))
    return HarmonicsResult(r)


def _summary(r: HarmonicsResult) -> dict[str, Any]:
    if r.result is None:
        return {"skipped": r.skipped}
    h = r.result
    sl, gen, rel = h.slopes(), h.generation(), h.rel()
    return {
        "layer": h.layer,
        "head": h.head,
        "bands": list(h.bands),
        "n_pos": h.n_pos,
        "sigma": round(h.sigma, 4),
        "harmonics": [
            {
                "dirs": dname,
                "harmonic": k + 1,
                "slope": round(float(sl[d, k]), 3),
                "rel_at_max_a": float(f"{float(rel[d, -1, k]):.4g}"),
                "generation_at_max_a": float(f"{float(gen[d, -1, k]):.4g}"),
            }
            for d, dname in enumerate(DIRS)
            for k in range(1, len(h.harmonics))
        ],
    }


def _findings(r: HarmonicsResult) -> list[str]:
    if r.result is None:
        return [f"FFN harmonics: not run ({r.skipped})."]
    h = r.result
    sl, rel = h.slopes(), h.rel()
    return [
        f"FFN harmonics (Ruscio et al. v1/v2 claim, our drive): layer {h.layer}'s MLP driven at band {h.bands[0]} of "
        f"head {h.head} at a = {float(h.a_rel[-1]):g}σ puts {float(rel[0, -1, 1]):.3g} of the fundamental at 2θ and "
        f"{float(rel[0, -1, 2]):.3g} at 3θ (random directions: {float(rel[1, -1, 1]):.3g}, {float(rel[1, -1, 2]):.3g}); "
        f"small-a log-log slopes {float(sl[0, 1]):.2f} and {float(sl[0, 2]):.2f} (a polynomial regime gives 2 and 3)."
    ]


def _section(r: HarmonicsResult) -> list:
    if r.result is None:
        return [
            (None, f"<p>{html.escape(CAN_AND_CANNOT)}</p>"),
            (None, f"<p>Not run: {html.escape(r.skipped)}</p>"),
        ]
    return as_blocks(report_section(r.result))


ANALYSIS = Analysis(
    name="harmonics",
    title="Harmonics in the FFN (Ruscio et al. v1/v2 claim)",
    help="Drive one layer's norm + MLP with a rotating input in a head's band directions: harmonics, "
    "intermodulation, slopes",
    description=(
        "Our test of Ruscio et al.'s v1/v2 harmonic claim: layer L's ln2 + MLP fed x̄ + a(cos θm u + sin θm v), "
        "x̄ the mean residual over the text, u, v the directions W_Q reads into one band of one head (or random), "
        "θ snapped to an exact DFT bin; amplitudes at kθ and at intermodulation products against a."
    ),
    finish=_finish,
    options=(
        Option("layer", int, None, "layer driven (None: the middle analysed layer)", minimum=0),
        Option("head", int, 0, "head whose band directions are driven", minimum=0),
        Option("n_pos", int, 256, "positions of the synthetic drive", minimum=8),
        Option(
            "a_rel",
            float,
            [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0],
            "drive amplitudes, multiples of σ",
            many=True,
            minimum=1e-9,
        ),
        Option(
            "n_tokens", int, 512, "first tokens of the text for the operating point x̄ (0: all)", minimum=0
        ),
    ),
    summary=_summary,
    summary_doc={
        "skipped": "why the experiment did not run (only then)",
        "layer": "layer driven",
        "head": "head whose band directions are driven",
        "bands": "the two bands (first: single tone; both: intermodulation)",
        "n_pos": "positions of the drive",
        "sigma": "typical residual deviation σ that a is a multiple of",
        "harmonics": "records: dirs (band / random), harmonic k, slope (log-log, small a), rel_at_max_a "
        "(A_k/A_1 at the MLP output), generation_at_max_a (MLP output rel / MLP input rel)",
    },
    findings=_findings,
    tables=lambda r: {"ffn_harmonics": r.to_dataframe()} if r.result is not None else {},
    section=_section,
)
