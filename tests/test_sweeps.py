"""The fast sweep tiers agree with the naive loop (exact), with derivatives (attribution),
and with real hooked runs (analytic direct effect)."""

from __future__ import annotations

import pytest
import torch

from rope_interp import RotaryBands, band_view
from rope_interp.intervene.ablate import ablate_bands
from rope_interp.model.hooks import attn_hook
from rope_interp.model.testing import tiny_layout_model
from rope_interp.sweep.patching import logit_diff, loss_metric
from rope_interp.sweep.tiers import (
    ablated_patterns,
    ablation_sweep,
    attribution_sweep,
    direct_effect_sweep,
    exact_sweep,
    naive_sweep,
)

CLEAN = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
CORRUPT = torch.tensor([[3, 1, 4, 1, 7, 9, 2, 8, 5, 3]])


def pattern_at(model, layer, tokens, hookset=None):
    name = attn_hook(layer, "pattern")
    with torch.no_grad():
        if hookset is None:
            _, cache = model.run_with_cache(tokens, names_filter=[name])
        else:
            with hookset:
                _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name]


def test_exact_matches_naive_patching_on_every_layout(layout_model):
    kw = dict(source=CLEAN, progress=False)
    metric = logit_diff(7, 8)
    naive = naive_sweep(layout_model, CORRUPT, metric, ("layer", "head", "band"), **kw)
    exact = exact_sweep(layout_model, CORRUPT, metric, ("layer", "head", "band"), batch_size=3, **kw)
    assert exact.values.shape == naive.values.shape
    assert naive.effect.abs().max() > 1e-3
    torch.testing.assert_close(exact.values, naive.values, atol=1e-5, rtol=1e-5)
    assert exact.base == pytest.approx(naive.base, abs=1e-6)


@pytest.mark.parametrize("target", ["q", "k", "qk"])
def test_exact_matches_naive_zero_ablation_per_position(target):
    model = tiny_layout_model("gqa")
    metric = loss_metric(CLEAN)
    kw = dict(layers=[1], bands=[0, 4, 7], target=target, progress=False)
    naive = naive_sweep(model, CLEAN, metric, ("layer", "band", "pos"), **kw)
    exact = exact_sweep(model, CLEAN, metric, ("layer", "band", "pos"), batch_size=7, **kw)
    assert exact.values.shape == (1, 3, CLEAN.shape[1])
    torch.testing.assert_close(exact.values, naive.values, atol=1e-5, rtol=1e-5)


def test_naive_zero_sweep_matches_ablate_bands():
    model = tiny_layout_model("partial_gptj")
    metric = logit_diff(7, 8)
    r = naive_sweep(model, CLEAN, metric, layers=[0, 1], bands=[0, 4], progress=False)
    with torch.no_grad():
        for i, L in enumerate([0, 1]):
            for j, b in enumerate([0, 4]):
                with ablate_bands(model, [b], layers=L, mode="zero"):
                    assert r.values[i, j].item() == pytest.approx(metric(model(CLEAN)).item(), abs=1e-6)


def test_attribution_is_the_derivative_of_scaling_the_band():
    """Zero-ablation attribution of a cell = -d metric / d alpha, alpha scaling that cell's bands."""
    model = tiny_layout_model("gqa", dtype=torch.float64)
    spec = RotaryBands.from_model(model)
    metric = logit_diff(7, 8)
    attr = attribution_sweep(model, CLEAN, metric, ("layer", "head", "band"), progress=False)
    L, g, b = 1, 1, 3

    def run(alpha):
        def scale(act, hook, heads):
            v = band_view(act, spec.rotary_dim, spec.adjacent_pairs)
            v[:, :, heads, b] *= alpha
            return act

        q_heads = [h for h in range(spec.n_heads) if int(spec.kv_map[h]) == g]
        hooks = [
            (attn_hook(L, "rot_q"), lambda a, hook: scale(a, hook, q_heads)),
            (attn_hook(L, "rot_k"), lambda a, hook: scale(a, hook, [g])),
        ]
        with torch.no_grad():
            return metric(model.run_with_hooks(CLEAN, fwd_hooks=hooks)).item()

    eps = 1e-4
    deriv = (run(1 + eps) - run(1 - eps)) / (2 * eps)
    assert attr.effect[L, g, b].item() == pytest.approx(-deriv, rel=1e-4, abs=1e-8)
    # coarser cells are sums of finer ones
    coarse = attribution_sweep(model, CLEAN, metric, ("layer", "band"), progress=False)
    torch.testing.assert_close(coarse.effect, attr.effect.sum(1))


