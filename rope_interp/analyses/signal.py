"""Pure signal helpers of the spectral analyses: power spectra, entropies, streaming correlations.

No model, no hooks: :mod:`.spectral` (its four measures), :mod:`.carrier` and :mod:`.alignment`
build on them. PSD bins are in radians per token ``2πf/nfft``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

THIRDS = ((0.0, 0.25), (0.25, 0.75), (0.75, 1.0 + 1e-9))
"""The low / mid / high fractions of Nyquist that :func:`row_spectrum_stats` splits energy into (ours)."""


def _nfft(n: int) -> int:
    """The default FFT length for ``n`` samples: the next power of two ≥ 2·n (at least 2).

    >>> _nfft(1), _nfft(32), _nfft(33)
    (2, 64, 128)
    """
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
    """Pearson correlation from streaming sums ``[n, Σx, Σy, Σx², Σy², Σxy]``.

    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> round(float(corr_from_sums(torch.stack([torch.tensor(3.0).double(), x.sum(), (-x).sum(),
    ...     (x * x).sum(), (x * x).sum(), -(x * x).sum()]))), 6)
    -1.0
    """
    n, sx, sy, sxx, syy, sxy = s
    cov = sxy / n - sx * sy / n**2
    vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
    return cov / (vx * vy).clamp_min(1e-30).sqrt()


def _add_sums(acc: Tensor, x: Tensor, y: Tensor, dims: tuple[int, ...]) -> None:
    """Add the streaming sums ``[n, Σx, Σy, Σx², Σy², Σxy]`` of ``x``, ``y`` over ``dims`` into ``acc``
    (moved to ``acc``'s device: a hook's activations may sit on another device than the sums)."""
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


def _entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of ``p`` normalised to sum 1 along ``dim``.

    >>> import torch
    >>> round(float(_entropy(torch.ones(4))), 4)  # log 4
    1.3863
    """
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
