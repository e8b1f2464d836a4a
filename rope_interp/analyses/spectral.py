"""Spectra over positions: band trajectories, attention rows, MLP activations; an observational phase alignment.

arXiv 2410.18067 (Ruscio et al.) is two papers under one ID:
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

Each measure is an :class:`~rope_interp.analyses.stream.Accumulator` (``BandSpectraAccumulator``...);
its public function is that accumulator fed by :func:`~rope_interp.analyses.stream.run_pass`, and the
registered ``spectrum`` analysis (:data:`ANALYSIS`, the report's section) runs the chosen ones in the
shared pass. The pure signal helpers (``psd``, ``row_spectrum_stats``...) live in :mod:`.signal`.
PSD bins are in radians per token ``2πf/nfft``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MergeError, ParameterError
from ..model import adapter
from ..model.hooks import FwdHooks, attn_hook, mlp_hook, per_device
from ..model.kind import Model
from ..model.layout import RotaryBands
from .inputs import figure, heatmap, layer_head_band_frame, layer_list, prefix_mean
from .registry import Analysis, Block, Option, RunContext, literal_choices
from .signal import _add_sums, _entropy, _nfft, corr_from_sums, psd, row_spectrum_stats
from .stream import Accumulator, run_pass

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


# ---- accumulators merge by adding their sums -----------------------------------------------------------
class _SumsMerge(Accumulator):
    """Merge by adding every tensor / number attribute listed in ``_sums``."""

    _sums: tuple[str, ...] = ()

    def merge(self, other: Any) -> Any:
        self.check_merge(other, "layers")
        mine, theirs = getattr(self, "nfft", None), getattr(other, "nfft", None)
        if mine and theirs and mine != theirs:
            raise MergeError(
                f"cannot merge {type(self).__name__} computed with nfft={theirs} into one with nfft={mine}: "
                "pass the same nfft (or the same first window) to both"
            )
        if not mine and theirs:
            self.nfft = theirs
        for name in self._sums:
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a[k] + v if k in a else v
            else:
                setattr(self, name, a + b)
        return self


class _PSDSums(_SumsMerge):
    """Summed PSDs by key (their layer first) and the windows counted; the FFT length is fixed by the first
    window (:meth:`configure`) and every window must fit in it."""

    _sums = ("acc", "n")

    def __init__(self, model: Model, layers: list[int], nfft: int | None = None):
        self.layers = list(layers)
        self.theta = RotaryBands.from_model(model).freqs[self.layers].float()
        self.nfft, self.n, self.len = nfft, 0, 0
        self.acc: dict[tuple[Any, ...], Tensor] = {}

    def configure(self, tokens: Tensor) -> None:
        self.nfft = self.nfft or _nfft(tokens.shape[1])  # from the stream's first window, on every rank

    def accepts(self, tokens: Tensor) -> bool:
        n = tokens.shape[1]
        self.nfft = self.nfft or _nfft(n)
        self.len = max(self.len, n)
        if n > self.nfft:
            raise ValueError(f"window of {n} tokens is longer than nfft={self.nfft}; pass a larger nfft")
        return True

    def _add(self, key: tuple[Any, ...], p: Tensor) -> None:
        self.acc[key] = self.acc[key] + p if key in self.acc else p

    def _on_cpu(self, key: tuple[Any, ...]) -> Tensor:
        return self.acc[key].cpu()  # per-layer sums live on their layer's device (a model split over GPUs)

    def observe(self, tokens: Tensor) -> None:
        self.n += 1

    def merge(self, other: Any) -> Any:
        self.len = max(self.len, other.len)
        return super().merge(other)


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
    model: Model,
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
    acc = BandSpectraAccumulator(model, layer_list(model, layers), nfft=nfft)
    run_pass(model, data, [acc], window=window, progress=progress, desc="band spectra")
    return acc.finalize()


class BandSpectraAccumulator(_PSDSums):
    """The state of :func:`band_spectra` in a (shared) pass: per layer, the summed PSDs of q and k bands."""

    def __init__(self, model: Model, layers: list[int], nfft: int | None = None):
        super().__init__(model, layers, nfft)
        self.pair_layers = self.layers

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        for name, x in (("q", q), ("k", k)):
            z = torch.complex(x[..., 0].double(), x[..., 1].double()).movedim(1, -1)  # [b, h, B, pos]
            self._add((name, self.layers.index(layer)), psd(z, self.nfft).mean((0, 1)))

    def finalize(self) -> BandSpectra:
        def stack(s: str) -> Tensor:
            return torch.stack([self._on_cpu((s, i)) for i in range(len(self.layers))]).float() / self.n

        return BandSpectra(stack("q"), stack("k"), self.theta, self.layers, int(self.nfft or 0), self.n)


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


def attention_spectra(
    model: Model,
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
    acc = AttentionSpectraAccumulator(
        model, layer_list(model, layers), min_row=min_row, row_stride=row_stride
    )
    run_pass(model, data, [acc], window=window, progress=progress, desc="attention spectra")
    return acc.finalize()


class AttentionSpectraAccumulator(_SumsMerge):
    """The state of :func:`attention_spectra` in a (shared) pass: energy and entropy sums per layer × head."""

    _sums = ("energy", "sums")

    def __init__(self, model: Model, layers: list[int], min_row: int = 32, row_stride: int = 8):
        self.layers = list(layers)
        self.min_row, self.row_stride = min_row, row_stride
        H, dev = adapter.n_heads(model), adapter.device(model)
        self.energy = torch.zeros(len(layers), H, 3, dtype=torch.float64, device=dev)
        self.sums = torch.zeros(6, len(layers), H, dtype=torch.float64, device=dev)

    def _on_pattern(self, pat: Tensor, hook: Any, i: int) -> Tensor:
        for m in range(self.min_row, pat.shape[-2], self.row_stride):
            e, hp, hs = row_spectrum_stats(pat[:, :, m, : m + 1])
            self.energy[i] += e.sum(0).to(self.energy.device)  # the layer's device may be another
            _add_sums(self.sums[:, i], hp, hs, (0,))
        return pat

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, "pattern"), lambda p, hook, i=i: self._on_pattern(p, hook, i))
            for i, layer in enumerate(self.layers)
        ]

    def finalize(self) -> AttentionSpectra:
        n = self.sums[0, 0, 0].item() if len(self.layers) else 0
        if n == 0:
            raise ValueError(
                f"no query row at position >= min_row={self.min_row}: use longer windows or a smaller min_row"
            )
        s = self.sums.cpu()
        return AttentionSpectra(
            (self.energy.cpu() / n).float(),
            (s[1] / n).float(),
            (s[2] / n).float(),
            corr_from_sums(s).float(),
            self.layers,
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
    model: Model,
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
    acc = MLPSpectraAccumulator(model, layer_list(model, layers), nfft=nfft, harmonics=harmonics)
    run_pass(model, data, [acc], window=window, progress=progress, desc="mlp spectra")
    return acc.finalize()


class MLPSpectraAccumulator(_PSDSums):
    """The state of :func:`mlp_spectra` in a (shared) pass: per layer and site, the summed neuron PSDs."""

    def __init__(self, model: Model, layers: list[int], nfft: int | None = None, harmonics: int = 3):
        super().__init__(model, layers, nfft)
        self.harmonics = harmonics

    def _on_mlp(self, x: Tensor, hook: Any, key: tuple[int, int]) -> Tensor:
        y = x.detach().double()
        y = (y - y.mean(1, keepdim=True)).movedim(1, -1)  # [b, d_mlp, pos]
        self._add(key, psd(y, self.nfft).mean((0, 1)))
        return x

    def fwd_hooks(self) -> FwdHooks:
        return [
            (mlp_hook(layer, site), lambda x, hook, k=(i, s): self._on_mlp(x, hook, k))
            for i, layer in enumerate(self.layers)
            for s, site in enumerate(("pre", "post"))
        ]

    def finalize(self) -> MLPSpectra:
        L = len(self.layers)
        out = torch.stack([torch.stack([self._on_cpu((i, s)) for s in range(2)]) for i in range(L)]).float()
        return MLPSpectra(
            out / self.n, self.theta, self.layers, int(self.nfft or 0), self.harmonics, window_len=self.len
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
    model: Model,
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
    acc = PhaseAlignmentAccumulator(model, layer_list(model, layers), start_pos=start_pos)
    run_pass(model, data, [acc], window=window, progress=progress, desc="phase alignment")
    return acc.finalize()


class PhaseAlignmentAccumulator(_SumsMerge):
    """The state of :func:`phase_alignment` in a (shared) pass: per layer × head × band, the correlation sums."""

    _sums = ("s_ent", "s_max")

    def __init__(self, model: Model, layers: list[int], start_pos: int = 1):
        self.layers = self.pair_layers = list(layers)
        self.spec = RotaryBands.from_model(model)
        self.start_pos = start_pos
        dev = adapter.device(model)
        L, H, B = len(layers), self.spec.n_heads, self.spec.n_bands
        self.s_ent = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
        self.s_max = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
        self.held: dict[int, Tensor] = {}
        self._kv_on = per_device(self.spec.kv_map, dev)  # the kv map on each activation device, copied once

    @staticmethod
    def _unit(x: Tensor) -> Tensor:
        z = torch.complex(x[..., 0].double(), x[..., 1].double())
        return z / z.abs().clamp_min(1e-30)

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        uk = self._unit(k[:, :, self._kv_on(k.device)])
        self.held[layer] = (self._unit(q) * prefix_mean(uk).conj()).real[:, self.start_pos :]  # [b, m, h, B]

    def _on_pattern(self, pat: Tensor, hook: Any, layer: int) -> Tensor:
        a = self.held.pop(layer)
        p = pat[:, :, self.start_pos :].double()
        ent = _entropy(p).transpose(1, 2)[..., None].expand_as(a)  # [b, m, h, B]
        mx = p.amax(-1).transpose(1, 2)[..., None].expand_as(a)
        i = self.layers.index(layer)
        _add_sums(self.s_ent[:, i], a, ent, (0, 1))
        _add_sums(self.s_max[:, i], a, mx, (0, 1))
        return pat

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, "pattern"), lambda p, hook, layer=layer: self._on_pattern(p, hook, layer))
            for layer in self.layers
        ]

    def finalize(self) -> PhaseAlignment:
        se, sm = self.s_ent.cpu(), self.s_max.cpu()
        n = int(se[0, 0, 0, 0])
        if n == 0:
            raise ValueError(f"no query at position >= start_pos={self.start_pos}")
        return PhaseAlignment(
            (se[1] / n).float(), corr_from_sums(se).float(), corr_from_sums(sm).float(), self.layers, n
        )


# ---- registry record (CLI subcommand and report section) ----------------------------------------------
Part = Literal["bands", "attention", "mlp", "phase"]
"""The spectral measures: band trajectories, attention rows, MLP activations, phase alignment."""

FUNCTIONS = {
    "bands": band_spectra,
    "attention": attention_spectra,
    "mlp": mlp_spectra,
    "phase": phase_alignment,
}


@dataclass
class Spectra:
    """Results of the chosen spectral measures, by part name."""

    parts: dict[str, Any] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)


def spectra_layers(model: Model, layers: list[int] | None, chosen: list[int] | None) -> list[int]:
    """``chosen``, else the first, middle and last of ``layers`` (default: all the model's layers)."""
    if chosen:
        return layer_list(model, chosen)
    pool = layer_list(model, layers)
    return sorted({pool[0], pool[len(pool) // 2], pool[-1]})


ACCUMULATORS = {
    "bands": BandSpectraAccumulator,
    "attention": AttentionSpectraAccumulator,
    "mlp": MLPSpectraAccumulator,
    "phase": PhaseAlignmentAccumulator,
}


def _start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    layers = spectra_layers(ctx.model, ctx.layers, opts["spectra_layers"])
    return [ACCUMULATORS[p](ctx.model, layers) for p in opts["parts"]]


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list[Accumulator]) -> Spectra:
    layers = spectra_layers(ctx.model, ctx.layers, opts["spectra_layers"])
    return Spectra({p: acc.finalize() for p, acc in zip(opts["parts"], accs, strict=True)}, layers)


def _summary(r: Spectra) -> dict[str, Any]:
    out: dict[str, Any] = {"layers": r.layers}
    a = r.parts.get("attention")
    if a is not None:
        rho = a.rho_across_heads().tolist()
        e = a.energy.mean(1).tolist()
        out["attention"] = [
            {
                "layer": layer,
                "low": round(e[i][0], 4),
                "mid": round(e[i][1], 4),
                "high": round(e[i][2], 4),
                "rho_across_heads": round(rho[i], 4),
            }
            for i, layer in enumerate(a.layers)
        ]
    m = r.parts.get("mlp")
    if m is not None:
        h = m.harmonic_table()
        out["mlp_harmonic_peaks"] = int(h["peak"].sum()) if len(h) else 0
    return out


def _findings(r: Spectra) -> list[str]:
    a = r.parts.get("attention")
    if a is None:
        return []
    e = a.energy.mean(1)
    rho = a.rho_across_heads()
    return [
        f"Spectra: the share of attention-row energy in the lowest third of frequencies goes from "
        f"{float(e[0, 0]):.2f} in layer {a.layers[0]} to {float(e[-1, 0]):.2f} in layer {a.layers[-1]}; across "
        f"heads, positional and spectral entropy correlate with ρ between {float(rho.min()):.2f} and "
        f"{float(rho.max()):.2f} (Ruscio et al. report −0.42 to −0.74)."
    ]


def _section(r: Spectra) -> list[Block]:
    from ..view.html import paragraph

    blocks: list[Block] = [(None, paragraph(ANALYSIS.description + f" Layers {r.layers}."))]
    for p, res in r.parts.items():  # each measure says which paper version it follows, or that it is ours
        blocks += [(None, provenance_html(NAMES[p])), (None, res.plot())]
    return blocks


NAMES = {
    "bands": "band_spectra",
    "attention": "attention_spectra",
    "mlp": "mlp_spectra",
    "phase": "phase_alignment",
}
"""Each part's public function, table and provenance name (:data:`PROVENANCE`)."""


def _tables(r: Spectra) -> dict[str, Any]:
    return {NAMES[p]: res.to_dataframe() for p, res in r.parts.items()}


ANALYSIS = Analysis(
    name="spectrum",
    min_tokens=33,  # query rows from min_row=32 on
    title="Spectra (Ruscio et al.)",
    help="Spectra (Ruscio et al.): band trajectories, attention rows, MLP activations, phase alignment",
    description=(
        "Power spectra over positions of band trajectories, attention rows (energy in the low/mid/high thirds of "
        "Nyquist; positional vs spectral entropy) and MLP activations (harmonics at integer multiples of band "
        "frequencies); phase alignment of q and k per band against attention sharpness (Ruscio et al., Beyond "
        "position: how rotary embeddings shape representations and memory, 2025)."
    ),
    start=_start,
    finish=_finish,
    options=(
        Option(
            "parts",
            str,
            list(literal_choices(Part)),
            "measures to run",
            choices=literal_choices(Part),
            many=True,
        ),
        Option(
            "spectra_layers", int, None, "layers (default: first, middle and last analysed layer)", many=True
        ),
    ),
    summary=_summary,
    summary_doc={
        "layers": "layers of the spectral measures",
        "attention": "records per layer: energy share in the low/mid/high thirds of Nyquist, rho_across_heads",
        "mlp_harmonic_peaks": "MLP harmonics of band frequencies above 3x the local median",
    },
    findings=_findings,
    tables=_tables,
    section=_section,
)
