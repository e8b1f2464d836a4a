"""The sweep tiers: every mode of the table in every tier, QK-fixed attribution, refine (layering: test_layers.py)."""

from __future__ import annotations

import pytest
import torch

from rope_interp import RotaryBands
from rope_interp.errors import ParameterError, UselessInterventionError
from rope_interp.intervene.ablate import ablate_bands
from rope_interp.intervene.modes import METHODS, MODE_TABLE, MODES, resolve_target
from rope_interp.model.hooks import HookSet, attn_hook
from rope_interp.model.testing import tiny_layout_model
from rope_interp.sweep.grid import SweepResult
from rope_interp.sweep.metrics import logit_diff, loss_metric
from rope_interp.sweep.tiers import (
    TIERS,
    attribution_sweep,
    exact_sweep,
    naive_sweep,
    qk_attribution_sweep,
    refine_sweep,
    run_sweep,
)

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
CORRUPT = torch.tensor([[3, 1, 4, 1, 7, 9, 2, 8, 5, 3]])
PARAMS = {
    "zero": {},
    "mean": {},
    "no_rotation": {},
    "shift": {"delta": 2.0},
    "scale_freq": {"factor": 0.5},
}
BANDS = [0, 2, 4]


def _readers(spec, kv: int) -> list[int]:
    return [h for h in range(spec.n_heads) if int(spec.kv_map[h]) == kv]


def ablate_loop(model, tokens, metric, mode, target, layers, bands, heads=None):
    """The naive loop a user writes: one ``ablate_bands`` context per cell."""
    spec = RotaryBands.from_model(model)
    out = []
    with torch.no_grad():
        for L in layers:
            for h in heads if heads is not None else [None]:
                sel = {}
                if h is not None:
                    if target == "q":
                        sel = {"heads": [h]}
                    elif target == "k":
                        sel = {"kv_heads": [h]}
                    else:
                        sel = {"heads": _readers(spec, h)}
                for b in bands:
                    with ablate_bands(model, [b], layers=L, target=target, mode=mode, **sel, **PARAMS[mode]):
                        out.append(metric(model(tokens)))
    return torch.stack(out).float()


