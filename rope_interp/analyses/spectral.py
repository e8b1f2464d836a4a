"""Spectra over positions: band trajectories, attention rows, MLP activations; an observational phase alignment.

arXiv 2410.18067 (Ruscio et al.) is two papers under one ID (``/work/shared/SCIENCE.md``):
**v1/v2** (Oct 2024, "Beyond position: how rotary embeddings shape representations and
memory") claim that FFN nonlinearities make harmonics of RoPE's oscillations and that q–k
phase alignment sharpens attention, for a model that rotates the token embedding itself;
**v3/v4** (ACL 2025, "Beyond Position: the emergence of wavelet-like properties in
Transformers") drop both claims and measure attention heads as wavelets. Each measure
below says which it follows, or that it is ours, and what it can and cannot show
(:data:`PROVENANCE`). The faithful tests of the v1/v2 claims live in :mod:`.carrier`,
:mod:`.harmonics` and :mod:`.alignment`.

* :func:`band_spectra` — **ours** (a sanity check): PSD over positions of each band's
  post-RoPE q/k trajectory ``x0 + i·x1`` (Hann window, zero padding). A band whose
  pre-rotation vector is steady peaks at its own ``θ_i`` — true by construction, so it
  shows RoPE is wired as expected and nothing about either paper's claims.
* :func:`attention_spectra` — **v3/v4** style: PSD (Hann) of attention rows over key
  positions; energy in the low (0–0.25), mid (0.25–0.75) and high (0.75–1) fractions of
  Nyquist (these cut points are ours; the paper's split is not verified here); positional
  entropy ``H_p`` vs spectral entropy ``H_s`` and their correlation (the paper reports ρ
  between −0.42 and −0.74; not verified by us).
* :func:`mlp_spectra` — **ours**, kept for the report; *not* a test of v1/v2's harmonic
  claim. PSD of MLP pre/post activations over natural text and power at ``k·θ_i`` over the
  local median. In a Llama-style model no θ_i carrier enters the MLP on text (see
  :mod:`.carrier`), so a missing "harmonic" mostly reports a missing fundamental; pre and
  post are tested separately rather than as generation; the first-position massive
  activation raises the floor. Use :func:`.harmonics.ffn_harmonics` for the claim.
* :func:`phase_alignment` — **ours**, kept for the report; *not* a test of v1/v2's alignment
  claim: an unweighted mean over all causal keys of ``cos`` of the q–k band angle (no norms,
  sink included) correlated with raw entropy and max weight across queries. Both sides
  depend on absolute position, the sink dominates the max weight and ignored keys dominate
  the mean, so a correlation near 0 says little. Use :func:`.alignment.causal_alignment`.

PSD bins are in radians per token ``2πf/nfft``.
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

from ..errors import ParameterError
from ..model import adapter
from ..model.hooks import attn_hook, mlp_hook, per_device
from ..model.layout import RotaryBands
from .inputs import figure, heatmap, layer_head_band_frame, layer_list, prefix_mean, qk_pair_hooks, windows

THIRDS = ((0.0, 0.25), (0.25, 0.75), (0.75, 1.0 + 1e-9))

PROVENANCE: dict[str, dict[str, str]] = {
    "band_spectra": {
        "follows": "ours (sanity check)",
        "can": "show each band's post-RoPE trajectory peaks at θ_i, i.e. RoPE is applied as the spec says",
        "cannot": "say anything about harmonics, alignment or wavelets: the peak is there by construction",
    },
    "attention_spectra": {
        "follows": "arXiv 2410.18067 v3/v4 (ACL 2025), with our own 0.25/0.75-of-Nyquist cut points",
        "can": "show how attention-row energy splits over frequency per layer/head and how H_p and H_s co-vary",
        "cannot": "show wavelet-like multi-resolution processing by itself, nor reproduce the paper's exact numbers",
    },
    "mlp_spectra": {
        "follows": "ours; not the v1/v2 harmonic test (see carrier_survey, ffn_harmonics)",
        "can": "show whether MLP activations over text have power at k·θ_i above the local median",
        "cannot": "test harmonic generation: on text no θ_i carrier enters the MLP of a Llama-style model",
    },
    "phase_alignment": {
        "follows": "ours; not the v1/v2 alignment test (see causal_alignment)",
        "can": "show an unweighted q-k band-angle cosine and its correlation with sharpness across queries",
        "cannot": "show that alignment sharpens attention: position confounds both sides, the sink and ignored keys "
        "dominate, and correlation is not cause",
    },
}
"""Which paper version each measure here follows (or that it is ours), and what it can and cannot show."""


def provenance_html(name: str) -> str:
    """One HTML paragraph for the report: which version ``name`` follows, what it can and cannot show.

    >>> provenance_html("phase_alignment")[:60]
    '<p><b>phase_alignment</b> follows: ours; not the v1/v2 align'
    """
    if name not in PROVENANCE:
        raise ParameterError(f"no provenance for {name!r}; known measures: {sorted(PROVENANCE)}")
    p = PROVENANCE[name]
    return (
        f"<p><b>{html.escape(name)}</b> follows: {html.escape(p['follows'])}. It can {html.escape(p['can'])}; "
        f"it cannot {html.escape(p['cannot'])}.</p>"
    )


def _nfft(n: int) -> int:
    return 1 << max(1, (2 * n - 1).bit_length())


def psd(
    x: Float[Tensor, "... pos"], nfft: int | None = None, onesided: bool = True
) -> Float[Tensor, "... freq"]:
    """``|FFT|²`` of ``x`` (real or complex) along the last axis, Hann-windowed, zero padded to ``nfft``
    (default: the next power of two ≥ 2·len). One-sided (``rfft``) for real input when ``onesided``.

    >>> import torch, math
    >>> p = psd(torch.cos(0.5 * torch.arange(64.0)), nfft=256)
    >>> round(float(p.argmax()) * 2 * math.pi / 256, 2)
    0.49
    """
    n = x.shape[-1]
    nfft = nfft or _nfft(n)
    w = torch.hann_window(n, periodic=False, dtype=x.real.dtype, device=x.device)
    if x.is_complex() or not onesided:
        return torch.fft.fft(x * w, n=nfft).abs().square()
    return torch.fft.rfft(x * w, n=nfft).abs().square()


def corr_from_sums(s: Float[Tensor, "6 ..."]) -> Float[Tensor, "..."]:
    """Pearson correlation from streaming sums ``[n, Σx, Σy, Σx², Σy², Σxy]``."""
    n, sx, sy, sxx, syy, sxy = s
    cov = sxy / n - sx * sy / n**2
    vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
    return cov / (vx * vy).clamp_min(1e-30).sqrt()


def _add_sums(acc: Tensor, x: Tensor, y: Tensor, dims: tuple[int, ...]) -> None:
    acc += torch.stack(
        [
            torch.ones_like(x).sum(dims),
            x.sum(dims),
            y.sum(dims),
            (x * x).sum(dims),
            (y * y).sum(dims),
            (x * y).sum(dims),
        ]
    ).to(acc.device)


# ---- per-band q/k trajectories ---------------------------------------------------------------------------
@dataclass
class BandSpectra:
    """PSD of band trajectories, averaged over heads and windows: ``[layer, band, freq]`` (bins over 0..2π)."""

    psd_q: Float[Tensor, "layer band freq"]
    psd_k: Float[Tensor, "layer band freq"]
    theta: Float[Tensor, "layer band"]
    layers: list[int]
    nfft: int
    n_windows: int

    @property
    def omega(self) -> Float[Tensor, " freq"]:
        """Bin frequencies in rad/token, wrapped to (−π, π]."""
        w = torch.arange(self.nfft) * 2 * math.pi / self.nfft
        return torch.where(w > math.pi, w - 2 * math.pi, w)

    def peak(self, site: str = "q") -> Float[Tensor, "layer band"]:
        """Frequency (rad/token) of each band's spectral peak."""
        return self.omega[(self.psd_q if site == "q" else self.psd_k).argmax(-1)]

    def to_dataframe(self):
        import pandas as pd

        pq, pk = self.peak("q"), self.peak("k")
        rows = [
            {
                "layer": layer,
                "band": b,
                "theta": float(self.theta[i, b]),
                "peak_q": float(pq[i, b]),
                "peak_k": float(pk[i, b]),
                "resolution": 2 * math.pi / self.nfft,
            }
            for i, layer in enumerate(self.layers)
            for b in range(self.theta.shape[1])
        ]
        return pd.DataFrame(rows)

    def plot(self, layer: int | None = None):
        i = 0 if layer is None else self.layers.index(layer)
        fig, (ax0, ax1) = figure(2, width=6.0, height=4.2)
        order = torch.argsort(self.omega)
        heatmap(
            ax0,
            (self.psd_q[i][:, order] + 1e-30).log10(),
            f"layer {self.layers[i]}: log10 PSD of q bands",
            "frequency bin (sorted, −π..π)",
            "band (0 = highest frequency)",
        )
        ax1.plot(self.theta[i].numpy(), self.peak("q")[i].numpy(), "o", label="q")
        ax1.plot(self.theta[i].numpy(), self.peak("k")[i].numpy(), "x", label="k")
        ax1.plot([0, float(self.theta.max())], [0, float(self.theta.max())], "k--", lw=1, label="peak = θ_i")
        ax1.set_title("spectral peak vs band frequency")
        ax1.set_xlabel("θ_i (rad/token)")
        ax1.set_ylabel("peak frequency (rad/token)")
        ax1.legend()
        fig.tight_layout()
        return fig


