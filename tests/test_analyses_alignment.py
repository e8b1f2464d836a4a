"""Causal phase alignment: a hand-built head loses sharpness with |Δφ| in its used band only."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import causal_alignment, weighted_alignment
from rope_interp.analyses.alignment import (
    band_usage,
    partial_corr,
    report_section,
    sharpness,
    weighted_band_alignment,
)
from rope_interp.errors import LayerError, ParameterError
from rope_interp.intervene.ablate import ablate_bands
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import tiny_model

F, M = 3, 7  # filler and marker tokens
USED, SUPPORT, UNUSED = 6, 7, 3  # two low-frequency bands (θ ≤ 1e-3: rotation over 32 tokens < 0.04 rad)


def marker_head(head=0, angle=0.0):
    """Layer 0 head ``head`` attends to the marker token M: score 3 from band 6 plus 4 from band 7, 0 elsewhere.

    q is a bias (the same for every query); k is non-zero only for M, whose embedding is orthogonal to F's.
    The support band keeps M the top key for every Δφ, so its weight falls monotonically as band 6 turns.
    """
    model = tiny_model()
    spec = RotaryBands.from_model(model)
    attn, kv = model.blocks[0].attn, int(spec.kv_map[head])
    d, scale = model.cfg.d_model, math.sqrt(model.cfg.d_head)
    with torch.no_grad():
        model.embed.W_E[F] = torch.eye(d)[0]
        model.embed.W_E[M] = torch.eye(d)[1]
        attn.W_Q[head].zero_()
        attn.b_Q[head].zero_()
        attn._W_K[kv].zero_()
        attn._b_K[kv].zero_()
        for band, score in ((USED, 3.0), (SUPPORT, 4.0)):
            d0 = int(spec.dims[band, 0])
            a = math.sqrt(score * scale)
            attn.b_Q[head, d0] = a
            d1 = int(spec.dims[band, 1])
            turn = angle if band == USED else 0.0  # the marker key's USED band sits at `angle` from q
            attn._W_K[kv, 1, d0] = a * math.cos(turn) / math.sqrt(d)  # normalised x of M is sqrt(d)·e_1
            attn._W_K[kv, 1, d1] = a * math.sin(turn) / math.sqrt(d)
    toks = torch.full((2, 32), F)
    toks[:, 1] = M
    return model, toks


def test_marker_head_is_built_as_stated():
    model, toks = marker_head()
    _, cache = model.run_with_cache(toks, names_filter="blocks.0.attn.hook_attn_scores")
    s = cache["blocks.0.attn.hook_attn_scores"][0, 0]
    assert float(s[5, 1]) == pytest.approx(7.0, abs=5e-3) and float(s[5, 2:6].abs().max()) < 1e-5


def test_curve_falls_monotonically_in_the_used_band_and_is_flat_in_an_unused_one():
    model, toks = marker_head()
    phases = torch.linspace(0, math.pi, 9)
    r = causal_alignment(model, toks, layer=0, head=0, bands=[USED, UNUSED], phases=phases, progress=False)
    used, unused = 0, 1
    assert bool((r.max_weight[used].diff() < 0).all()), r.max_weight[used]  # strictly falls with |Δφ|
    assert bool((r.entropy[used].diff() > 0).all()), r.entropy[used]  # strictly flattens
    assert float(r.max_weight[used, 0] - r.max_weight[used, -1]) > 0.5
    for name in ("entropy", "max_weight", "mlp_norm"):  # a band the head does not use: no effect at all
        v = getattr(r, name)[unused]
        torch.testing.assert_close(v, v[:1].expand_as(v), rtol=1e-6, atol=1e-7)
    # the expected curve: the marker's weight e^x / (e^x + m), x = 4 cos(d θ_7) + 3 cos(Δφ − d θ_6), d = m − 1
    # (the residual rotation of the two low bands over d tokens included), averaged over queries m = 1..31
    spec = RotaryBands.from_model(model)
    th = spec.freqs[0].double()
    m = torch.arange(1, 32, dtype=torch.float64)
    x = 4 * torch.cos((m - 1) * th[SUPPORT]) + 3 * torch.cos(phases.double()[:, None] - (m - 1) * th[USED])
    want = (x.exp() / (x.exp() + m)).mean(-1)
    torch.testing.assert_close(r.max_weight[used].double(), want, atol=5e-4, rtol=0)  # float32 + RMSNorm eps
    # Δφ = 0 is the clean run in every condition
    torch.testing.assert_close(r.entropy[:, 0], r.entropy[:1, 0].expand(3), rtol=1e-6, atol=1e-7)


def test_query_shift_equals_key_shift_for_the_head():
    model, toks = marker_head()
    name = "blocks.0.attn.hook_pattern"
    pats = []
    for iv in (
        ablate_bands(model, [USED], layers=[0], heads=[0], target="q", mode="shift", phase=-1.1),
        ablate_bands(model, [USED], layers=[0], kv_heads=[0], target="k", mode="shift", phase=1.1),
    ):
        with iv:
            _, cache = model.run_with_cache(toks, names_filter=name)
        pats.append(cache[name][:, 0])
    torch.testing.assert_close(pats[0], pats[1], rtol=1e-5, atol=1e-6)


def test_default_band_choice_uses_usage():
    model, toks = marker_head()
    r = causal_alignment(model, toks, layer=0, head=0, phases=[0.0, math.pi], n_random=2, progress=False)
    assert r.labels[0].startswith(f"band {SUPPORT}") or r.labels[0].startswith(f"band {USED}")
    assert r.bands[:2] == [SUPPORT, USED] or r.bands[:2] == [USED, SUPPORT]
    assert r.labels[-2:] == ["random plane 0", "random plane 1"] and r.bands[-1] is None
    assert float(r.usage[UNUSED]) == 0.0
    s = r.summary()
    assert s[r.labels[0]]["d_max_weight"] < -0.3
    df = r.to_dataframe()
    assert len(df) == 5 * 2 and {"d_entropy", "d_mlp_norm"} <= set(df.columns)
    fig = r.plot()
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "cannot show" in report_section(r)[0]


def test_sharpness_and_usage_by_hand():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    e, mx, n = sharpness(p)
    h1 = math.log(2) / math.log(2)
    h2 = -(2 * 0.2 * math.log(0.2) + 0.6 * math.log(0.6)) / math.log(3)
    assert n == 2 and float(e) == pytest.approx(h1 + h2) and float(mx) == pytest.approx(0.5 + 0.6)
    q = torch.randn(2, 5, 3, 2)
    torch.testing.assert_close(band_usage(q, q), q.norm(dim=-1).mean((0, 1)) ** 2)


def test_causal_alignment_validation():
    model, toks = marker_head()
    with pytest.raises(ParameterError, match="start"):
        causal_alignment(model, toks, layer=0, head=0, phases=[0.5, 1.0], progress=False)
    with pytest.raises(LayerError):
        causal_alignment(model, toks, layer=0, head=0, bands=[99], progress=False)
    with pytest.raises(ParameterError, match="skip"):
        sharpness(torch.ones(3, 3), skip=0)


def test_causal_alignment_refuses_n_used_that_would_list_a_band_twice():
    # regression (issue 22 #14): n_used >= n_bands listed the least-used band twice; now refused before work
    model, toks = marker_head()
    n_bands = model.cfg.d_head // 2
    with pytest.raises(ParameterError, match="twice"):
        causal_alignment(model, toks, layer=0, head=0, n_used=n_bands, progress=False)
    with pytest.raises(ParameterError, match="twice"):
        causal_alignment(model, toks, layer=0, head=0, n_used=100, progress=False)


# ---- the observational version ----------------------------------------------------------------------
def test_weighted_alignment_by_brute_force():
    model = tiny_model()
    toks = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(1))
    spec = RotaryBands.from_model(model)
    _, cache = model.run_with_cache(toks)
    q = cache["blocks.1.attn.hook_rot_q"][0].double()[..., spec.dims]  # [pos, h, band, 2]
    k = cache["blocks.1.attn.hook_rot_k"][0].double()[..., spec.dims][:, spec.kv_map]
    p = cache["blocks.1.attn.hook_pattern"][0].double()  # [h, m, n]
    h, band, m = 3, 5, 7
    num = sum(p[h, m, n] * (q[m, h, band] @ k[n, h, band]) for n in range(1, m + 1))
    den = sum(p[h, m, n] * q[m, h, band].norm() * k[n, h, band].norm() for n in range(1, m + 1))
    got = weighted_band_alignment(q[None], k[None], p[None])[0, m, h, band]
    assert float(got) == pytest.approx(float(num / den), rel=1e-9)
    w = weighted_alignment(model, toks, layers=[1], progress=False)
    want = weighted_band_alignment(q[None, 1:], k[None], p[None, :, 1:])[0].mean(0)
    torch.testing.assert_close(w.alignment[0].double(), want, atol=1e-5, rtol=1e-4)
    assert w.n_queries == 9 and bool((w.pcorr_entropy.abs() <= 1 + 1e-6).all())


def test_partial_corr_equals_correlation_of_residuals():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, generator=g, dtype=torch.float64)
    x = 2 * z + torch.randn(400, generator=g, dtype=torch.float64)
    y = -z + 0.5 * x + torch.randn(400, generator=g, dtype=torch.float64)
    c = torch.corrcoef(torch.stack([x, y, z]))
    design = torch.stack([torch.ones_like(z), z], 1)
    res = [v - design @ torch.linalg.lstsq(design, v[:, None]).solution[:, 0] for v in (x, y)]
    want = torch.corrcoef(torch.stack(res))[0, 1]
    assert float(partial_corr(c[0, 1], c[0, 2], c[1, 2])) == pytest.approx(float(want), rel=1e-9)


def test_weighted_alignment_outputs():
    w = weighted_alignment(tiny_model(), torch.randint(0, 50, (2, 24)), progress=False)
    assert w.to_dataframe().shape == (2 * 4 * 8, 6) and set(w.summary()) >= {"median_abs_pcorr_entropy"}
    fig = w.plot()
    assert all(ax.get_title() and ax.get_xlabel() for ax in fig.axes if ax.get_label() != "<colorbar>")
    assert "cannot show" in report_section(w)[0]


def test_sharpest_shift_is_the_aligning_shift_for_a_misaligned_band():
    model, toks = marker_head(angle=2.0)  # clean: band 6 of the marker key 2 rad away from q
    phases = torch.cat([torch.zeros(1), torch.linspace(-math.pi, math.pi, 25)])
    r = causal_alignment(
        model, toks, layer=0, head=0, bands=[USED, UNUSED], phases=phases, n_random=0, progress=False
    )
    assert float(r.clean_alignment[USED]) == pytest.approx(math.cos(2.0), abs=0.02)
    assert float(r.aligning_shift[USED]) == pytest.approx(-2.0, abs=0.05)  # Δφ = −angle(C)
    assert float(r.sharpest_shift()[0]) == pytest.approx(-2.0, abs=math.pi / 24 + 0.05)  # grid step π/12
    assert float(r.clean_alignment[UNUSED]) == 0.0
    s = r.summary()[r.labels[0]]
    assert s["aligning_shift"] == pytest.approx(-2.0, abs=0.05) and "clean_alignment" in s