def test_tables_are_declared_once():
    assert tuple(TIERS) == METHODS and tuple(MODE_TABLE) == MODES


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["gqa", "gptj", "partial_gptj", "local_global"])
def test_every_mode_sweep_equals_naive_loop_of_ablate_bands(mode, layout):
    model = tiny_layout_model(layout)
    metric = loss_metric(TOKENS)
    target = resolve_target(mode, None)
    want = ablate_loop(model, TOKENS, metric, mode, target, [0, 1], BANDS)
    kw = dict(mode=mode, params=PARAMS[mode], bands=BANDS, progress=False)
    ex = exact_sweep(model, TOKENS, metric, batch_size=2, **kw)
    nv = naive_sweep(model, TOKENS, metric, **kw)
    assert ex.extra["target"] == target and ex.extra["mode"] == mode
    torch.testing.assert_close(ex.values.flatten(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nv.values.flatten(), want, atol=1e-5, rtol=1e-5)
    if mode != "zero":
        assert (want - ex.base).abs().max() > 1e-4  # the mode does something here


@pytest.mark.parametrize(
    "mode,target",
    [  # shift on "qk" is refused (test_useless_and_bad_sweeps_are_refused)
        (m, t)
        for m in ("mean", "no_rotation", "shift", "scale_freq")
        for t in ("q", "k", "qk")
        if (m, t) != ("shift", "qk")
    ],
)
def test_every_mode_per_head_equals_ablate_bands_loop(mode, target):
    model = tiny_layout_model("gqa")
    spec = RotaryBands.from_model(model)
    metric = logit_diff(7, 8)
    n_h = spec.n_heads if target == "q" else spec.n_kv_heads
    heads = list(range(n_h))
    want = ablate_loop(model, TOKENS, metric, mode, target, [1], BANDS, heads)
    ex = exact_sweep(
        model,
        TOKENS,
        metric,
        ("layer", "head", "band"),
        mode=mode,
        params=PARAMS[mode],
        target=target,
        layers=[1],
        bands=BANDS,
        progress=False,
    )
    torch.testing.assert_close(ex.values.flatten(), want, atol=1e-5, rtol=1e-5)


def test_useless_and_bad_sweeps_are_refused():
    model = tiny_layout_model("gqa")
    m = loss_metric(TOKENS)
    with pytest.raises(UselessInterventionError, match="target='qk'"):
        exact_sweep(model, TOKENS, m, mode="shift", params={"delta": 3}, target="qk", progress=False)
    with pytest.raises(UselessInterventionError, match="factor=1"):
        attribution_sweep(model, TOKENS, m, mode="scale_freq", params={"factor": 1}, progress=False)
    with pytest.raises(ParameterError, match="finite"):
        naive_sweep(model, TOKENS, m, mode="shift", params={"delta": float("nan")}, progress=False)
    with pytest.raises(ParameterError, match="mode=/params= are for ablation"):
        exact_sweep(model, TOKENS, m, source=CORRUPT, mode="mean", progress=False)
    with pytest.raises(ParameterError, match="unknown method"):
        run_sweep(model, TOKENS, m, method="fast")
    with pytest.raises(ParameterError, match="unknown intervention mode"):
        exact_sweep(model, TOKENS, m, mode="erase", progress=False)
    # a per-position shift on q and k is not a no-op (positions other than p see it)
    r = exact_sweep(
        model, TOKENS, m, ("layer", "band", "pos"), mode="shift", params={"delta": 3}, target="qk",
        layers=[1], bands=[0], positions=[4], progress=False,
    )  # fmt: skip
    assert r.effect.abs().max() > 1e-4


# ---- QK-fixed attribution ---------------------------------------------------------------------------------
class LinearPattern(HookSet):
    """A metric linear in ``layer``'s attention pattern: ``sum(W * pattern)``."""

    def __init__(self, model, layer: int, weight: torch.Tensor):
        super().__init__(model)
        self.layer, self.weight, self._p = layer, weight, None

    def _record(self, act, hook):
        self._p = act

    def fwd_hooks(self):
        return [(attn_hook(self.layer, "pattern"), self._record)]

    def batched(self, logits, n):
        return (self._p.unflatten(0, (n, -1)) * self.weight).flatten(1).sum(1)

    def __call__(self, logits):
        return self.batched(logits, 1)[0]


@pytest.mark.parametrize("layout", ["gqa", "partial", "local_global"])
@pytest.mark.parametrize(
    "per,mode,target,patch",
    [
        (("layer", "band"), "zero", None, False),
        (("layer", "band"), None, None, True),
        (("layer", "head", "band"), "no_rotation", "k", False),
        (("layer", "head", "band"), "scale_freq", "qk", False),
        (("layer", "band", "pos"), "shift", "q", False),
        (("layer", "band", "pos"), None, "qk", True),
    ],
)
def test_qk_attribution_is_exact_when_metric_is_linear_in_the_pattern(layout, per, mode, target, patch):
    model = tiny_layout_model(layout)
    L, n = 1, TOKENS.shape[1]
    w = torch.randn(1, model.cfg.n_heads, n, n, generator=torch.Generator().manual_seed(0))
    metric = LinearPattern(model, L, w)
    kw = dict(layers=[L], target=target, progress=False)
    if patch:
        kw["source"] = CORRUPT
    else:
        kw.update(mode=mode, params=PARAMS[mode])
    if "pos" in per:
        kw["positions"] = [0, 3, 9]
    exact = exact_sweep(model, TOKENS, metric, per, **kw)
    qk = qk_attribution_sweep(model, TOKENS, metric, per, **kw)
    assert exact.effect.abs().max() > 1e-3
    torch.testing.assert_close(qk.values, exact.values, atol=1e-4, rtol=1e-4)
    plain = attribution_sweep(model, TOKENS, metric, per, **kw)  # linearised through the softmax: not exact
    assert (plain.values - exact.values).abs().max() > 1e-4


def test_qk_attribution_beats_plain_on_a_saturated_softmax():
    """Large init makes the softmax sharp: plain attribution's linearisation fails there, the QK-fix does not."""
    model = tiny_layout_model("gqa", init_range=0.6)
    metric = logit_diff(7, 8)
    kw = dict(progress=False)
    exact = exact_sweep(model, TOKENS, metric, **kw)
    err_qk = (qk_attribution_sweep(model, TOKENS, metric, **kw).values - exact.values).abs().mean()
    err_plain = (attribution_sweep(model, TOKENS, metric, **kw).values - exact.values).abs().mean()
    assert err_qk < err_plain


# ---- refine ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [None, CORRUPT])
def test_refine_returns_the_exact_top_cells_with_exact_values(source):
    model = tiny_layout_model("gqa", n_layers=3)
    metric = logit_diff(7, 8)
    exact = exact_sweep(model, TOKENS, metric, source=source, progress=False)
    r = refine_sweep(model, TOKENS, metric, source=source, top=5, progress=False)
    mask = r.extra["exact_mask"]
    top = exact.effect.abs().flatten().topk(5).indices
    assert bool(mask.flatten()[top].all())
    torch.testing.assert_close(r.values[mask], exact.values[mask], atol=1e-5, rtol=1e-5)
    est = qk_attribution_sweep(model, TOKENS, metric, source=source, progress=False)
    torch.testing.assert_close(r.values[~mask], est.values[~mask])
    assert r.extra["n_exact"] == int(mask.sum()) >= 10 and r.method == "refine"


def test_refine_cap_is_respected_and_an_unstable_top_warns():
    import warnings

    model = tiny_layout_model("gqa", n_layers=3)
    metric = logit_diff(7, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = refine_sweep(model, TOKENS, metric, top=5, max_exact=6, progress=False)
    assert r.extra["n_exact"] <= 6
    warned = any("max_exact" in str(w.message) for w in caught)
    assert warned == (not r.extra["stable"])
    with pytest.raises(ParameterError, match="estimate"):
        refine_sweep(model, TOKENS, metric, estimate="exact", progress=False)


# ---- validate once: one layout build, one table lookup, the tiers' public signatures ---------------------------
def _count_calls(monkeypatch, owner, name):
    calls = []
    orig = getattr(owner, name)

    def counted(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("tier", [naive_sweep, exact_sweep])
def test_a_32_cell_sweep_builds_the_layout_at_most_twice(monkeypatch, tier):
    model, toks = tiny_layout_model("gqa"), TOKENS[:, :2]
    builds = _count_calls(monkeypatch, RotaryBands, "from_model")
    r = tier(model, toks, loss_metric(toks), ("layer", "band", "pos"), mode="no_rotation", progress=False)
    assert r.values.numel() == 32 and len(builds) <= 2


@pytest.mark.parametrize("method", METHODS)
def test_a_sweep_looks_its_mode_up_once(monkeypatch, method):
    from rope_interp.intervene import modes

    lookups = _count_calls(monkeypatch, modes, "row")
    run_sweep(
        tiny_layout_model("gqa"),
        TOKENS,
        loss_metric(TOKENS),
        method=method,
        mode="shift",
        params={"delta": 1.0},
        progress=False,
    )
    assert len(lookups) == 1


def test_an_intervention_looks_its_mode_up_once(monkeypatch):
    from rope_interp.intervene import modes

    lookups = _count_calls(monkeypatch, modes, "row")
    builds = _count_calls(monkeypatch, RotaryBands, "from_model")
    ablate_bands(tiny_layout_model("gqa"), [1], mode="scale_freq", factor=2.0)
    assert len(lookups) == 1 and len(builds) == 1


def test_the_tiers_spell_out_the_selection_keywords():
    import inspect

    selection = ["source", "mode", "params", "layers", "heads", "bands", "positions", "target"]
    own = {
        "naive": ["progress"],
        "exact": ["batch_size", "max_batch_tokens", "progress"],
        "attribution": ["progress"],
        "qk_attribution": ["progress"],
        "refine": ["top", "estimate", "max_exact", "batch_size", "max_batch_tokens", "progress"],
    }
    from rope_interp.sweep.selection import SelectionArgs

    assert list(SelectionArgs.__annotations__) == selection  # declared once, typed (PEP 692)
    for name, tier in TIERS.items():
        sig = inspect.signature(tier)
        assert list(sig.parameters) == ["model", "tokens", "metric", "per", *own[name], "selection"], name
        assert sig.parameters["per"].default == ("layer", "band")
        assert sig.parameters["selection"].kind is inspect.Parameter.VAR_KEYWORD
        assert "SelectionArgs" in str(sig.parameters["selection"].annotation)
        with pytest.raises(TypeError, match="unexpected keyword argument 'band'"):
            tier(tiny_layout_model("gqa"), TOKENS, loss_metric(TOKENS), band=[1])


# ---- refine: what stable means, and when an estimate misleads (issue 22 item 3) -------------------------------
def _misleading(exact, victim_rank: int):
    """An 'estimate' equal to the exact values except the exact top-1 cell, whose estimated effect is set to
    the exact effect of the cell of exact rank ``victim_rank``, so it ranks there while every shortlisted
    estimate is exact (observed error 0)."""

    def estimate(model, sel, metric, progress=False):
        eff = exact.effect.flatten().clone()
        order = eff.abs().argsort(descending=True)
        eff[order[0]] = eff[order[victim_rank]] * 0.999
        return SweepResult(
            (eff + exact.base).reshape(exact.values.shape),
            exact.dims,
            exact.coords,
            exact.base,
            "qk_attribution",
            {},
        )

    return estimate


def test_refine_checks_past_its_shortlist_and_is_unstable_when_the_check_is_cut(monkeypatch):
    import warnings

    from rope_interp.sweep import tiers

    model = tiny_layout_model("gqa", n_layers=3)
    metric = logit_diff(7, 8)
    exact = exact_sweep(model, TOKENS, metric, progress=False)
    true_top = set(exact.effect.abs().flatten().topk(3).indices.tolist())
    # the top cell is ranked 7th by the estimate, just past the 2 * top = 6 shortlist; the error rule sees
    # an observed error of 0 and (before the fix) called the top stable without it
    monkeypatch.setitem(tiers._ESTIMATES, "qk_attribution", _misleading(exact, 7))
    r = refine_sweep(model, TOKENS, metric, top=3, progress=False)
    got = set((r.values - r.base).abs().flatten().topk(3).indices.tolist())
    assert r.extra["stable"] and got == true_top
    assert r.extra["n_exact"] >= 12  # the shortlist, then the check: as many again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = refine_sweep(model, TOKENS, metric, top=3, max_exact=6, progress=False)
    assert not cut.extra["stable"] and cut.extra["n_exact"] == 6
    assert any("max_exact" in str(w.message) for w in caught)


def test_refine_stable_means_doubling_left_the_top_unchanged():
    # on the real estimates: whenever refine says stable, evaluating every cell exactly agrees on the top
    # (a sample, not a proof: README and docstring say refine is evidence, not a guarantee)
    model = tiny_layout_model("gqa", n_layers=3)
    n_stable = 0
    for metric, mode in [
        (logit_diff(7, 8), "zero"),
        (loss_metric(TOKENS), "no_rotation"),
        (logit_diff(7, 8), "mean"),
    ]:
        exact = exact_sweep(model, TOKENS, metric, mode=mode, progress=False)
        r = refine_sweep(model, TOKENS, metric, mode=mode, top=5, progress=False)
        if r.extra["stable"]:
            n_stable += 1
            top = exact.effect.abs().flatten().topk(5).indices
            assert bool(r.extra["exact_mask"].flatten()[top].all())
            torch.testing.assert_close(
                r.values.flatten()[top], exact.values.flatten()[top], atol=1e-5, rtol=1e-5
            )
    assert n_stable == 3


def test_a_zero_gradient_metric_warns_and_refine_falls_back_to_exact():
    from rope_interp.sweep.metrics import kl_metric

    model = tiny_layout_model("gqa", n_layers=3)
    with torch.no_grad():
        metric = kl_metric(model(TOKENS))  # KL to the run itself: minimal, gradient 0 at the base run
    for tier in (attribution_sweep, qk_attribution_sweep):
        with pytest.warns(UserWarning, match="kl_metric|metric.*gradient at the base run is zero"):
            est = tier(model, TOKENS, metric, progress=False)
        assert float((est.values - est.base).abs().max()) < 1e-6
    exact = exact_sweep(model, TOKENS, metric, progress=False)
    with pytest.warns(UserWarning, match="evaluating all"):
        r = refine_sweep(model, TOKENS, metric, top=3, progress=False)
    assert r.extra["fallback"] and r.extra["stable"] and bool(r.extra["exact_mask"].all())
    torch.testing.assert_close(r.values, exact.values, atol=1e-6, rtol=1e-5)
    with pytest.raises(ParameterError, match="max_exact"):
        refine_sweep(model, TOKENS, metric, top=3, max_exact=10, progress=False)


# ---- the bridge cannot resume a run at a layer (issue 22 item 8) ------------------------------------------------
@pytest.mark.parametrize("tier", ["exact", "refine", "patch_sweep"])
def test_the_prefix_reusing_tiers_refuse_a_bridge_before_any_work(tier, monkeypatch):
    from rope_interp.model.testing import tiny_bridge
    from rope_interp.sweep import tiers
    from rope_interp.sweep.patching import patch_sweep

    model = tiny_bridge("llama")
    monkeypatch.setattr(tiers.Selection, "build", lambda *a, **k: pytest.fail("worked before refusing"))
    t = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ParameterError, match="'naive'.*'attribution'"):
        if tier == "patch_sweep":
            patch_sweep(model, t, torch.tensor([[1, 2, 5, 4]]), logit_diff(1, 2), progress=False)
        else:
            run_sweep(model, t, logit_diff(1, 2), method=tier, progress=False)
