"""Carrier detector: θ_i lines in the sink attention and the MLP input (our own measure)."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import carrier_lines, carrier_survey
from rope_interp.analyses.carrier import detrend, line_ratios, report_section
from rope_interp.analyses.signal import psd
from rope_interp.errors import ParameterError
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import tiny_model


@pytest.mark.parametrize("seed", range(5))
def test_planted_line_found_and_shuffled_one_not(seed):
    g = torch.Generator().manual_seed(seed)
    n, theta = 500, torch.tensor([0.9, 0.42, 0.2, 0.004])
    m = torch.arange(n, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64) + 0.5 * torch.cos(0.42 * m + 1.0) + 0.002 * m
    nfft = 1024
    r = line_ratios(psd(detrend(x), nfft), theta, nfft, n)
    assert float(r[1]) >= 10  # the planted line (amplitude 0.5 under unit white noise)
    assert float(r[0]) < 10 and float(r[2]) < 10  # no line elsewhere
    assert bool(r[3].isnan())  # 0.004 rad/token: 0.3 cycles in 500 samples, not resolvable
    shuffled = x[torch.randperm(n, generator=g)]
    rs = line_ratios(psd(detrend(shuffled), nfft), theta, nfft, n)
    assert bool((rs[:3] < 10).all()), rs  # same values, order destroyed: no line


def test_detrend_removes_exactly_a_line():
    t = torch.arange(50, dtype=torch.float64)
    y = torch.sin(t)
    torch.testing.assert_close(detrend(3 * t - 2 + y), detrend(y))


def _plant(model, layer, heads_kv, band, amp):
    """q = k = amp in ``band`` only for the kv group ``heads_kv = (q_heads, kv_head)``; token independent."""
    spec = RotaryBands.from_model(model)
    attn = model.blocks[layer].attn
    d0 = int(spec.dims[band, 0])
    q_heads, kv = heads_kv
    with torch.no_grad():
        for h in q_heads:
            attn.W_Q[h].zero_()
            attn.b_Q[h].zero_()
            attn.b_Q[h, d0] = amp
        attn._W_K[kv].zero_()
        attn._b_K[kv].zero_()
        attn._b_K[kv, d0] = amp


def test_model_sink_line_at_the_planted_band_only():
    model = tiny_model(n_ctx=512)
    spec = RotaryBands.from_model(model)
    _plant(model, 0, ([0, 1], 0), band=1, amp=3.0)  # heads 0, 1: scores 9/4 cos((m - n) θ_1)
    _plant(model, 0, ([2, 3], 1), band=1, amp=0.0)  # heads 2, 3: uniform attention, sink weight 1/(m + 1)
    toks = torch.randint(0, 50, (2, 512), generator=torch.Generator().manual_seed(0))
    c = carrier_lines(model, toks, layers=[0], progress=False)
    assert c.theta[0, 1].item() == pytest.approx(float(spec.freqs[0, 1]), rel=1e-6)
    r = c.ratio_sink[0]
    assert float(r[0, 1]) >= 10 and float(r[1, 1]) >= 10
    assert bool((r[2:, 1] < 10).all()) and bool((r[2:][~r[2:].isnan()] < 10).all())
    df = c.to_dataframe()
    assert set(df[df.line & (df.site == "sink")]["head"].unique()) == {0, 1}
    assert c.summary()["sink_lines"] >= 2


def test_survey_conditions_and_report_items():
    model = tiny_model(n_ctx=128)
    s = carrier_survey(model, torch.randint(0, 50, (1, 200)), n_pos=128, layers=[1], progress=False)
    assert [r.condition for r in s.results] == ["text", "repeated", "random"]
    assert {"condition", "site", "head", "band", "ratio", "line"} <= set(s.to_dataframe().columns)
    fig = s.plot()
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    items = report_section(s)
    assert "cannot show" in items[0] and "v1/v2" in items[0]


def test_carrier_validation():
    model = tiny_model(n_ctx=128)
    with pytest.raises(ParameterError, match="threshold"):
        carrier_lines(model, torch.randint(0, 50, (1, 64)), threshold=0.5, progress=False)
    with pytest.raises(ParameterError, match="positions after skip"):
        carrier_lines(model, torch.randint(0, 50, (1, 12)), progress=False)
    with pytest.raises(ParameterError, match="n_pos"):
        carrier_survey(model, torch.randint(0, 50, (1, 20)), n_pos=64, progress=False)
    assert math.isfinite(
        float(carrier_lines(model, torch.randint(0, 50, (1, 64)), progress=False).psd_mlp.sum())
    )
