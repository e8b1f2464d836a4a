"""Frequency usage and the shared input handling of the analyses (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from rope_interp.analyses import EmptyInputError, frequency_usage, iter_windows
from rope_interp.bands import band_norms, band_view
from rope_interp.errors import ContextLengthError, LayerError
from rope_interp.model.testing import tiny_model


def test_iter_windows_cuts_tokens_and_batches():
    model = tiny_model()
    toks = torch.randint(0, 50, (2, 40))
    assert [tuple(w.shape) for w in iter_windows(model, toks, window=16)] == [(2, 16), (2, 16), (2, 8)]
    parts = list(iter_windows(model, [toks[:, :10], toks[:, 10:]]))
    assert torch.equal(torch.cat(parts, 1), toks)
    gen = (t for t in [toks[:1], toks[1:]])
    assert len(list(iter_windows(model, gen))) == 2


def test_bad_input_errors():
    model = tiny_model(n_ctx=32)
    with pytest.raises(EmptyInputError):
        list(iter_windows(model, torch.zeros(1, 0, dtype=torch.long)))
    with pytest.raises(EmptyInputError):
        list(iter_windows(model, []))
    with pytest.raises(EmptyInputError, match="text is empty"):
        frequency_usage(model, "  \n", progress=False)
    with pytest.raises(ContextLengthError):
        frequency_usage(model, torch.randint(0, 50, (1, 40)), progress=False)
    with pytest.raises(ContextLengthError):
        frequency_usage(model, torch.randint(0, 50, (1, 40)), window=64, progress=False)
    with pytest.raises(LayerError, match="layer 5 is out of range"):
        frequency_usage(model, torch.randint(0, 50, (1, 8)), layers=[5], progress=False)


def test_usage_matches_captured_norms(layout_model):
    toks = torch.randint(0, 50, (2, 12))
    u = frequency_usage(layout_model, toks, progress=False)
    cfg = layout_model.cfg
    _, cache = layout_model.run_with_cache(toks)
    for layer in range(cfg.n_layers):
        for site, got in (("rot_q", u.q_norm), ("rot_k", u.k_norm), ("v", u.v_norm)):
            x = cache[f"blocks.{layer}.attn.hook_{site}"]
            want = band_norms(band_view(x, cfg.rotary_dim, cfg.rotary_adjacent_pairs)).mean((0, 1))
            torch.testing.assert_close(got[layer], want.double(), rtol=1e-5, atol=1e-6)
    assert u.n_tokens == 24
    assert u.per_layer("q").shape == (cfg.n_layers, cfg.rotary_dim // 2)
    torch.testing.assert_close(u.share("k").sum(-1), torch.ones(cfg.n_layers, dtype=torch.float64))


def test_usage_streaming_two_halves_equal_one_pass():
    model = tiny_model()
    toks = torch.randint(0, 50, (3, 20))
    whole = frequency_usage(model, [toks[:1], toks[1:]], progress=False)
    merged = frequency_usage(model, toks[:1], progress=False).merge(
        frequency_usage(model, toks[1:], progress=False)
    )
    one = frequency_usage(model, toks, progress=False)
    for r in (whole, merged):
        torch.testing.assert_close(r.q_norm, one.q_norm)
        torch.testing.assert_close(r.v_norm, one.v_norm)
        assert r.n_tokens == one.n_tokens == 60


def test_usage_table_and_figures():
    model = tiny_model()
    u = frequency_usage(model, torch.randint(0, 50, (1, 10)), layers=[1], start_pos=1, progress=False)
    assert u.n_tokens == 9
    df = u.to_dataframe()
    assert set(df["site"]) == {"q", "k", "v"} and len(df) == 4 * 8 + 2 * 8 + 2 * 8
    for fig in (u.plot(), u.plot(layer=1)):
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>":
                assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    with pytest.raises(ValueError, match="not analysed"):
        u.plot(layer=0)
