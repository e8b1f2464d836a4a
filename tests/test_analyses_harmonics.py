"""Harmonic generation: a driven nonlinearity makes k·θ with amplitude ∝ a^k; the real FFN, driven."""

from __future__ import annotations

import pytest
import torch

from rope_interp.analyses import ffn_harmonics
from rope_interp.analyses.harmonics import (
    check_tones,
    drive_response,
    harmonic_tones,
    intermod_tones,
    loglog_slope,
    report_section,
)
from rope_interp.errors import ParameterError, RopeInterpError
from rope_interp.model.testing import tiny_model

N, C1, C2 = 128, 9, 5  # bins 9, 18, 27, 36 and products 14, 4, 13, 1: all distinct
A = torch.tensor([0.01, 0.02, 0.04, 0.08], dtype=torch.float64)


def _setup(seed=0, d=12, tones=1):
    g = torch.Generator().manual_seed(seed)
    x_bar = torch.randn(d, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(d, 2 * tones, generator=g, dtype=torch.float64))[0]
    w = torch.randn(d, 6, generator=g, dtype=torch.float64)
    return x_bar, q.T.reshape(tones, 2, d), w


@pytest.mark.parametrize("seed", range(3))
def test_polynomial_ffn_harmonics_grow_like_a_to_the_k(seed):
    x_bar, dirs, w = _setup(seed)
    stages = {
        "linear": lambda x: x @ w,
        "cubic": lambda x: (x @ w) + 0.5 * (x @ w) ** 2 + 0.2 * (x @ w) ** 3,
    }
    r = drive_response(stages, x_bar, dirs, [C1], N, A, harmonic_tones(C1, N, 4))  # [stage, amp, k]
    lin, cub = r[0], r[1]
    assert float(lin[:, 1:].max()) < 1e-10 * float(lin[:, 0].min())  # a linear map makes no harmonics
    slopes = loglog_slope(A, cub.T)
    # exact for a cubic: A_2 = a²·const, A_3 = a³·const; no 4th harmonic at all
    assert float(slopes[1]) == pytest.approx(2.0, abs=1e-6) and float(slopes[2]) == pytest.approx(
        3.0, abs=1e-6
    )
    assert float(cub[:, 3].max()) < 1e-6 * float(cub[:, 2].min())  # round-off only
    assert float(slopes[0]) == pytest.approx(1.0, abs=0.05)  # fundamental: linear + small a³ term


def test_smooth_nonlinearity_harmonics_in_polynomial_regime():
    x_bar, dirs, w = _setup(3)
    r = drive_response(
        {"silu": lambda x: torch.nn.functional.silu(x @ w)},
        x_bar,
        dirs,
        [C1],
        N,
        A / 4,
        harmonic_tones(C1, N, 4),
    )[0]
    slopes = loglog_slope(A, r.T)
    torch.testing.assert_close(
        slopes, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), atol=0.05, rtol=0
    )


def test_intermodulation_products_order():
    x_bar, dirs, w = _setup(1, tones=2)
    tones = intermod_tones(C1, C2, N)
    check_tones(tones, N)
    sq = drive_response({"sq": lambda x: (x @ w) ** 2}, x_bar, dirs, [C1, C2], N, A, tones)[0]
    cub = drive_response({"cube": lambda x: (x @ w) ** 3}, x_bar, dirs, [C1, C2], N, A, tones)[0]
    # a square has 2nd-order products (θ1 ± θ2) growing like a², no 3rd-order ones
    assert float(loglog_slope(A, sq[:, 2])) == pytest.approx(2.0, abs=1e-6)
    assert float(sq[:, 4:].max()) < 1e-10 * float(sq[:, 2].min())
    # a cube has 2θ1 − θ2 (and 2θ2 − θ1), growing like a³
    assert float(loglog_slope(A, cub[:, 4])) == pytest.approx(3.0, abs=1e-6)


def test_tone_collisions_refused():
    with pytest.raises(ParameterError, match="fall on DC"):
        check_tones(harmonic_tones(32, 128, 4), 128)  # 2θ lands on Nyquist
    with pytest.raises(ParameterError, match="another tracked"):
        check_tones(intermod_tones(10, 5, 128), 128)  # θ1 − θ2 = θ2


def test_ffn_harmonics_on_a_tiny_model():
    model = tiny_model(n_ctx=128)
    toks = torch.randint(0, 50, (2, 64), generator=torch.Generator().manual_seed(0))
    h = ffn_harmonics(
        model,
        toks,
        layer=1,
        head=2,
        band=0,
        second_band=1,
        n_pos=128,
        a_rel=[0.05, 0.1, 0.2, 0.4],
        progress=False,
    )
    assert h.amp1.shape == (2, 3, 4, 4) and h.amp2.shape == (2, 3, 4, 6)
    resid = h.amp1[:, 0]
    assert float(resid[..., 1:].max()) < 1e-5 * float(resid[..., 0].min())  # the drive is a pure tone
    # a circular drive a(cos u + sin v) has amplitude a in each of two orthonormal directions: a·√2 in all
    torch.testing.assert_close(resid[..., 0] / h.sigma, 2**0.5 * h.a_rel.expand(2, 4), rtol=1e-4, atol=0)
    out = h.amp1[:, 2]
    assert bool((out[..., 1] > 1e-4 * out[..., 0]).all())  # RMSNorm + SiLU MLP: a 2nd harmonic
    sl = h.slopes()
    assert float(sl[0, 1]) == pytest.approx(2.0, abs=0.3) and float(sl[1, 1]) == pytest.approx(2.0, abs=0.3)
    s = h.summary()
    assert "band_slope_2θ" in s and "random_generation_3θ_at_max_a" in s
    df = h.to_dataframe()
    assert len(df) == 2 * 3 * 4 * (4 + 6)
    fig = h.plot()
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "cannot show" in report_section(h)[0]


def test_ffn_harmonics_refuses_a_rel_whose_drive_overflows():
    # a_rel=[1, 1e300] returned NaN amplitudes: the drive's square overflowed float32 inside RMSNorm
    model, toks = tiny_model(), torch.randint(0, 50, (1, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(layer=0, band=0, second_band=1, n_pos=64, progress=False)
    with pytest.raises(ParameterError, match=r"a_rel up to 1e\+300 .* overflows float32: pass a_rel below"):
        ffn_harmonics(model, toks, a_rel=[1.0, 1e300], **kw)
    h = ffn_harmonics(model, toks, a_rel=[1.0, 1e10], **kw)  # large but representable: finite results
    assert torch.isfinite(h.amp1).all() and torch.isfinite(h.amp2).all()


def test_ffn_harmonics_validation():
    model = tiny_model(n_ctx=128)
    toks = torch.randint(0, 50, (1, 32))
    with pytest.raises(ParameterError, match="a_rel"):
        ffn_harmonics(model, toks, layer=0, a_rel=[0.5, 0.1], progress=False)
    with pytest.raises(ParameterError, match="differ"):
        ffn_harmonics(model, toks, layer=0, band=0, second_band=0, progress=False)
    with pytest.raises(RopeInterpError):
        ffn_harmonics(model, toks, layer=5, progress=False)
    with pytest.raises(ParameterError, match="half a cycle|fall on DC"):
        ffn_harmonics(model, toks, layer=0, band=7, second_band=0, n_pos=64, progress=False)