def band_spectra(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    nfft: int | None = None,
    progress: bool = True,
) -> BandSpectra:
    """PSD over positions of each band's complex trajectory ``x0 + i x1`` (post-RoPE q and k). Ours: a sanity check.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = band_spectra(tiny_model(), torch.randint(0, 50, (1, 32)), nfft=64, progress=False)
    >>> tuple(s.psd_q.shape)
    (2, 8, 64)
    """
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    acc: dict[str, Tensor] = {}
    state = {"nfft": nfft, "n": 0}

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        for name, x in (("q", q), ("k", k)):
            z = torch.complex(x[..., 0].double(), x[..., 1].double()).movedim(1, -1)  # [b, h, B, pos]
            p = psd(z, state["nfft"]).mean((0, 1))
            key = (name, layers.index(layer))
            acc[key] = acc[key] + p if key in acc else p

    hooks = qk_pair_hooks(model, layers, on_pair)
    for tokens in windows(model, data, window, progress, "band spectra"):
        n = tokens.shape[1]
        state["nfft"] = state["nfft"] or _nfft(n)
        if n > state["nfft"]:
            raise ValueError(f"window of {n} tokens is longer than nfft={state['nfft']}; pass a larger nfft")
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
        state["n"] += 1
    stack = lambda s: torch.stack([acc[s, i] for i in range(len(layers))]).cpu().float() / state["n"]  # noqa: E731
    return BandSpectra(
        stack("q"), stack("k"), spec.freqs[layers].float(), layers, int(state["nfft"]), state["n"]
    )


