"""Offset features (bound, sign stability, angle convention) and massive values on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import (
    MeanAblateDims,
    massive_ablation,
    massive_values,
    offset_features,
    predicted_bands,
    sign_stable,
)
from rope_interp.analyses.massive import control_masks
from rope_interp.bands import band_view, rotate
from rope_interp.errors import ContextLengthError
from rope_interp.model.testing import tiny_model


def test_predicted_bands_smollm2_numbers():
    freqs = 1e5 ** (-torch.arange(32, dtype=torch.float64) / 32)
    pred = predicted_bands(freqs, 2048)
    assert pred.nonzero().flatten().tolist() == list(range(19, 32))
    # the bound is the half-turn: theta*(L-1) < pi exactly
    assert bool((freqs[pred] * 2047 < math.pi).all()) and bool((freqs[~pred] * 2047 >= math.pi).all())


def test_sign_stable_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    angle = (torch.rand(500, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    freqs = torch.rand(500, generator=g, dtype=torch.float64) * 0.02
    L = 100
    delta = torch.arange(L, dtype=torch.float64)
    c = torch.cos(angle[:, None] + freqs[:, None] * delta)
    want = (c > 0).all(1).double() - (c < 0).all(1).double()
    torch.testing.assert_close(sign_stable(angle, freqs, L), want)
    assert (want != 0).any() and (want == 0).any()


def test_angle_convention_reproduces_rotated_scores():
    # constant q, k in one band: <R_m q, R_n k> = |q||k| cos(phi + theta (m - n)) with phi = angle(q) - angle(k)
    theta, m, n = 0.3, 7, 2
    q, k = torch.tensor([[1.5, 0.4]]), torch.tensor([[-0.2, 0.9]])
    score = (rotate(q, torch.tensor([theta * m])) * rotate(k, torch.tensor([theta * n]))).sum()
    phi = math.atan2(0.4, 1.5) - math.atan2(0.9, -0.2)
    assert float(score) == pytest.approx(
        float(q.norm() * k.norm()) * math.cos(phi + theta * (m - n)), rel=1e-6
    )


def test_offset_features_on_model_match_capture_and_merge(layout_model):
    toks = torch.randint(0, 50, (2, 12))
    cfg = layout_model.cfg
    r = offset_features(layout_model, toks, context_length=32, start_pos=0, progress=False)
    _, cache = layout_model.run_with_cache(toks)
    q = band_view(cache["blocks.1.attn.hook_q"], cfg.rotary_dim, cfg.rotary_adjacent_pairs).mean((0, 1))
    torch.testing.assert_close(r.q_mean[1], q, atol=1e-5, rtol=1e-4)
    assert ((r.q_consistency >= 0) & (r.q_consistency <= 1 + 1e-6)).all()
    halves = offset_features(layout_model, toks[:1], context_length=32, start_pos=0, progress=False).merge(
        offset_features(layout_model, toks[1:], context_length=32, start_pos=0, progress=False)
    )
    torch.testing.assert_close(halves.q_mean, r.q_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(halves.angle, r.angle, atol=1e-4, rtol=1e-4)
    t = r.table()
    assert len(t) == cfg.rotary_dim // 2 and t["predicted"].dtype == bool
    fig = r.plot()
    assert all(ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>")


def test_offset_bad_context():
    with pytest.raises(ContextLengthError):
        offset_features(tiny_model(n_ctx=32), torch.randint(0, 50, (1, 8)), context_length=64, progress=False)


def _model_with_massive_dim(layer=1, head=2, dim=7, factor=40.0):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[layer].attn.W_Q[head, :, dim] *= factor
    return model


def test_massive_values_finds_planted_dim_and_band():
    model = _model_with_massive_dim()
    toks = torch.randint(0, 50, (2, 24))
    mv = massive_values(model, toks, progress=False)
    df = mv.to_dataframe()
    q = df[df.site == "q"]
    assert list(zip(q["layer"], q["head"], q["dim"], strict=False)) == [(1, 2, 7)]
    assert int(q["band"].iloc[0]) == 7  # NeoX: dim 7 of rotary_dim 16 is band 7
    assert mv.band_counts("q")[7] == 1 and mv.band_counts("q").sum() == 1
    _, cache = model.run_with_cache(toks)
    M = cache["blocks.1.attn.hook_rot_q"].double().square().sum((0, 1)).sqrt()
    torch.testing.assert_close(mv.M("q")[1], M)
    halves = massive_values(model, toks[:1], progress=False).merge(
        massive_values(model, toks[1:], progress=False)
    )
    torch.testing.assert_close(halves.M("q"), mv.M("q"))


def test_mean_ablation_and_matched_control():
    model = _model_with_massive_dim()
    toks = torch.randint(0, 50, (2, 24))
    mv = massive_values(model, toks, progress=False)
    masks = {(1, "rot_q"): mv.massive("q")[1]}
    ctrl = control_masks(masks, seed=3)[(1, "rot_q")]
    assert torch.equal(ctrl.sum(-1), masks[(1, "rot_q")].sum(-1)) and not (ctrl & masks[(1, "rot_q")]).any()
    with MeanAblateDims(model, masks):
        _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_rot_q")
    x = cache["blocks.1.attn.hook_rot_q"][:, :, 2, 7]
    torch.testing.assert_close(x, x.mean(1, keepdim=True).expand_as(x))
    ab = massive_ablation(model, toks, mv, n_control=2, progress=False)
    with torch.no_grad():
        base = float(model(toks, return_type="loss"))
    assert ab.baseline == pytest.approx(base, rel=1e-5)
    assert ab.n_dims == 1 and len(ab.control) == 2 and ab.massive != ab.baseline
    assert len(ab.to_dataframe()) == 4
    assert ab.plot().axes[0].get_ylabel()


def test_stacked_conditions_equal_one_forward_each():
    """Conditions stacked along the batch (the default) give the losses of one forward per condition."""
    model = _model_with_massive_dim()
    toks = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(5))
    mv = massive_values(model, toks, progress=False)
    stacked = massive_ablation(model, toks, mv, n_control=3, window=12, progress=False)
    alone = massive_ablation(model, toks, mv, n_control=3, window=12, progress=False, max_batch_tokens=1)
    assert stacked.n_tokens == alone.n_tokens == 2 * 2 * 11
    got = [stacked.baseline, stacked.massive, *stacked.control]
    want = [alone.baseline, alone.massive, *alone.control]
    assert got == pytest.approx(want, rel=1e-6)
    assert len(set(round(x, 6) for x in want)) > 1  # the conditions really differ


def test_ablation_on_the_first_windows_uses_their_own_baseline():
    """``ablation_windows=1`` (the report uses 2): the experiment and its baseline cover the first window
    only, and equal the ablation run by hand on that window."""
    from rope_interp.analyses import registry

    model = _model_with_massive_dim()
    toks = torch.randint(0, 50, (1, 36), generator=torch.Generator().manual_seed(2))
    opts = {"massive": {"ablation_windows": 1}}
    res = registry.run(model, toks, opts, window=12, progress=False)["massive"]
    by_hand = massive_ablation(model, toks[:, :12], res.values, n_control=2, progress=False)
    a = res.ablation
    assert a.n_tokens == by_hand.n_tokens == 11
    assert [a.baseline, a.massive, *a.control] == pytest.approx(
        [by_hand.baseline, by_hand.massive, *by_hand.control], rel=1e-5
    )
    full = registry.run(model, toks, {"massive": {}}, window=12, progress=False)["massive"].ablation
    assert full.n_tokens == 33
    # a one-token window (no next-token loss) still counts as one of the first windows
    batches = [toks[:, :1], toks[:, :12], toks[:, 12:24]]
    short = registry.run(model, batches, opts | {"massive": {"ablation_windows": 2}}, progress=False)[
        "massive"
    ]
    assert short.ablation.n_tokens == 11


def test_massive_none_found_is_a_clear_error():
    model = tiny_model()
    mv = massive_values(model, torch.randint(0, 50, (1, 16)), lam=100.0, progress=False)
    with pytest.raises(ValueError, match="no massive values"):
        massive_ablation(model, torch.randint(0, 50, (1, 16)), mv, progress=False)
