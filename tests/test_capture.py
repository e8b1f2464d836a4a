"""Capture callbacks, the recorder and streaming statistics."""

import pytest
import torch

from rope_interp import BandCapture, BandStats, band_hooks, band_view
from rope_interp.bands import band_norms
from rope_interp.model.testing import tiny_model


def _raw(model, tokens, names):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return cache


def test_capture_equals_raw_hook_values_with_selection(layout_model):
    cfg = layout_model.cfg
    tokens = torch.randint(0, cfg.d_vocab, (2, 12))
    heads, bands = [cfg.n_heads - 1, 0], [0, cfg.rotary_dim // 2 - 1]
    with BandCapture(
        layout_model, layers=[1], sites=["rot_q", "rot_k", "q"], heads=heads, bands=bands
    ) as cap:
        layout_model(tokens)
    raw = _raw(layout_model, tokens, {"blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"})
    full_q = band_view(raw["blocks.1.attn.hook_rot_q"], cfg.rotary_dim, cfg.rotary_adjacent_pairs)
    full_k = band_view(raw["blocks.1.attn.hook_rot_k"], cfg.rotary_dim, cfg.rotary_adjacent_pairs)
    assert torch.equal(cap[1, "rot_q"], full_q[:, :, heads][:, :, :, bands])
    kv = list(dict.fromkeys(int(cap.spec.kv_map[h]) for h in heads))
    assert torch.equal(cap[1, "rot_k"], full_k[:, :, kv][:, :, :, bands])
    with pytest.raises(KeyError, match="nothing captured"):
        cap[0, "rot_q"]


def test_capture_is_hook_free_afterwards_even_on_error():
    model = tiny_model()
    tokens = torch.tensor([[1, 2, 3]])
    before = model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with BandCapture(model):
            model(tokens)
            raise RuntimeError("boom")
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert torch.equal(model(tokens), before)


def test_capture_as_fwd_hooks_list_and_callbacks():
    model = tiny_model()
    cap = BandCapture(model, layers=0)
    model.run_with_hooks(torch.tensor([[4, 5, 6, 7]]), fwd_hooks=cap.fwd_hooks())
    assert cap[0, "rot_q"].shape == (1, 4, 4, 8, 2)
    norms = []
    hooks = band_hooks(model, lambda a: norms.append(band_norms(a.bands)), layers=[1], sites="k")
    model.run_with_hooks(torch.tensor([[4, 5, 6, 7]]), fwd_hooks=hooks)
    assert len(norms) == 1 and norms[0].shape == (1, 4, 2, 8)


def test_bad_sites_and_indices():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown site"):
        BandCapture(model, sites=["rot_x"])
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        BandCapture(model, layers=[5])
    with pytest.raises(IndexError, match="band"):
        BandCapture(model, bands=[99])


def _reference_stats(model, tokens, site, layer, start_pos=0):
    cap = BandCapture(model, layers=[layer], sites=[site])
    with cap:
        model(tokens)
    x = cap[layer, site][:, start_pos:].double().flatten(0, 1)  # [tokens, head, band, 2]
    return x


@pytest.mark.parametrize("site", ["rot_q", "rot_k", "v", "q"])
def test_stats_equal_direct_computation(layout_model, site):
    tokens = torch.randint(0, layout_model.cfg.d_vocab, (3, 10))
    stats = BandStats(layout_model, sites=[site], start_pos=1).update(tokens)
    x = _reference_stats(layout_model, tokens, site, 1, start_pos=1)
    assert stats.n_tokens == x.shape[0]
    # window sums are float32 (see BandStats): relative 1e-5, absolute 1e-6 for entries near 0
    tol = dict(rtol=1e-5, atol=1e-6)
    assert torch.allclose(stats.mean_norm(site)[1], band_norms(x).mean(0), **tol)
    assert torch.allclose(stats.mean_vector(site)[1], x.mean(0), **tol)
    assert torch.allclose(
        stats.second_moment(site)[1], torch.einsum("thbc,thbd->hbcd", x, x) / x.shape[0], **tol
    )
    cons = stats.consistency(site)
    assert ((cons >= 0) & (cons <= 1 + 1e-9)).all()


def test_stats_streaming_two_halves_equal_one_pass():
    model = tiny_model()
    tokens = torch.randint(0, 50, (4, 16))
    whole = BandStats(model).update(tokens)
    a = BandStats(model).update(tokens[:2])
    b = BandStats(model).update(tokens[2:])
    a.merge(b)
    for site in whole.sites:
        assert torch.allclose(a.mean_norm(site), whole.mean_norm(site))
        assert torch.allclose(a.second_moment(site), whole.second_moment(site))
    assert a.n_tokens == whole.n_tokens == 64


def test_stats_mask_excludes_padding_and_memory_is_constant():
    model = tiny_model()
    tokens = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 8:] = False
    masked = BandStats(model).update(tokens, mask=mask)
    ref = BandStats(model).update(tokens[:1]).merge(BandStats(model).update(tokens[1:, :8]))
    assert masked.n_tokens == 24
    assert torch.allclose(masked.mean_vector("rot_q"), ref.mean_vector("rot_q"))
    sizes = [m.sum_outer.numel() for m in masked.moments.values()]
    masked.update(torch.randint(0, 50, (2, 60)))
    assert sizes == [m.sum_outer.numel() for m in masked.moments.values()]
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_stats_errors():
    model = tiny_model()
    s = BandStats(model, sites=["rot_q"])
    with pytest.raises(ValueError, match="no tokens"):
        s.mean_norm("rot_q")
    s.update(torch.tensor([[1, 2]]))
    with pytest.raises(KeyError, match="not tracked"):
        s.mean_norm("rot_k")
    with pytest.raises(ValueError, match="cannot merge"):
        s.merge(BandStats(model, sites=["rot_k"]))
    df = s.to_dataframe("rot_q")
    assert len(df) == 2 * 4 * 8 and set(df.columns) >= {"layer", "head", "band", "mean_norm", "consistency"}