# ---- attention rows --------------------------------------------------------------------------------------
@dataclass
class AttentionSpectra:
    """Per layer × head: mean energy fractions (low, mid, high) of attention-row PSDs and the H_p–H_s link."""

    energy: Float[Tensor, "layer head 3"]
    h_pos: Float[Tensor, "layer head"]
    h_spec: Float[Tensor, "layer head"]
    rho: Float[Tensor, "layer head"]
    layers: list[int]
    n_rows: int

    def rho_across_heads(self) -> Float[Tensor, " layer"]:
        """Per layer, the correlation over heads of mean H_p and mean H_s."""
        x, y = self.h_pos, self.h_spec
        xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
        return (xc * yc).sum(1) / ((xc.square().sum(1) * yc.square().sum(1)).sqrt().clamp_min(1e-30))

    def to_dataframe(self):
        import pandas as pd

        rows = [
            {
                "layer": layer,
                "head": h,
                "low": float(self.energy[i, h, 0]),
                "mid": float(self.energy[i, h, 1]),
                "high": float(self.energy[i, h, 2]),
                "H_p": float(self.h_pos[i, h]),
                "H_s": float(self.h_spec[i, h]),
                "rho_rows": float(self.rho[i, h]),
            }
            for i, layer in enumerate(self.layers)
            for h in range(self.energy.shape[1])
        ]
        return pd.DataFrame(rows)

    def plot(self):
        fig, (ax0, ax1) = figure(2, width=6.0, height=4.2)
        e = self.energy.mean(1)
        for j, name in enumerate(("low 0–0.25", "mid 0.25–0.75", "high 0.75–1")):
            ax0.plot(self.layers, e[:, j].numpy(), marker="o", label=name)
        ax0.set_title("attention-row PSD energy (fraction of Nyquist)")
        ax0.set_xlabel("layer")
        ax0.set_ylabel("mean energy share")
        ax0.legend()
        ax1.scatter(self.h_pos.flatten().numpy(), self.h_spec.flatten().numpy(), s=8)
        ax1.set_title("per head: positional vs spectral entropy")
        ax1.set_xlabel("H_p (normalised)")
        ax1.set_ylabel("H_s (normalised)")
        fig.tight_layout()
        return fig


