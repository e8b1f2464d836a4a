"""Positional heads and sink channels on tiny random models and hand-built q/k."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import positional_heads, sink_channels
from rope_interp.analyses.heads import OffsetAttention, causal_check, offset_margins
from rope_interp.errors import LayerError
from rope_interp.model.testing import tiny_model
from rope_interp.read.decompose import band_scores


def _margin_by_brute_force(bs, offset):
    """Per-band margin of key m-o over the mean of keys 1..m except m-o, from the full decomposition."""
    per = bs.per_band  # [b, h, band, q, k]
    n = per.shape[-1]
    acc, cnt = 0, 0
    for m in range(max(2, offset + 1), n):
        others = [x for x in range(1, m + 1) if x != m - offset]
        acc = acc + (per[..., m, m - offset] - per[..., m, others].mean(-1)).sum(0)
        cnt += per.shape[0]
    return acc / cnt


@pytest.mark.parametrize("offset", [0, 1])
def test_band_margins_equal_exact_decomposition(layout_model, offset):
    toks = torch.randint(0, 50, (2, 11))
    r = positional_heads(layout_model, toks, offsets=[offset], ablate_k=None, progress=False)
    for layer in range(layout_model.cfg.n_layers):
        bs = band_scores(layout_model, toks, layer)
        want = _margin_by_brute_force(bs, offset)
        torch.testing.assert_close(r.margin[layer, :, 0], want, atol=1e-5, rtol=1e-4)
        total = _margin_by_brute_force(
            type(bs)(bs.total()[:, :, None], bs.remainder * 0, layer, bs.heads, [0]), offset
        )[:, 0]
        torch.testing.assert_close(
            r.margin[layer, :, 0].sum(-1) + r.margin_pass[layer, :, 0], total, atol=1e-5, rtol=1e-4
        )


def test_offset_margins_hand_built():
    # one head, one band: q = (1, 0) everywhere, k(n) = (n, 0); attn_scale 2.
    pos = 5
    q = torch.zeros(1, pos, 1, 1, 2)
    q[..., 0] = 1
    k = torch.zeros(1, pos, 1, 1, 2)
    k[0, :, 0, 0, 0] = torch.arange(pos, dtype=torch.float)
    empty = torch.zeros(1, pos, 1, 0)
    bands, rest, n = offset_margins(q, k, empty, empty, torch.tensor([0]), 2.0, offset=0)
    # m = 2,3,4: target k = m, others 1..m-1 with mean m/2 -> margin (m - m/2) / 2 = m / 4
    assert n == 3
    assert bands.item() == pytest.approx((2 + 3 + 4) / 4)
    assert rest.item() == 0


def test_offset_attention_matches_pattern():
    model = tiny_model()
    toks = torch.randint(0, 50, (2, 9))
    rec = OffsetAttention(model, [0, 1], offsets=[0, 1, 3], start_pos=2)
    with torch.no_grad(), rec:
        model(toks)
    rec.count(toks)
    _, cache = model.run_with_cache(toks)
    for i in range(2):
        pat = cache[f"blocks.{i}.attn.hook_pattern"]
        for j, o in enumerate([0, 1, 3]):
            m = torch.arange(max(2, o), 9)
            want = pat[:, :, m, m - o].mean((0, 2))
            torch.testing.assert_close(rec.means()[i, :, j], want.double(), atol=1e-6, rtol=1e-6)


def test_found_heads_threshold_and_table():
    model = tiny_model()
    r = positional_heads(
        model,
        torch.randint(0, 50, (1, 16)),
        threshold=0.0,
        ablate_k=2,
        causal_windows=1,
        method="analytic",
        progress=False,
    )
    assert len(r.found()) == 2 * 4 * 2  # every head passes threshold 0
    assert len(r.causal) == len(r.found())
    assert all(c["method"] == "analytic" for c in r.causal)
    df = r.to_dataframe()
    assert len(df) == 16 and df["survival_top_k"].notna().all()
    hi, lo = r.band_share()
    torch.testing.assert_close(
        hi + lo + r.margin_pass / (r.margin.sum(-1) + r.margin_pass), torch.ones_like(hi)
    )
    fig = r.plot()
    assert fig._suptitle is not None and all(
        ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"
    )


def test_causal_check_zeroing_everything_gives_uniform():
    # ablating all bands of a full-rotary head leaves zero scores: uniform causal attention
    model = tiny_model()
    toks = torch.randint(0, 50, (1, 12))
    c = causal_check(model, [toks], layer=0, head=1, offset=0, k=8, start_pos=1, method="analytic")
    _, cache = model.run_with_cache(toks)
    pat = cache["blocks.0.attn.hook_pattern"][0, 1]
    m = torch.arange(1, 12)
    uniform = (1 / (m + 1.0)).sum()
    assert c["top_k_survival"] == pytest.approx(float(uniform / pat[m, m].sum()), rel=1e-5)
    assert c["top_k_survival"] == pytest.approx(c["bottom_k_survival"])


def test_causal_check_hooks_agree_with_analytic_when_available():
    model = tiny_model()
    toks = torch.randint(0, 50, (1, 12))
    a = causal_check(model, [toks], 1, 2, 1, k=3, method="analytic")
    h = causal_check(model, [toks], 1, 2, 1, k=3, method="hooks")
    assert h["method"] == "hooks"
    assert h["top_k_survival"] == pytest.approx(a["top_k_survival"], rel=1e-4)
    assert h["bottom_k_survival"] == pytest.approx(a["bottom_k_survival"], rel=1e-4)


def test_heads_bad_input():
    model = tiny_model()
    with pytest.raises(LayerError):
        positional_heads(model, torch.randint(0, 50, (1, 8)), layers=[2], progress=False)
    with pytest.raises(ValueError, match="k must be"):
        causal_check(model, [torch.randint(0, 50, (1, 8))], 0, 0, 0, k=0)


def test_sink_terms_equal_exact_decomposition(layout_model):
    toks = torch.randint(0, 50, (2, 10))
    s = sink_channels(layout_model, toks, progress=False)
    _, cache = layout_model.run_with_cache(toks)
    for layer in range(layout_model.cfg.n_layers):
        per = band_scores(layout_model, toks, layer).per_band  # [b, h, band, q, k]
        bos = per[..., 1:, 0].mean((0, 3))
        other = torch.stack([per[..., m, 1 : m + 1].mean(-1) for m in range(1, 10)], -1).mean((0, 3))
        torch.testing.assert_close(s.bos_term[layer], bos, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(s.other_term[layer], other, atol=1e-5, rtol=1e-4)
        att = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 1:, 0].mean((0, 2))
        torch.testing.assert_close(s.bos_attention[layer], att, atol=1e-6, rtol=1e-5)
    # Cauchy-Schwarz: |observed| <= bound, band by band
    assert (s.bos_term.abs() <= s.bos_bound + 1e-6).all()
    assert (s.other_term.abs() <= s.other_bound + 1e-6).all()


def test_sink_channels_table_and_plot():
    s = sink_channels(tiny_model(), torch.randint(0, 50, (1, 12)), progress=False)
    ch = s.channels(top=2)
    assert len(ch) == 2 * 4 * 2 and (ch["band"] >= 4).all()  # low-frequency half of 8 bands
    assert ch["bos_ratio"].abs().max() <= 1 + 1e-6
    fig = s.plot()
    assert all(ax.get_title() and ax.get_xlabel() for ax in fig.axes if ax.get_label() != "<colorbar>")
    assert not math.isnan(float(s.separation.sum()))


def test_batched_causal_checks_equal_head_by_head_hooks():
    """One forward per layer for all found heads gives the hooked per-head numbers (tolerance 1e-5)."""
    from rope_interp.analyses.heads import add_causal_checks, positional_heads
    from rope_interp.model.testing import tiny_model

    model = tiny_model(n_heads=4, n_key_value_heads=2)
    toks = torch.randint(0, 50, (1, 30), generator=torch.Generator().manual_seed(4))
    r = positional_heads(model, toks, threshold=0.05, ablate_k=None, progress=False)
    assert len(r.found()) >= 3
    batched = add_causal_checks(model, r, [toks], 3, method="auto", progress=False).causal
    r.causal = []
    hooked = add_causal_checks(model, r, [toks], 3, method="hooks", progress=False).causal
    assert [(c["layer"], c["head"], c["offset"]) for c in batched] == [
        (c["layer"], c["head"], c["offset"]) for c in hooked
    ]
    for b, h in zip(batched, hooked, strict=True):
        assert h["method"] == "hooks" and b["method"] == "analytic"
        for key in ("top_k_survival", "bottom_k_survival"):
            assert abs(b[key] - h[key]) < 1e-5, (b, h)
