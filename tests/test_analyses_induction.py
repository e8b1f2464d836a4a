"""Induction heads and the induction circuit through the bands (frequency entropy: test_analyses_entropy.py).

A hand-built two-layer attention-only rotary model carries a textbook induction circuit:
layer 0 is a previous-token head built from the rotary bands alone (q and k read a
constant direction; its QK peaks at offset 1), its OV writes the previous token into a
slot of the residual; layer 1 matches the current token against that slot in the
pass-through (unrotated) dims and copies the attended token to the logits.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from rope_interp.analyses import (
    FrequencyEntropy,
    InductionCircuit,
    InductionHeads,
    entropy,
    frequency_entropy,
    induction_circuit,
    induction_heads,
)
from rope_interp.analyses.induction import repeated_tokens, report_section
from rope_interp.errors import ContextLengthError, ParameterError, TokenError
from rope_interp.model.testing import tiny_layout_model, tiny_model
from rope_interp.read.decompose import band_scores

V = 16  # vocabulary of the hand-built model; BOS = 0


def hand_built_induction_model(a: float = 200.0, b: float = 100.0, c: float = 10.0):
    """Layer 0 head 0: previous-token head from the 8 rotary bands; layer 1 head 0: induction head."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    d_model = 3 * V + 1  # token one-hot | previous token | copied token | constant
    prev, out, const = V, 2 * V, 3 * V
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=1,
        d_head=32,
        rotary_dim=16,
        n_ctx=32,
        d_vocab=V,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="rotary",
        rotary_base=10000,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    theta = 10000 ** (-torch.arange(8) / 8)  # band frequencies, band 0 = 1 rad/token
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[torch.arange(V), torch.arange(V)] = 1
        model.embed.W_E[:, const] = 1
        a0 = model.blocks[0].attn
        # band j = dims (j, j + 8); q_j conj(k_j) = a e^{-i theta_j}: score a cos(theta_j (m - n - 1)), peak at n = m - 1
        a0.W_K[0, const, :8] = 1
        a0.W_Q[0, const, :8] = a * torch.cos(theta)
        a0.W_Q[0, const, 8:16] = -a * torch.sin(theta)
        a0.W_V[0, torch.arange(V), torch.arange(V)] = 1
        a0.W_O[0, torch.arange(V), prev + torch.arange(V)] = 1
        a1 = model.blocks[1].attn
        a1.W_Q[0, torch.arange(V), 16 + torch.arange(V)] = b  # pass-through dims 16..31: no rotation
        a1.W_K[0, prev + torch.arange(V), 16 + torch.arange(V)] = 1
        a1.W_V[0, torch.arange(V), torch.arange(V)] = 1
        a1.W_O[0, torch.arange(V), out + torch.arange(V)] = 1
        model.unembed.W_U[out + torch.arange(V), torch.arange(V)] = c
    return model


@pytest.fixture(scope="module")
def hand():
    return hand_built_induction_model()


# ---- induction scores -----------------------------------------------------------------------------------


def test_hand_built_induction_head_scores_one(hand):
    r = induction_heads(hand, n=12, batch=4, seed=1)
    assert r.scores[1, 0] == pytest.approx(1.0, abs=1e-3)
    assert r.scores[0, 0] < 0.01  # the previous-token head does not induct
    assert [(layer, h) for layer, h, _ in r.found()] == [(1, 0)]
    share, share_pass = r.shares()
    # its QK matches content in the pass-through dims only: no band takes part
    assert share_pass[1, 0] == pytest.approx(1.0, abs=1e-4)
    assert share[1, 0].abs().max() < 1e-4


