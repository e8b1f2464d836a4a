"""The papers' constructions, checked numerically (no model needed).

* :func:`rotary_decay` — Barbero et al. Prop. 3.2: for ``q, k ~ N(0, I)``,
  ``E[qᵀ R^r k] = 0`` for every relative distance ``r`` (no decay, just zero),
  while all-ones ``q = k`` give ``Σ_i 2 cos(θ_i r)``, which decays from ``d``.
* :func:`diagonal_head_sharpness` — their Thm 5.3 construction: ``q = k = ψ`` in a
  single band ``g`` gives scores ``‖ψ‖² cos((n − m) θ_g)``, maximal at ``n = m``; the
  higher the frequency, the sharper the diagonal.
* :func:`nonlinearity_harmonics` — the mechanism behind Ruscio et al.'s harmonic claim
  (arXiv 2410.18067 v1/v2 only; v3/v4 drop it): a pointwise nonlinearity of
  ``a·cos(θm) + b`` has energy at ``2θ, 3θ, …`` (a linear map has none). The same test
  on the model's own FFN is :func:`rope_interp.analyses.ffn_harmonics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..bands import rotate
from .inputs import figure

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "square": torch.square,
}


def rope_freqs(n_bands: int, base: float = 10000.0) -> Float[Tensor, " band"]:
    """``θ_i = base^(−i / n_bands)`` in float64 (band 0 = 1 rad/token)."""
    return base ** (-torch.arange(n_bands, dtype=torch.float64) / n_bands)


@dataclass
class RotaryDecay:
    """``qᵀ R^r k`` against distance ``r``: Gaussian mean ± standard error, and all-ones."""

    r: Tensor
    gaussian_mean: Tensor
    gaussian_sem: Tensor
    ones: Tensor

    def plot(self):
        fig, (ax,) = figure(1, width=7.0, height=4.0)
        r = self.r.numpy()
        ax.plot(r, self.ones.numpy(), label="q = k = all ones")
        ax.plot(r, self.gaussian_mean.numpy(), label="q, k ~ N(0, I): sample mean")
        ax.fill_between(
            r,
            (self.gaussian_mean - 3 * self.gaussian_sem).numpy(),
            (self.gaussian_mean + 3 * self.gaussian_sem).numpy(),
            alpha=0.3,
        )
        ax.set_title("Prop. 3.2: no decay for Gaussian q, k; decay for all-ones")
        ax.set_xlabel("relative distance r (tokens)")
        ax.set_ylabel("qᵀ R^r k")
        ax.legend()
        fig.tight_layout()
        return fig


def rotary_decay(
    d: int = 64, base: float = 10000.0, max_r: int = 1024, n_samples: int = 4096, seed: int = 0
) -> RotaryDecay:
    """Monte-Carlo ``E[qᵀ R^r k]`` for Gaussian ``q, k`` and the exact all-ones curve, ``r = 0..max_r``.

    >>> dec = rotary_decay(d=8, max_r=4, n_samples=64)
    >>> dec.ones[0].item()
    8.0
    """
    if d % 2:
        raise ValueError(f"d must be even, got {d}")
    g = torch.Generator().manual_seed(seed)
    theta = rope_freqs(d // 2, base)
    r = torch.arange(max_r + 1, dtype=torch.float64)
    angle = r[:, None] * theta  # [R, B]
    q = torch.randn(n_samples, d // 2, 2, generator=g, dtype=torch.float64)
    k = torch.randn(n_samples, d // 2, 2, generator=g, dtype=torch.float64)
    # <q_i, R(θ_i r) k_i> = cos·(q·k) + sin·(q × k); average over samples per r
    dot = (q * k).sum(-1)  # [N, B]
    cross = q[..., 0] * k[..., 1] - q[..., 1] * k[..., 0]
    s = dot @ torch.cos(angle).T + cross @ torch.sin(angle).T  # [N, R]
    ones = torch.ones(d // 2, 2, dtype=torch.float64)
    ones_curve = (ones[None] * rotate(ones[None].expand(len(r), -1, -1), angle)).sum((-1, -2))
    return RotaryDecay(r, s.mean(0), s.std(0) / math.sqrt(n_samples), ones_curve)


@dataclass
class DiagonalSharpness:
    """Per band ``g``: mean diagonal attention ``α[m, m]`` of the single-band construction."""

    diag_mass: Float[Tensor, " band"]
    theta: Float[Tensor, " band"]
    uniform: float

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            {
                "band": range(len(self.theta)),
                "theta": self.theta.tolist(),
                "diag_mass": self.diag_mass.tolist(),
            }
        )

    def plot(self):
        fig, (ax,) = figure(1, width=6.0, height=4.0)
        ax.plot(self.diag_mass.numpy(), marker="o", label="q = k = ψ in band g")
        ax.axhline(self.uniform, color="grey", ls="--", label="uniform causal attention")
        ax.set_title("Thm 5.3 construction: diagonal attention by band")
        ax.set_xlabel("band g (0 = highest frequency)")
        ax.set_ylabel("mean α[m, m]")
        ax.legend()
        fig.tight_layout()
        return fig


def diagonal_head_sharpness(
    n_bands: int = 32, base: float = 10000.0, length: int = 64, norm: float = 3.0
) -> DiagonalSharpness:
    """Mean causal ``α[m, m]`` (``m >= 1``) of a head with ``q = k = ψ`` in band ``g`` only, ``‖ψ‖ = norm``.

    >>> s = diagonal_head_sharpness(n_bands=4, length=16)
    >>> bool(s.diag_mass[0] > s.diag_mass[-1])
    True
    """
    theta = rope_freqs(n_bands, base)
    pos = torch.arange(length, dtype=torch.float64)
    delta = pos[None, :] - pos[:, None]  # n − m
    scores = norm**2 * torch.cos(delta[None] * theta[:, None, None])  # [B, m, n]
    scores = scores.masked_fill(delta[None] > 0, float("-inf"))
    att = torch.softmax(scores, -1)
    diag = att.diagonal(dim1=-2, dim2=-1)[:, 1:].mean(-1)
    uniform = float((1 / (pos[1:] + 1)).mean())
    return DiagonalSharpness(diag, theta, uniform)


@dataclass
class NonlinearityHarmonics:
    """Energy share of ``f(a·cos(θm) + b)`` at ``k·θ`` for ``k = 1..harmonics``."""

    share: Float[Tensor, " harmonic"]
    power: Float[Tensor, " freq"]
    theta: float
    fn: str

    def plot(self):
        fig, (ax,) = figure(1, width=6.0, height=4.0)
        w = torch.arange(len(self.power)) * 2 * math.pi / (2 * (len(self.power) - 1))
        ax.semilogy(w.numpy(), self.power.clamp_min(1e-30).numpy())
        for k in range(1, len(self.share) + 1):
            ax.axvline(k * self.theta, color="grey", lw=0.5)
        ax.set_title(f"spectrum of {self.fn}(a·cos(θm) + b), grey: kθ")
        ax.set_xlabel("frequency (rad/token)")
        ax.set_ylabel("power")
        fig.tight_layout()
        return fig


def nonlinearity_harmonics(
    fn: str | Callable[[Tensor], Tensor] = "silu",
    cycles: int = 8,
    length: int = 256,
    amplitude: float = 2.0,
    bias: float = 0.5,
    harmonics: int = 4,
) -> NonlinearityHarmonics:
    """Spectrum of ``fn(amplitude·cos(θm) + bias)`` with ``θ = 2π·cycles/length``.

    An integer number of cycles and a rectangular window make every harmonic fall
    exactly on a DFT bin, so a missing harmonic reads as ~0, not as leakage.
    The mean is removed; ``share[k−1]`` is the fraction of the remaining energy at ``kθ``.

    >>> h = nonlinearity_harmonics("identity")
    >>> round(float(h.share[0]), 6), float(h.share[1]) < 1e-12
    (1.0, True)
    """
    if (harmonics + 1) * cycles > length // 2:
        raise ValueError(
            f"{harmonics} harmonics of {cycles} cycles do not fit below Nyquist for length {length}"
        )
    f = ACTIVATIONS[fn] if isinstance(fn, str) else fn
    theta = 2 * math.pi * cycles / length
    m = torch.arange(length, dtype=torch.float64)
    y = f(amplitude * torch.cos(theta * m) + bias)
    y = y - y.mean()
    p = torch.fft.rfft(y).abs().square()
    total = p.sum().clamp_min(1e-300)
    share = torch.stack([p[k * cycles] for k in range(1, harmonics + 1)]) / total
    return NonlinearityHarmonics(
        share, p, theta, fn if isinstance(fn, str) else getattr(fn, "__name__", "fn")
    )
