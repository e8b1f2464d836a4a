"""Bands: the 2-D rotation planes of rotary embeddings, as pure tensor maths.

A rotary query/key of ``d_head`` dims has ``n_bands = rotary_dim // 2`` planes.
Band ``i`` turns at ``theta_i`` radians per token; band 0 is the highest frequency.
Which two dims form band ``i`` depends on the layout:

* NeoX/Llama/Gemma (``rotary_adjacent_pairs=False``): dims ``(i, i + rotary_dim/2)``.
* GPT-J (``rotary_adjacent_pairs=True``): dims ``(2i, 2i + 1)``.

Dims ``rotary_dim .. d_head`` (partial rotary) pass through unrotated.

Everything here is a pure function of tensors and knows nothing about
TransformerLens; :class:`RotaryBands` (in :mod:`rope_interp.model.layout`) records the
layout of a particular model. The band view is a *view* (no copy) for both
layouts: ``band_view(x, ...)[..., i, :]`` are the two coordinates of band ``i``,
ordered so that rotating by angle ``a`` is the complex product
``(x0 + i x1) * exp(i a)`` — the same sign convention as TransformerLens.

>>> import torch
>>> x = torch.arange(8.).reshape(1, 8)          # d_head 8, full rotary
>>> band_view(x, rotary_dim=8, adjacent=False)[0]
tensor([[0., 4.],
        [1., 5.],
        [2., 6.],
        [3., 7.]])
>>> band_view(x, rotary_dim=8, adjacent=True)[0, 1]
tensor([2., 3.])
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def band_dims(rotary_dim: int, adjacent: bool) -> Tensor:
    """LongTensor[n_bands, 2]: the two indices into ``d_head`` of each band's plane.

    >>> band_dims(4, adjacent=False).tolist()
    [[0, 2], [1, 3]]
    >>> band_dims(4, adjacent=True).tolist()
    [[0, 1], [2, 3]]
    """
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    n = rotary_dim // 2
    i = torch.arange(n)
    if adjacent:
        return torch.stack([2 * i, 2 * i + 1], dim=-1)
    return torch.stack([i, i + n], dim=-1)


def band_view(
    x: Float[Tensor, "... d_head"], rotary_dim: int, adjacent: bool
) -> Float[Tensor, "... n_bands 2"]:
    """View the rotary dims of ``x`` as ``[..., n_bands, 2]`` (no copy; writes go through)."""
    if x.shape[-1] < rotary_dim:
        raise ValueError(f"last axis has {x.shape[-1]} dims, fewer than rotary_dim={rotary_dim}")
    rot = x[..., :rotary_dim]
    n = rotary_dim // 2
    if adjacent:
        return rot.unflatten(-1, (n, 2))
    return rot.unflatten(-1, (2, n)).transpose(-1, -2)


def pass_view(x: Float[Tensor, "... d_head"], rotary_dim: int) -> Float[Tensor, "... n_pass"]:
    """The non-rotary (pass-through) dims of ``x``; empty when ``rotary_dim == d_head``."""
    return x[..., rotary_dim:]


def from_bands(
    bands: Float[Tensor, "... n_bands 2"], passthrough: Float[Tensor, "... n_pass"] | None, adjacent: bool
) -> Float[Tensor, "... d_head"]:
    """Inverse of :func:`band_view` + :func:`pass_view`: assemble a ``d_head`` vector.

    >>> import torch
    >>> x = torch.randn(3, 10)
    >>> b = band_view(x, 8, adjacent=False)
    >>> torch.equal(from_bands(b, pass_view(x, 8), adjacent=False), x)
    True
    """
    if adjacent:
        rot = bands.flatten(-2)
    else:
        rot = bands.transpose(-1, -2).flatten(-2)
    if passthrough is None or passthrough.shape[-1] == 0:
        return rot
    return torch.cat([rot, passthrough], dim=-1)


def rotate(
    bands: Float[Tensor, "... n_bands 2"],
    angle: Float[Tensor, "... n_bands"],
    *,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "... n_bands 2"]:
    """Rotate each band by ``angle`` (radians, broadcast against ``bands[..., 0]``).

    ``cos``/``sin`` are computed in ``angle``'s dtype; ``dtype`` casts them before the product
    (``dtype=bands.dtype``: angles in float64, the result in the bands' own dtype).
    Rotation keeps every band's norm:

    >>> import torch
    >>> b = torch.randn(5, 4, 2)
    >>> r = rotate(b, torch.rand(5, 4))
    >>> torch.allclose(band_norms(r), band_norms(b))
    True
    >>> rotate(b, torch.rand(5, 4, dtype=torch.float64), dtype=b.dtype).dtype
    torch.float32
    """
    c, s = torch.cos(angle), torch.sin(angle)
    if dtype is not None:
        c, s = c.to(dtype), s.to(dtype)
    x0, x1 = bands[..., 0], bands[..., 1]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)


def band_norms(bands: Float[Tensor, "... n_bands 2"]) -> Float[Tensor, "... n_bands"]:
    """Euclidean norm of each band's 2-vector.

    ``hypot`` of the two components: elementwise, so as fast on the strided band views of a NeoX
    layout as on contiguous memory (``linalg.vector_norm`` over a strided last dim of size 2 is ~50x
    slower there); equal to it to 1 ulp.
    """
    return torch.hypot(bands[..., 0], bands[..., 1])


def band_angles(bands: Float[Tensor, "... n_bands 2"]) -> Float[Tensor, "... n_bands"]:
    """Angle (radians, in (-pi, pi]) of each band's 2-vector."""
    return torch.atan2(bands[..., 1], bands[..., 0])