def _entropy(p: Tensor, dim: int = -1) -> Tensor:
    p = p / p.sum(dim, keepdim=True).clamp_min(1e-30)
    return -(p * p.clamp_min(1e-30).log()).sum(dim)


def row_spectrum_stats(rows: Float[Tensor, "... k_pos"]) -> tuple[Tensor, Tensor, Tensor]:
    """Energy fractions ``[..., 3]``, normalised positional entropy and spectral entropy of attention rows.

    >>> import torch
    >>> e, hp, hs = row_spectrum_stats(torch.full((1, 64), 1 / 64))
    >>> float(e[0, 0]) > 0.99, round(float(hp[0]), 3)
    (True, 1.0)
    """
    n = rows.shape[-1]
    p = psd(rows.double())
    frac = torch.arange(p.shape[-1], device=p.device, dtype=torch.float64) / (p.shape[-1] - 1)
    total = p.sum(-1, keepdim=True).clamp_min(1e-30)
    energy = torch.stack([(p * ((frac >= a) & (frac < b))).sum(-1) for a, b in THIRDS], -1) / total
    h_pos = _entropy(rows.double()) / math.log(max(n, 2))
    h_spec = _entropy(p) / math.log(p.shape[-1])
    return energy, h_pos, h_spec


def attention_spectra(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    min_row: int = 32,
    row_stride: int = 8,
    progress: bool = True,
) -> AttentionSpectra:
    """Energy split and entropies of attention-row spectra for every ``row_stride``-th query ``>= min_row``.

    Follows Ruscio et al. v3/v4 (ACL 2025) with our own cut points (see :data:`PROVENANCE`).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> a = attention_spectra(tiny_model(), torch.randint(0, 50, (1, 40)), min_row=8, progress=False)
    >>> tuple(a.energy.shape), a.n_rows
    ((2, 4, 3), 4)
    """
    layers = layer_list(model, layers)
    H, dev = adapter.n_heads(model), adapter.device(model)
    energy = torch.zeros(len(layers), H, 3, dtype=torch.float64, device=dev)
    sums = torch.zeros(6, len(layers), H, dtype=torch.float64, device=dev)

    def on_pattern(pat: Tensor, hook: Any, i: int) -> Tensor:
        for m in range(min_row, pat.shape[-2], row_stride):
            e, hp, hs = row_spectrum_stats(pat[:, :, m, : m + 1])
            energy[i] += e.sum(0).to(dev)
            _add_sums(sums[:, i], hp, hs, (0,))
        return pat

    hooks = [
        (attn_hook(layer, "pattern"), lambda p, hook, i=i: on_pattern(p, hook, i))
        for i, layer in enumerate(layers)
    ]
    for tokens in windows(model, data, window, progress, "attention spectra"):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
    n = sums[0, 0, 0].item() if len(layers) else 0
    if n == 0:
        raise ValueError(
            f"no query row at position >= min_row={min_row}: use longer windows or a smaller min_row"
        )
    s = sums.cpu()
    return AttentionSpectra(
        (energy.cpu() / n).float(),
        (s[1] / n).float(),
        (s[2] / n).float(),
        corr_from_sums(s).float(),
        layers,
        int(n),
    )


