"""Induction heads, the induction circuit through the bands, and frequency entropy.

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
    frequency_entropy,
    induction_circuit,
    induction_heads,
)
from rope_interp.analyses.induction import (
    ZeroQueryBands,
    extreme_entries,
    matched_control,
    power_spectrum,
    repeated_tokens,
    report_section,
    spectral_entropy,
)
from rope_interp.decompose import band_scores
from rope_interp.errors import ContextLengthError, ParameterError, TokenError
from rope_interp.interventions import ablate_bands
from rope_interp.spec import RotaryBands
from rope_interp.testing import tiny_layout_model, tiny_model

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


def test_zero_query_bands_equals_ablate_bands_on_q():
    model = tiny_layout_model("gqa")
    spec = RotaryBands.from_model(model)
    toks = torch.randint(0, 50, (2, 12))
    mask = torch.zeros(spec.n_heads, spec.n_bands, dtype=torch.bool)
    mask[[1, 4], :3] = True
    with ZeroQueryBands(model, {1: mask}):
        a = model(toks)
    with ablate_bands(model, [0, 1, 2], layers=[1], heads=[1, 4], target="q", mode="zero"):
        b = model(toks)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a, model(toks))
    with pytest.raises(ParameterError, match="bool"):
        ZeroQueryBands(model, {1: mask.float()})


# ---- frequency entropy ------------------------------------------------------------------------------------


def test_entropy_of_a_pure_tone_is_minimal():
    t = torch.arange(128.0)
    tone = 3.0 + torch.cos(2 * math.pi * 9 * t / 128 + 0.4)  # an offset (the norm is positive) is removed
    noise = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    h_tone = spectral_entropy(power_spectrum(tone))
    h_noise = spectral_entropy(power_spectrum(noise).sum(0))
    assert float(h_tone) < 1e-9
    assert float(h_noise) > 0.95  # summed periodograms of white noise: nearly flat
    single = spectral_entropy(power_spectrum(noise))
    assert (single > h_tone).all() and (single < 1).all()
    assert spectral_entropy(power_spectrum(torch.ones(32))).isnan()  # constant: no spectrum


def test_frequency_entropy_matches_direct_computation():
    model = tiny_layout_model("partial_gptj")
    spec = RotaryBands.from_model(model)
    toks = torch.randint(0, 50, (3, 40))
    fe = frequency_entropy(model, toks, ablate_k=None, start_pos=1, progress=False)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_rot_q"))
    for layer in range(model.cfg.n_layers):
        q = cache[f"blocks.{layer}.attn.hook_rot_q"].double()[:, 1:]  # [b, pos, head, d]
        norm = (
            q[..., spec.dims[:, 0]].square() + q[..., spec.dims[:, 1]].square()
        ).sqrt()  # [b, pos, head, band]
        x = norm - norm.mean(1, keepdim=True)
        psd = torch.fft.rfft(x, dim=1).abs().square()[:, 1:].sum(0)  # [freq, head, band]
        p = psd / psd.sum(0)
        want = -(p * p.log()).sum(0) / math.log(psd.shape[0])
        torch.testing.assert_close(fe.entropy[layer], want.float(), atol=1e-5, rtol=1e-5)
    assert fe.seq_len == 40 and fe.n_tokens == 120
    period, share = fe.peak()
    assert ((period >= 39 / 19) & (period <= 39) & (share > 0) & (share <= 1)).all()


def test_peak_of_a_tone_in_the_model_pipeline():
    """A tone planted in the q norm of one band is found at its period with entropy ~0 (a pure-tone check end to end)."""
    model = tiny_model(n_ctx=128)
    spec = RotaryBands.from_model(model)
    n = 65  # 64 positions after BOS: period 8 is bin 8 exactly
    amp = 2.0 + torch.cos(2 * math.pi * torch.arange(n) / 8)

    def plant(q, hook):
        q = q.clone()
        d0, d1 = spec.dims[3]
        q[:, :, 1, d0], q[:, :, 1, d1] = amp, 0.0  # band 3 of head 1: norm = amp(m)
        return q

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_q", plant)]):
        fe = frequency_entropy(model, torch.randint(0, 50, (2, n)), layers=[0], ablate_k=None, progress=False)
    period, share = fe.peak()
    assert float(fe.entropy[0, 1, 3]) < 1e-6 and float(period[0, 1, 3]) == pytest.approx(8.0)
    assert float(share[0, 1, 3]) == pytest.approx(1.0)
    assert fe.entropy[0, 1, 3] < fe.entropy[0].nan_to_num(1).flatten().sort().values[1]  # the single minimum
    lowest = fe.summary()["lowest"][0]
    assert (lowest["layer"], lowest["head"], lowest["band"], lowest["peak_period_tokens"]) == (0, 1, 3, 8.0)


def test_frequency_entropy_skips_and_counts_a_short_window():
    model = tiny_model()
    fe = frequency_entropy(model, torch.randint(0, 50, (1, 50)), window=20, ablate_k=None, progress=False)
    assert fe.n_skipped_windows == 1 and fe.n_tokens == 40


def test_extremes_and_matched_control():
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(3, 6, 5, generator=g)
    low = extreme_entries(ent, 7, lowest=True)
    high = extreme_entries(ent, 7, lowest=False)
    vals = sorted(ent.flatten().tolist())
    assert sorted(float(ent[e]) for e in low) == pytest.approx(vals[:7])
    assert sorted(float(ent[e]) for e in high) == pytest.approx(vals[-7:])
    ctrl = matched_control(low, n_heads=6, seed=1)
    assert len(set(ctrl)) == 7 and not set(ctrl) & set(low)
    assert [(i, b) for i, _, b in ctrl] == [(i, b) for i, _, b in low]  # same layer and band, other head
    with pytest.raises(ParameterError, match="no head"):
        matched_control([(0, h, 1) for h in range(6)], n_heads=6)


def test_frequency_entropy_ablation_rows():
    model = tiny_model()
    fe = frequency_entropy(model, torch.randint(0, 50, (2, 33)), ablate_k=3, n_control=2, progress=False)
    names = [r["condition"] for r in fe.ablation]
    assert len(names) == 1 + 2 * 3
    assert names[0] == "unablated" and all(math.isfinite(r["loss"]) for r in fe.ablation)
    assert len(fe.extremes["lowest"]) == 3 and len(fe.extremes["highest"]) == 3
    json.dumps(fe.summary())


# ---- results ----------------------------------------------------------------------------------------------


def test_report_sections_and_frames(hand):
    import matplotlib.figure

    r = induction_heads(hand, n=12, batch=2)
    c = induction_circuit(hand, r, top=1, k=2, progress=False)
    fe = frequency_entropy(
        tiny_model(), torch.randint(0, 50, (2, 33)), ablate_k=2, n_control=1, progress=False
    )
    for res, cls in ((r, InductionHeads), (c, InductionCircuit), (fe, FrequencyEntropy)):
        assert isinstance(res, cls)
        items = report_section(res)
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