def test_score_is_mean_attention_on_the_token_after_the_previous_occurrence():
    model = tiny_layout_model("gqa")
    r = induction_heads(model, n=9, batch=3, seed=2)
    _, cache = model.run_with_cache(r.tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    n = 9
    for layer in range(model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]  # [b, h, q, k]
        want = torch.stack([pat[:, :, p, p - n + 1] for p in range(n + 1, 2 * n + 1)], -1).mean((0, 2))
        torch.testing.assert_close(r.scores[layer], want, atol=1e-5, rtol=1e-5)


def test_random_head_scores_near_chance():
    # small random weights: near-uniform attention; chance = mean over repeat queries of 1/(p+1)
    model = tiny_model(init_range=0.02, n_layers=2, seed=3)
    r = induction_heads(model, n=20, batch=8)
    assert r.chance == pytest.approx(sum(1 / (p + 1) for p in range(21, 41)) / 20)
    assert (r.scores - r.chance).abs().max() < 0.1 * r.chance
    assert r.found() == []


def _margin_brute_force(per: torch.Tensor, n: int) -> torch.Tensor:
    """Per-term margin of key p-n+1 over the mean of keys 1..p without it, averaged over p = n+1..2n."""
    acc = 0
    for p in range(n + 1, 2 * n + 1):
        others = [x for x in range(1, p + 1) if x != p - n + 1]
        acc = acc + (per[..., p, p - n + 1] - per[..., p, others].mean(-1)).mean(0)
    return acc / n


def test_band_shares_sum_to_the_margin(layout_model):
    """Exact: per-band margins equal the brute-force decomposition and sum (with the pass-through) to the margin."""
    n = 7
    r = induction_heads(layout_model, n=n, batch=2, seed=4)
    for layer in range(layout_model.cfg.n_layers):
        bs = band_scores(layout_model, r.tokens, layer, dtype=torch.float64)
        bands = _margin_brute_force(bs.per_band.transpose(1, 2), n)  # [band, head]
        total = _margin_brute_force(bs.total(), n)  # [head]
        # float32 q/k in the analysis, float64 brute force: tolerance 1e-4 absolute + relative
        torch.testing.assert_close(r.margin[layer], bands.T.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(r.total_margin()[layer], total.float(), atol=1e-4, rtol=1e-4)
    share, share_pass = r.shares()
    ok = r.total_margin().abs() > 1e-3
    torch.testing.assert_close((share.sum(-1) + share_pass)[ok], torch.ones(int(ok.sum())), atol=1e-4, rtol=0)


def test_repeated_tokens_and_validation(hand):
    t = repeated_tokens(hand, n=12, batch=3, seed=0)
    assert t.shape == (3, 25) and (t[:, 0] == 0).all()
    assert all(len(set(row[1:13].tolist())) == 12 and 0 not in row[1:].tolist() for row in t)
    assert torch.equal(t, repeated_tokens(hand, n=12, batch=3, seed=0))
    with pytest.raises(ContextLengthError, match="n <= 15"):
        repeated_tokens(hand, n=16)
    with pytest.raises(ParameterError, match="vocabulary"):
        repeated_tokens(tiny_model(d_vocab=10), n=12)
    bad = t.clone()
    bad[:, -1] = (bad[:, -1] + 1) % V
    with pytest.raises(TokenError, match="must repeat"):
        induction_heads(hand, bad)
    with pytest.raises(TokenError, match="odd length"):
        induction_heads(hand, t[:, :-1])
    with pytest.raises(ParameterError, match="threshold"):
        induction_heads(hand, t, threshold=1.5)
    with pytest.raises(ParameterError, match="finite"):
        induction_heads(hand, t, threshold=float("nan"))


# ---- the circuit ------------------------------------------------------------------------------------------


def test_circuit_hand_built(hand):
    r = induction_heads(hand, n=12, batch=4, seed=1)
    c = induction_circuit(hand, r, top=1, k=4, progress=False)
    assert [(layer, h) for layer, h, _ in c.induction] == [(1, 0)]
    assert [(layer, h) for layer, h, _ in c.previous] == [(0, 0)]  # found by positional_heads
    df = c.to_dataframe().set_index(["group", "condition"])
    base = df.loc[("none", "unablated")]
    assert base.repeat_loss < 0.01 and base.first_half_loss > 2.0  # copies the repeat; random first half
    # the previous-token head is built from the high bands: removing them breaks the circuit, the low ones do not
    hi = df.loc[("previous-token heads", "4 highest bands zeroed in q")]
    lo = df.loc[("previous-token heads", "4 lowest bands zeroed in q")]
    assert hi.repeat_loss > 1.0 and hi.induction_score < 0.5
    assert lo.repeat_loss < 0.05 and lo.induction_score > 0.95
    # the induction head's QK uses no band: zeroing bands of its query changes nothing
    for cond in ("4 highest bands zeroed in q", "4 lowest bands zeroed in q"):
        assert df.loc[("induction heads", cond)].repeat_loss == pytest.approx(base.repeat_loss, abs=1e-6)
    ko = df.loc[("induction heads", "knocked out (z = 0)")]
    assert ko.repeat_loss == pytest.approx(math.log(V), abs=1e-3)  # uniform logits: nothing copied
    assert ko.induction_score == pytest.approx(base.induction_score)  # its own pattern is untouched
    summary = json.loads(json.dumps(c.summary()))
    assert len(summary["conditions"]) == len(c.rows)  # one record per (group, condition)
    assert summary["conditions"]["previous-token heads: 4 highest bands zeroed in q"]["repeat_loss"] > 1.0


def test_circuit_massive_dims_and_controls_on_a_random_model():
    model = tiny_model(n_layers=3, seed=5)
    r = induction_heads(model, n=10, batch=2)
    c = induction_circuit(model, r, top=2, k=2, lam=2.0, n_control=2, previous_threshold=0.0, progress=False)
    groups = [row["group"] for row in c.rows]
    assert groups.count("massive dims (Jin)") == 1 and groups.count("massive control") == 2
    assert c.n_massive_dims > 0 and sum(c.massive_per_band) == c.n_massive_dims
    assert all(math.isfinite(row["repeat_loss"]) for row in c.rows)
    with pytest.raises(ParameterError, match="k <= 4"):
        induction_circuit(model, r, k=5, progress=False)


def test_report_sections_and_frames(hand):
    import matplotlib.figure

    r = induction_heads(hand, n=12, batch=2)
    c = induction_circuit(hand, r, top=1, k=2, progress=False)
    fe = frequency_entropy(
        tiny_model(), torch.randint(0, 50, (2, 33)), ablate_k=2, n_control=1, progress=False
    )
    for res, cls in ((r, InductionHeads), (c, InductionCircuit), (fe, FrequencyEntropy)):
        assert isinstance(res, cls)
        items = (entropy.report_section if cls is FrequencyEntropy else report_section)(res)
        assert isinstance(items[0], str) and "Cannot show" in " ".join(i for i in items if isinstance(i, str))
        assert any(isinstance(i, matplotlib.figure.Figure) for i in items)
        assert any(isinstance(i, pd.DataFrame) for i in items)
        assert len(res.to_dataframe()) > 0
        json.dumps(res.summary())
    with pytest.raises(TypeError):
        report_section(object())


# ---- the embedded model -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smol_induction_heads(smol):
    with torch.no_grad():
        r = induction_heads(smol, n=40, batch=4)
    found = [(layer, h) for layer, h, _ in r.found()]
    assert (18, 6) in found and (17, 3) in found
    assert r.scores[18, 6] > 0.5 and r.scores[17, 3] > 0.5
    # L18H6's QK margin lives in the lowest-frequency bands: dropping the 8 lowest band terms from its
    # scores (exact decomposition, this head only) kills its induction attention, the 8 highest do not
    n = r.n
    bs = band_scores(smol, r.tokens, 18, heads=[6])
    q = torch.arange(n + 1, 2 * n + 1)

    def score(drop):
        return float(bs.pattern(drop=drop)[:, 0, q, q - n + 1].mean())

    assert score([]) == pytest.approx(float(r.scores[18, 6]), abs=1e-3)
    assert score(list(range(24, 32))) < 0.2 < 0.7 < score(list(range(8)))
    assert r.shares()[0][r.layers.index(18), 6, 16:].sum() > 0.9