# ---- MLP activations ------------------------------------------------------------------------------------
@dataclass
class MLPSpectra:
    """Mean per-neuron PSD of MLP pre/post activations ``[layer, 2 (pre, post), freq]`` (one-sided, 0..π).

    Our own measure, not a test of Ruscio et al. v1/v2's harmonic claim: see :data:`PROVENANCE`.
    """

    psd: Float[Tensor, "layer site freq"]
    theta: Float[Tensor, "layer band"]
    layers: list[int]
    nfft: int
    harmonics: int = 3
    min_cycles: float = 4.0
    window_len: int = 0

    @property
    def omega(self) -> Float[Tensor, " freq"]:
        return torch.arange(self.psd.shape[-1]) * 2 * math.pi / self.nfft

    def harmonic_table(self, peak_ratio: float = 3.0, half_width: int = 8):
        """Power at ``k·θ_i`` over the median of the neighbouring bins, for resolvable bands."""
        import pandas as pd

        rows = []
        F = self.psd.shape[-1]
        for i, layer in enumerate(self.layers):
            for b, th in enumerate(self.theta[i].tolist()):
                if th * self.harmonics > math.pi or th * self.window_len < 2 * math.pi * self.min_cycles:
                    continue
                for s, site in enumerate(("pre", "post")):
                    p = self.psd[i, s]
                    for k in range(1, self.harmonics + 1):
                        j = round(k * th * self.nfft / (2 * math.pi))
                        lo, hi = max(0, j - half_width), min(F, j + half_width + 1)
                        ref = torch.cat([p[lo : max(lo, j - 2)], p[min(hi, j + 3) : hi]])
                        ratio = float(p[j] / ref.median().clamp_min(1e-30)) if ref.numel() else float("nan")
                        rows.append(
                            {
                                "layer": layer,
                                "site": site,
                                "band": b,
                                "theta": th,
                                "harmonic": k,
                                "omega": k * th,
                                "power_ratio": ratio,
                                "peak": ratio > peak_ratio,
                            }
                        )
        return pd.DataFrame(rows)

    def to_dataframe(self):
        return self.harmonic_table()

    def plot(self, layer: int | None = None):
        i = 0 if layer is None else self.layers.index(layer)
        fig, (ax,) = figure(1, width=7.0, height=4.2)
        for s, site in enumerate(("pre", "post")):
            ax.semilogy(self.omega.numpy(), self.psd[i, s].numpy(), label=f"hook_{site}")
        for th in self.theta[i].tolist():
            if th * self.window_len >= 2 * math.pi * self.min_cycles and th <= math.pi:
                ax.axvline(th, color="grey", lw=0.4)
        ax.set_title(f"layer {self.layers[i]}: mean neuron PSD on text (ours; grey: θ_i)")
        ax.set_xlabel("frequency (rad/token)")
        ax.set_ylabel("power")
        ax.legend()
        fig.tight_layout()
        return fig


def mlp_spectra(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    nfft: int | None = None,
    harmonics: int = 3,
    progress: bool = True,
) -> MLPSpectra:
    """Mean PSD over neurons of MLP pre/post activations (each neuron's mean over positions removed).

    Ours; on text it mostly reports that no θ_i fundamental reaches the MLP (see :data:`PROVENANCE`).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = mlp_spectra(tiny_model(), torch.randint(0, 50, (1, 32)), nfft=64, progress=False)
    >>> tuple(s.psd.shape)
    (2, 2, 33)
    """
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    acc: dict[tuple[int, int], Tensor] = {}
    state = {"nfft": nfft, "n": 0, "len": 0}

    def fn(x: Tensor, hook: Any, key: tuple[int, int]) -> Tensor:
        y = x.detach().double()
        y = (y - y.mean(1, keepdim=True)).movedim(1, -1)  # [b, d_mlp, pos]
        p = psd(y, state["nfft"]).mean((0, 1))
        acc[key] = acc[key] + p if key in acc else p
        return x

    hooks = [
        (mlp_hook(layer, site), lambda x, hook, k=(i, s): fn(x, hook, k))
        for i, layer in enumerate(layers)
        for s, site in enumerate(("pre", "post"))
    ]
    for tokens in windows(model, data, window, progress, "mlp spectra"):
        n = tokens.shape[1]
        state["nfft"] = state["nfft"] or _nfft(n)
        state["len"] = max(state["len"], n)
        if n > state["nfft"]:
            raise ValueError(f"window of {n} tokens is longer than nfft={state['nfft']}; pass a larger nfft")
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
        state["n"] += 1
    out = torch.stack([torch.stack([acc[i, s] for s in range(2)]) for i in range(len(layers))]).cpu().float()
    return MLPSpectra(
        out / state["n"],
        spec.freqs[layers].float(),
        layers,
        int(state["nfft"]),
        harmonics,
        window_len=state["len"],
    )


