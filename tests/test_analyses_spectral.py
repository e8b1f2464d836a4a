"""Spectral analyses and the synthetic validations (Barbero Prop. 3.2 / Thm 5.3, harmonics)."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import (
    attention_spectra,
    band_spectra,
    diagonal_head_sharpness,
    mlp_spectra,
    nonlinearity_harmonics,
    phase_alignment,
    rotary_decay,
)
from rope_interp.analyses.signal import corr_from_sums, psd, row_spectrum_stats
from rope_interp.model.testing import tiny_model


def test_psd_peak_of_a_rotating_band_is_its_frequency():
    theta = 0.37
    m = torch.arange(128, dtype=torch.float64)
    z = 2.0 * torch.exp(1j * (theta * m + 0.4))  # a steady band after rotation
    p = psd(z, nfft=4096)
    assert float(p.argmax()) * 2 * math.pi / 4096 == pytest.approx(theta, abs=2 * math.pi / 4096)


def test_row_energy_thirds_and_entropies():
    n = 64
    uniform = torch.full((n,), 1 / n, dtype=torch.float64)
    alternating = (1 + (-1) ** torch.arange(n)) / n  # all its non-DC energy at Nyquist
    e, hp, hs = row_spectrum_stats(torch.stack([uniform, alternating]))
    assert torch.allclose(e.sum(-1), torch.ones(2, dtype=torch.float64))
    assert float(e[0, 0]) > 0.99 and float(e[1, 2]) > 0.3
    assert float(hp[0]) == pytest.approx(1.0) and float(hp[1]) == pytest.approx(math.log(n / 2) / math.log(n))
    assert float(hs[0]) < float(hs[1])


def test_corr_from_sums_is_pearson():
    x, y = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    y = y + 0.5 * x
    sums = torch.stack(
        [
            torch.tensor(50.0, dtype=torch.float64),
            x.sum(),
            y.sum(),
            (x * x).sum(),
            (y * y).sum(),
            (x * y).sum(),
        ]
    )
    assert float(corr_from_sums(sums)) == pytest.approx(
        float(torch.corrcoef(torch.stack([x, y]))[0, 1]), rel=1e-9
    )


def test_spectral_analyses_shapes_and_streaming():
    model = tiny_model()
    toks = torch.randint(0, 50, (2, 32))
    b = band_spectra(model, toks, nfft=64, progress=False)
    assert b.psd_q.shape == (2, 8, 64) and b.peak("k").shape == (2, 8)
    halves = band_spectra(model, [toks[:1], toks[1:]], nfft=64, progress=False)
    torch.testing.assert_close(halves.psd_q, b.psd_q, rtol=1e-5, atol=1e-6)  # mean over windows of equal size
    a = attention_spectra(model, toks, min_row=8, row_stride=4, progress=False)
    assert a.energy.shape == (2, 4, 3) and torch.allclose(a.energy.sum(-1), torch.ones(2, 4), atol=1e-5)
    assert a.n_rows == 2 * 6 and a.rho_across_heads().shape == (2,)
    mlp = mlp_spectra(model, toks, layers=[1], nfft=64, progress=False)
    assert mlp.psd.shape == (1, 2, 33) and bool((mlp.psd >= 0).all()) and bool(mlp.psd.isfinite().all())
    assert set(mlp.harmonic_table().columns) >= {"band", "harmonic", "power_ratio", "peak"}
    pa = phase_alignment(model, toks, layers=[0], progress=False)
    assert pa.corr_entropy.shape == (1, 4, 8) and pa.n_queries == 2 * 31
    assert (pa.alignment.abs() <= 1 + 1e-6).all()
    for r in (b, a, mlp, pa):
        fig = r.plot()
        assert all(
            ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
            for ax in fig.axes
            if ax.get_label() != "<colorbar>"
        )


def test_phase_alignment_hand_checked_on_one_layer():
    model = tiny_model()
    toks = torch.randint(0, 50, (1, 10))
    pa = phase_alignment(model, toks, layers=[1], start_pos=1, progress=False)
    _, cache = model.run_with_cache(toks)
    q = cache["blocks.1.attn.hook_rot_q"][0, :, 0]  # head 0, NeoX bands (i, i + 8)
    k = cache["blocks.1.attn.hook_rot_k"][0, :, 0]  # kv head 0
    aq, ak = torch.atan2(q[:, 8:], q[:, :8]), torch.atan2(k[:, 8:], k[:, :8])
    want = torch.stack([torch.cos(aq[m] - ak[: m + 1]).mean(0) for m in range(1, 10)]).mean(0)
    torch.testing.assert_close(pa.alignment[0, 0], want, atol=1e-5, rtol=1e-4)


# ---- synthetic validations ---------------------------------------------------------------------
def test_prop_3_2_gaussian_no_decay_ones_decay():
    dec = rotary_decay(d=64, base=10000.0, max_r=512, n_samples=8192, seed=1)
    # Gaussian: E[q^T R^r k] = 0 for every r (within 5 standard errors), the same at r = 0 and far away
    assert (dec.gaussian_mean.abs() < 5 * dec.gaussian_sem).float().mean() > 0.99
    assert float(dec.gaussian_sem[0]) == pytest.approx(float(dec.gaussian_sem[-1]), rel=0.2)
    # all-ones: exactly d at r = 0, then a decaying envelope
    assert float(dec.ones[0]) == 64.0
    far = dec.ones[256:].abs().mean()
    assert far < 0.5 * dec.ones[0] and dec.ones[1:8].abs().mean() > far
    torch.testing.assert_close(
        dec.ones,
        2 * torch.cos(dec.r[:, None] * 10000.0 ** (-torch.arange(32, dtype=torch.float64) / 32)).sum(-1),
    )


def test_thm_5_3_high_frequency_band_gives_sharper_diagonal():
    s = diagonal_head_sharpness(n_bands=32, base=10000.0, length=64, norm=3.0)
    assert float(s.diag_mass[0]) > 3 * float(s.diag_mass[-1])
    assert float(s.diag_mass[0]) > float(s.diag_mass[16:].max())
    assert float(s.diag_mass[-1]) == pytest.approx(s.uniform, rel=0.05)  # lowest band: nearly uniform
    assert s.to_dataframe().shape == (32, 3)


@pytest.mark.parametrize(
    "fn, present, absent",
    [
        ("identity", [1], [2, 3, 4]),
        ("square", [1, 2], [3, 4]),
        ("relu", [1, 2, 4], []),
        ("silu", [1, 2, 3, 4], []),
        ("tanh", [1, 2, 3], []),
    ],
)
def test_nonlinearity_of_a_cosine_has_harmonics(fn, present, absent):
    h = nonlinearity_harmonics(fn, cycles=8, length=256, amplitude=2.0, bias=0.5, harmonics=4)
    for k in present:
        assert float(h.share[k - 1]) > 1e-4, (fn, k)
    for k in absent:
        assert float(h.share[k - 1]) < 1e-12, (fn, k)


def test_relu_without_bias_has_no_odd_harmonics():
    h = nonlinearity_harmonics("relu", bias=0.0, harmonics=4)
    assert float(h.share[1]) > 1e-3 and float(h.share[2]) < 1e-12  # relu(cos) = 1/pi + cos/2 + even terms


def test_every_spectral_measure_names_its_paper_version_or_says_ours():
    from rope_interp.analyses import spectral
    from rope_interp.errors import ParameterError

    assert set(spectral.PROVENANCE) == {"band_spectra", "attention_spectra", "mlp_spectra", "phase_alignment"}
    for name, p in spectral.PROVENANCE.items():
        assert "ours" in p["follows"] or "v3/v4" in p["follows"] or "v1/v2" in p["follows"], name
        assert p["can"] and p["cannot"]
        assert "cannot" in spectral.provenance_html(name)
    # the two old measures that do not test the v1/v2 claims say so where a user reads them
    assert "not a test" in mlp_spectra.__doc__ + spectral.MLPSpectra.__doc__
    assert "Ours" in phase_alignment.__doc__ and "causal_alignment" in phase_alignment.__doc__
    with pytest.raises(ParameterError, match="known measures"):
        spectral.provenance_html("wavelets")
