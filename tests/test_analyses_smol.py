"""The analyses end to end on the embedded SmolLM2-135M over >= 2,000 tokens of the bundled corpus."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import (
    frequency_usage,
    iter_windows,
    massive_ablation,
    massive_values,
    offset_features,
    positional_heads,
)
from rope_interp.data import load_text

pytestmark = pytest.mark.slow

WINDOW = 512


@pytest.fixture(scope="module")
def corpus_windows(smol):
    """The first 2,048 corpus tokens as four windows of 512 (each starting with BOS)."""
    wins = list(iter_windows(smol, load_text(), window=WINDOW))[:4]
    assert sum(w.shape[1] for w in wins) >= 2000
    assert all(int(w[0, 0]) == smol.tokenizer.bos_token_id for w in wins)
    return wins


def test_corpus_is_long_enough(smol):
    assert smol.to_tokens(load_text()).shape[1] >= 2500


def test_usage_low_frequencies_carry_the_norm_values_do_not(smol, corpus_windows):
    with torch.no_grad():
        u = frequency_usage(smol, corpus_windows, layers=[5], progress=False)
    assert u.q_norm.shape == (1, 9, 32) and u.k_norm.shape == (1, 3, 32) and u.n_tokens >= 2000
    assert torch.isfinite(u.q_norm).all() and (u.q_norm > 0).all()
    # Barbero et al.: q/k norm concentrates in the lowest frequencies; values (no RoPE) show no such slope
    assert (u.low_high_ratio("q") > 1.2).all() and (u.low_high_ratio("k") > 1.2).all()
    assert ((u.low_high_ratio("v") - 1).abs() < 0.2).all()


def test_positional_heads_end_to_end(smol, corpus_windows):
    with torch.no_grad():
        r = positional_heads(
            smol, corpus_windows, layers=[0, 1, 2], ablate_k=4, causal_windows=1, progress=False
        )
    assert r.scores.shape == (3, 9, 2) and r.n_tokens >= 2000
    assert ((r.scores >= 0) & (r.scores <= 1)).all() and torch.isfinite(r.margin).all()
    found = r.found()
    assert found, "expected at least one diagonal or previous-token head in layers 0-2"
    for c in r.causal:
        assert math.isfinite(c["top_k_survival"]) and math.isfinite(c["bottom_k_survival"])
    df = r.to_dataframe()
    assert df["positional"].sum() == len(found)


def test_offset_features_respect_the_bound(smol, corpus_windows):
    with torch.no_grad():
        r = offset_features(smol, corpus_windows, layers=[5, 6], context_length=2048, progress=False)
    assert r.predicted[0].nonzero().flatten().tolist() == list(range(19, 32))
    assert torch.isfinite(r.angle).all()
    # the biggest norm spike of every analysed layer sits in a band the bound allows
    spike_band = r.norm_ratio("q").argmax(-1)
    assert (spike_band >= 19).all() and (r.norm_ratio("q").amax(-1) > 2).all()
    # sign-stable offset features only where theta (L - 1) < pi (by the derivation)
    assert not (r.sign[..., :19] != 0).any()
    t = r.table()
    assert t.loc[19:, "observed_sign_stable"].sum() > 0


def test_massive_values_found_in_low_frequency_bands(smol, corpus_windows):
    with torch.no_grad():
        mv = massive_values(smol, corpus_windows, layers=[3, 4, 5], progress=False)
        ab = massive_ablation(smol, corpus_windows[0][:, :256], mv, n_control=1, progress=False)
    counts = mv.band_counts("q") + mv.band_counts("k")
    assert counts.sum() > 0
    assert counts[:19].sum() == 0  # all in bands that turn less than half a turn over 2,048 tokens
    assert math.isfinite(ab.baseline) and ab.baseline < ab.massive
    assert ab.massive - ab.baseline > abs(ab.control[0] - ab.baseline)