def _relative_errors(stats, model, tokens, site):
    """max |error| / max |value| of each statistic against float64 sums of the captured bands."""
    x = torch.stack(
        [_reference_stats(model, tokens, site, layer) for layer in stats.layers]
    )  # [L, t, h, B, 2]
    ref = {
        "mean_norm": band_norms(x).mean(1),
        "mean_vector": x.mean(1),
        "second_moment": torch.einsum("lthbc,lthbd->lhbcd", x, x) / x.shape[1],
    }
    return {k: float((getattr(stats, k)(site) - r).abs().max() / r.abs().max()) for k, r in ref.items()}


def test_stats_float32_windows_match_a_float64_reference_over_many_windows():
    """8 windows of 512 tokens (4096 in all), values scaled by 100: relative error <= 1e-5."""
    model = tiny_model(n_ctx=512, init_range=2.0)
    stats = BandStats(model)
    windows = [torch.randint(0, 50, (1, 512), generator=torch.Generator().manual_seed(i)) for i in range(8)]
    for w in windows:
        stats.update(w)
    assert stats.n_tokens == 4096
    tokens = torch.cat(windows)
    for site in stats.sites:
        errs = _relative_errors(stats, model, tokens, site)
        assert max(errs.values()) <= 1e-5, (site, errs)


@pytest.mark.slow
def test_stats_accuracy_on_the_embedded_model(smol, english_tokens):
    """512 real tokens, all 30 layers: relative error <= 1e-5 (measured ~1.4e-7)."""
    tokens = english_tokens[:, :512]
    stats = BandStats(smol).update(tokens)
    for site in stats.sites:
        errs = _relative_errors(stats, smol, tokens, site)
        assert max(errs.values()) <= 1e-5, (site, errs)
