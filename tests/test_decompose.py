"""The exact per-band decomposition of attention scores."""

import pytest
import torch

from rope_interp import ContextLengthError, LayerError, band_score_terms, band_scores, iter_band_scores
from rope_interp.errors import TokenError
from rope_interp.model.testing import tiny_model


def _hook_scores(model, tokens, layer):
    name = f"blocks.{layer}.attn.hook_attn_scores"
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name]


def test_decomposition_sums_to_hook_attn_scores(layout_model):
    tokens = torch.randint(0, layout_model.cfg.d_vocab, (2, 24))
    for layer in range(layout_model.cfg.n_layers):
        bs = band_scores(layout_model, tokens, layer)
        ref = _hook_scores(layout_model, tokens, layer)
        assert bs.per_band.shape == (2, layout_model.cfg.n_heads, layout_model.cfg.rotary_dim // 2, 24, 24)
        visible = torch.isfinite(ref)
        assert torch.equal(visible[0, 0], bs.causal_mask())
        assert torch.allclose(bs.total()[visible], ref[visible], atol=1e-5, rtol=1e-5)
        assert torch.allclose(bs.scores(), ref, atol=1e-5, rtol=1e-5)  # same -inf pattern too
        if layout_model.cfg.rotary_dim == layout_model.cfg.d_head:
            assert torch.count_nonzero(bs.remainder) == 0


def test_subsets_and_chunks_agree_with_full(layout_model):
    tokens = torch.randint(0, layout_model.cfg.d_vocab, (1, 21))
    full = band_scores(layout_model, tokens, 1)
    heads, bands = [layout_model.cfg.n_heads - 1, 0], [2, 0]
    sub = band_scores(layout_model, tokens, 1, heads=heads, bands=bands)
    assert torch.allclose(sub.per_band, full.per_band[:, heads][:, :, bands], atol=1e-6)
    assert torch.allclose(sub.total(), full.total()[:, heads], atol=1e-5)
    for chunk in iter_band_scores(layout_model, tokens, 1, chunk_size=8):
        q0, m, n = chunk.q_start, *chunk.per_band.shape[-2:]
        assert n == q0 + m
        assert torch.allclose(chunk.per_band, full.per_band[..., q0 : q0 + m, :n], atol=1e-6)
        assert torch.allclose(chunk.scores(), full.scores()[..., q0 : q0 + m, :n], atol=1e-5)


def test_per_band_term_is_norm_product_times_cosine():
    """term_i(m, n) = |q_i||k_i| cos(phi_i + theta_i (n - m)) / scale (pre-rotation angles)."""
    from rope_interp import BandCapture, RotaryBands
    from rope_interp.bands import band_angles, band_norms

    model = tiny_model(n_key_value_heads=None)
    tokens = torch.randint(0, 50, (1, 9))
    spec = RotaryBands.from_model(model)
    with BandCapture(model, layers=[0], sites=["q", "k"]) as cap:
        model(tokens)
    q, k = cap[0, "q"][0].double(), cap[0, "k"][0].double()  # [pos, head, band, 2]
    phi = band_angles(k)[None] - band_angles(q)[:, None]  # [m, n, head, band]
    offset = torch.arange(9)[None, :] - torch.arange(9)[:, None]
    pred = (
        band_norms(q)[:, None]
        * band_norms(k)[None]
        * torch.cos(phi + spec.freqs[0] * offset[..., None, None])
    )
    pred = pred.permute(2, 3, 0, 1) / spec.attn_scale[0]
    bs = band_scores(model, tokens, 0)
    assert torch.allclose(bs.per_band[0].double(), pred, atol=1e-5)


def test_softcap_model_scores_match_after_cap():
    model = tiny_model(attn_scores_soft_cap=0.5)
    tokens = torch.randint(0, 50, (1, 10))
    bs = band_scores(model, tokens, 0)
    ref = _hook_scores(model, tokens, 0)
    assert torch.allclose(bs.scores(), ref, atol=1e-6)
    assert bs.total().abs().max() > 0


def test_drop_and_keep_only():
    model = tiny_model()
    bs = band_scores(model, torch.randint(0, 50, (1, 8)), 0)
    assert torch.allclose(bs.scores(drop=range(8)), bs.scores(keep_only=[]))
    p = bs.pattern(drop=[0])
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]))
    df = bs.to_dataframe()
    assert len(df) == 4 * 8 and abs(df.groupby("head").share_abs.sum() - 1).max() < 1e-6


def test_pure_terms_gqa_pairs_heads_like_repeat_interleave():
    q = torch.randn(1, 4, 6, 3, 2)
    k = torch.randn(1, 4, 2, 3, 2)
    terms, _ = band_score_terms(q, k, 1.0)
    k_full = torch.repeat_interleave(k, 3, dim=2)
    ref = torch.einsum("bmhic,bnhic->bhimn", q, k_full)
    assert torch.allclose(terms, ref, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        band_score_terms(torch.randn(1, 2, 5, 3, 2), k, 1.0)


def test_bad_input_errors():
    model = tiny_model(n_ctx=16)
    with pytest.raises(LayerError, match="layer 2 is out of range"):
        band_scores(model, torch.tensor([[1, 2]]), 2)
    with pytest.raises(ContextLengthError, match="exceed the model's context"):
        band_scores(model, torch.zeros(1, 17, dtype=torch.long), 0)
    with pytest.raises(MemoryError, match="iter_band_scores"):
        band_scores(model, torch.zeros(1, 16, dtype=torch.long), 0, max_bytes=100)
    with pytest.raises(LayerError, match="head"):
        band_scores(model, torch.tensor([[1, 2]]), 0, heads=[4])
    with pytest.raises(ValueError, match="empty"):
        band_scores(model, torch.zeros(1, 0, dtype=torch.long), 0)
    with pytest.raises(TokenError, match="integer"):
        band_scores(model, torch.zeros(1, 3), 0)