# ---- phase alignment -------------------------------------------------------------------------------------
@dataclass
class PhaseAlignment:
    """Per layer × head × band: mean q–k phase alignment and its correlation over queries with
    the attention entropy and max weight.

    Our own observational measure, not a test of Ruscio et al. v1/v2's alignment claim (position
    confounds both sides; the sink and ignored keys dominate): see :data:`PROVENANCE` and
    :func:`rope_interp.analyses.causal_alignment`.
    """

    alignment: Float[Tensor, "layer head band"]
    corr_entropy: Float[Tensor, "layer head band"]
    corr_max: Float[Tensor, "layer head band"]
    layers: list[int]
    n_queries: int

    def to_dataframe(self):
        cols = {
            "alignment": self.alignment,
            "corr_entropy": self.corr_entropy,
            "corr_max_weight": self.corr_max,
        }
        return layer_head_band_frame(self.layers, cols)

    def plot(self):
        fig, axes = figure(2, width=5.5, height=4.2)
        heatmap(
            axes[0],
            self.corr_entropy.mean(1),
            "corr(alignment, entropy), head mean (ours, observational)",
            "band (0 = highest frequency)",
            "layer position",
            cmap="coolwarm",
            vmin=-1,
            vmax=1,
        )
        heatmap(
            axes[1],
            self.corr_max.mean(1),
            "corr(alignment, max weight), head mean (ours, observational)",
            "band (0 = highest frequency)",
            "layer position",
            cmap="coolwarm",
            vmin=-1,
            vmax=1,
        )
        fig.tight_layout()
        return fig


def phase_alignment(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    start_pos: int = 1,
    progress: bool = True,
) -> PhaseAlignment:
    """Per band ``mean_n cos(angle(q_i(m)) − angle(k_i(n)))`` over causal keys, vs attention sharpness.

    Ours and observational (see :data:`PROVENANCE`); the causal test is :func:`.alignment.causal_alignment`.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> p = phase_alignment(tiny_model(), torch.randint(0, 50, (1, 16)), progress=False)
    >>> tuple(p.corr_entropy.shape), p.n_queries
    ((2, 4, 8), 15)
    """
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    dev = adapter.device(model)
    L, H, B = len(layers), spec.n_heads, spec.n_bands
    s_ent = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
    s_max = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
    held: dict[int, Tensor] = {}
    kv_on = per_device(spec.kv_map, dev)

    def unit(x: Tensor) -> Tensor:
        z = torch.complex(x[..., 0].double(), x[..., 1].double())
        return z / z.abs().clamp_min(1e-30)

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        uk = unit(k[:, :, kv_on(k.device)])
        held[layer] = (unit(q) * prefix_mean(uk).conj()).real[:, start_pos:]  # [b, m, h, B]

    def on_pattern(pat: Tensor, hook: Any, layer: int) -> Tensor:
        a = held.pop(layer)
        p = pat[:, :, start_pos:].double()
        ent = _entropy(p).transpose(1, 2)[..., None].expand_as(a)  # [b, m, h, B]
        mx = p.amax(-1).transpose(1, 2)[..., None].expand_as(a)
        i = layers.index(layer)
        _add_sums(s_ent[:, i], a, ent, (0, 1))
        _add_sums(s_max[:, i], a, mx, (0, 1))
        return pat

    hooks = qk_pair_hooks(model, layers, on_pair) + [
        (attn_hook(layer, "pattern"), lambda p, hook, layer=layer: on_pattern(p, hook, layer))
        for layer in layers
    ]
    for tokens in windows(model, data, window, progress, "phase alignment"):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
    se, sm = s_ent.cpu(), s_max.cpu()
    n = int(se[0, 0, 0, 0])
    if n == 0:
        raise ValueError(f"no query at position >= start_pos={start_pos}")
    return PhaseAlignment(
        (se[1] / n).float(), corr_from_sums(se).float(), corr_from_sums(sm).float(), layers, n
    )
