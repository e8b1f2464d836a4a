"""Pure band maths: views, layouts, rotation."""

import math

import pytest
import torch

from rope_interp.bands import band_angles, band_dims, band_norms, band_view, from_bands, pass_view, rotate


@pytest.mark.parametrize("adjacent", [False, True])
@pytest.mark.parametrize("rotary_dim,d_head", [(8, 8), (6, 10), (16, 32)])
def test_band_view_matches_band_dims_and_roundtrips(adjacent, rotary_dim, d_head):
    x = torch.randn(2, 3, d_head)
    b = band_view(x, rotary_dim, adjacent)
    dims = band_dims(rotary_dim, adjacent)
    assert b.shape == (2, 3, rotary_dim // 2, 2)
    assert torch.equal(b, x[..., dims])
    assert torch.equal(from_bands(b, pass_view(x, rotary_dim), adjacent), x)
    # every rotary dim belongs to exactly one band
    assert sorted(dims.flatten().tolist()) == list(range(rotary_dim))


def test_band_view_is_a_view():
    x = torch.zeros(4, 8)
    band_view(x, 8, adjacent=False)[:, 1] = torch.tensor([1.0, 2.0])
    assert x[0].tolist() == [0, 1, 0, 0, 0, 2, 0, 0]
    y = torch.zeros(4, 8)
    band_view(y, 8, adjacent=True)[:, 1] = torch.tensor([1.0, 2.0])
    assert y[0].tolist() == [0, 0, 1, 2, 0, 0, 0, 0]


def test_rotate_is_complex_multiplication_and_keeps_norms():
    b = torch.randn(10, 5, 2, dtype=torch.float64)
    a = torch.rand(10, 5, dtype=torch.float64) * 6
    r = rotate(b, a)
    z = torch.complex(b[..., 0], b[..., 1]) * torch.exp(1j * a)
    assert torch.allclose(r[..., 0], z.real) and torch.allclose(r[..., 1], z.imag)
    assert torch.allclose(band_norms(r), band_norms(b))
    assert torch.allclose(
        torch.remainder(band_angles(r) - band_angles(b) - a + math.pi, 2 * math.pi),
        torch.full_like(a, math.pi),
    )
    assert torch.allclose(rotate(r, -a), b)


def test_relative_position_property():
    """rot(q, m)·rot(k, n) depends only on m - n, band by band."""
    q, k = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    theta = torch.rand(6, dtype=torch.float64)
    dot = lambda m, n: (rotate(q, theta * m) * rotate(k, theta * n)).sum(-1)  # noqa: E731
    assert torch.allclose(dot(7, 3), dot(104, 100))
    assert not torch.allclose(dot(7, 3), dot(7, 4))


def test_odd_rotary_dim_rejected():
    with pytest.raises(ValueError, match="even"):
        band_dims(7, adjacent=False)