def test_ablated_patterns_match_hooked_runs(layout_model):
    spec = RotaryBands.from_model(layout_model)
    L = spec.n_layers - 1
    pats = ablated_patterns(layout_model, CLEAN, L)
    assert pats.shape == (1, spec.n_heads, spec.n_bands, 10, 10)
    for b in (0, spec.n_bands - 1):
        for target in ("q", "k"):
            hooked = pattern_at(
                layout_model, L, CLEAN, ablate_bands(layout_model, [b], layers=L, target=target)
            )
            torch.testing.assert_close(pats[:, :, b], hooked, atol=1e-5, rtol=1e-5)


def test_direct_effect_sweep_is_tv_distance_of_ablated_patterns():
    model = tiny_layout_model("local_global", n_ctx=64)  # window 8 < 10 tokens: layer 0 masks more
    r = direct_effect_sweep(model, CLEAN, heads=[1, 3], bands=[0, 2, 5], max_bytes=1, progress=False)
    assert r.values.shape == (2, 2, 3) and r.dims == ("layer", "head", "band")
    for L in range(2):
        pats = ablated_patterns(model, CLEAN, L, heads=[1, 3], bands=[0, 2, 5])
        full = pattern_at(model, L, CLEAN)[:, [1, 3]]
        tv = 0.5 * (pats - full[:, :, None]).abs().sum(-1).mean(dim=(0, 3))
        torch.testing.assert_close(r.values[L], tv, atol=1e-5, rtol=1e-5)
    kl = direct_effect_sweep(model, CLEAN, distance="kl", progress=False)
    assert (kl.values >= -1e-7).all() and kl.values.max() > 0


def test_ablation_sweep_dispatch_and_errors():
    model = tiny_layout_model("neox")
    from rope_interp.errors import RopeInterpError

    r = ablation_sweep(model, CLEAN, loss_metric(CLEAN), method="attribution", progress=False)
    assert r.method == "attribution"
    with pytest.raises(RopeInterpError, match="unknown method"):
        ablation_sweep(model, CLEAN, loss_metric(CLEAN), method="magic")
    with pytest.raises(RopeInterpError, match="batch_size"):
        exact_sweep(model, CLEAN, loss_metric(CLEAN), batch_size=0)
    with pytest.raises(RopeInterpError, match="unknown distance"):
        direct_effect_sweep(model, CLEAN, distance="l2")
    with pytest.raises(RopeInterpError, match="differ in shape"):
        exact_sweep(model, CLEAN, loss_metric(CLEAN), source=CLEAN[:, :4])


# ---- the embedded model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_tokens(smol, english_tokens):
    return english_tokens[:, :12]


@pytest.mark.slow
def test_smol_exact_tier_matches_naive_loop(smol, short_tokens):
    metric = loss_metric(short_tokens)
    kw = dict(layers=[25], bands=[0, 24, 31], progress=False)
    naive = naive_sweep(smol, short_tokens, metric, **kw)
    exact = exact_sweep(smol, short_tokens, metric, **kw)
    assert naive.effect.abs().max() > 1e-4
    torch.testing.assert_close(exact.values, naive.values, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_smol_direct_effect_matches_hooked_pattern(smol, short_tokens):
    L, bands = 5, [0, 24]
    pats = ablated_patterns(smol, short_tokens, L, bands=bands)
    for j, b in enumerate(bands):
        hooked = pattern_at(smol, L, short_tokens, ablate_bands(smol, [b], layers=L, target="k"))
        torch.testing.assert_close(pats[:, :, j], hooked, atol=1e-5, rtol=1e-4)
    assert (pats[:, :, 1] - pattern_at(smol, L, short_tokens)).abs().max() > 1e-3


@pytest.mark.slow
def test_cli_sweep_and_patch_write_csv_and_png(smol, tmp_path, monkeypatch, capsys):
    import pandas as pd

    from rope_interp import cli

    monkeypatch.setattr(cli.common, "load_from_args", lambda args: smol)
    rc = cli.main(
        [
            "sweep",
            "--layers",
            "29",
            "--bands",
            "0",
            "31",
            "--max-tokens",
            "12",
            "--no-progress",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 0
    df = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert list(df.layer) == [29, 29] and list(df.band) == [0, 31]
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 1000
    rc = cli.main(
        [
            "patch",
            "--clean",
            "The capital of France is",
            "--corrupted",
            "The capital of Italy is",
            "--answer",
            " Paris",
            "--wrong",
            " Rome",
            "--layers",
            "28",
            "--bands",
            "3",
            "--method",
            "attribution",
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert len(pd.read_csv(tmp_path / "p" / "patch.csv")) == 1
    rc = cli.main(
        [
            "patch",
            "--clean",
            "The capital of France is",
            "--corrupted",
            "The capital of the UK is",
            "--answer",
            " Paris",
            "--wrong",
            " London",
            "--out",
            str(tmp_path / "q"),
        ]
    )
    assert rc == 1 and "differ in shape" in capsys.readouterr().err


@pytest.mark.slow
def test_smol_attribution_ranks_like_exact(smol):
    from scipy.stats import spearmanr

    clean = smol.to_tokens("The capital of France is")
    metric = logit_diff(smol.to_single_token(" Paris"), smol.to_single_token(" Rome"))
    kw = dict(layers=[27], progress=False)
    exact = exact_sweep(smol, clean, metric, batch_size=32, **kw)
    attr = attribution_sweep(smol, clean, metric, **kw)
    rho = spearmanr(attr.effect.flatten().numpy(), exact.effect.flatten().numpy()).statistic
    assert rho > 0.7, rho


@pytest.mark.slow
def test_smol_qk_attribution_and_refine_on_the_ioi_prompt(smol):
    """QK-fixed attribution ranks layer × band cells of two layers at least as well as plain
    attribution, and refine returns the exact top-5 with exact values (real model, IOI prompt)."""
    from scipy.stats import spearmanr

    from rope_interp.sweep.tiers import qk_attribution_sweep, refine_sweep

    toks = smol.to_tokens("When Mary and John went to the store, John gave a drink to")
    metric = logit_diff(smol.to_single_token(" Mary"), smol.to_single_token(" John"))
    kw = dict(layers=[14, 27], bands=list(range(0, 32, 2)), progress=False)
    exact = exact_sweep(smol, toks, metric, batch_size=16, **kw)
    rho = {}
    for name, fn in (("plain", attribution_sweep), ("qk", qk_attribution_sweep)):
        est = fn(smol, toks, metric, **kw)
        rho[name] = spearmanr(
            est.effect.abs().flatten().numpy(), exact.effect.abs().flatten().numpy()
        ).statistic
    assert rho["qk"] >= rho["plain"] - 0.02 and rho["qk"] > 0.8, rho
    r = refine_sweep(smol, toks, metric, top=5, **kw)
    top = exact.effect.abs().flatten().topk(5).indices
    assert bool(r.extra["exact_mask"].flatten()[top].all())
    torch.testing.assert_close(r.values.flatten()[top], exact.values.flatten()[top], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tier", ["naive", "exact", "attribution", "qk_attribution", "refine"])
def test_head_axis_is_named_for_what_it_indexes(tier):
    # under GQA a per-head sweep of k / qk indexes kv heads; it was named "head" like the query heads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rope_interp.model.testing import tiny_model
    from rope_interp.sweep.tiers import qk_attribution_sweep, refine_sweep

    fn = {
        "naive": naive_sweep,
        "exact": exact_sweep,
        "attribution": attribution_sweep,
        "qk_attribution": qk_attribution_sweep,
        "refine": refine_sweep,
    }[tier]
    per, metric = ("layer", "head", "band"), logit_diff(1, 2)
    gqa = tiny_model()  # n_heads 4, n_key_value_heads 2
    assert (gqa.cfg.n_heads, gqa.cfg.n_key_value_heads) == (4, 2)
    for target, axis, n in (("q", "head", 4), ("k", "kv_head", 2), ("qk", "kv_head", 2)):
        r = fn(gqa, CLEAN, metric, per, target=target, layers=[0], bands=[0, 1], progress=False)
        other = {"head", "kv_head"} - {axis}
        assert r.dims == ("layer", axis, "band") and r.coords[axis] == list(range(n)), (target, r.dims)
        assert r.extra["head_axis"] == axis and not other & set(r.coords)
        df = r.to_dataframe()
        assert (
            axis in df.columns and not other & set(df.columns) and sorted(df[axis].unique()) == list(range(n))
        )
        fig = r.plot()
        assert f"layer × {axis} × band" in fig.axes[0].get_title()
        plt.close(fig)
    mha = tiny_model(n_key_value_heads=None)  # no GQA: kv heads are the query heads, the axis stays "head"
    for target in ("q", "k", "qk"):
        r = fn(mha, CLEAN, metric, per, target=target, layers=[0], bands=[0, 1], progress=False)
        assert r.dims == ("layer", "head", "band") and r.coords["head"] == list(range(4))
