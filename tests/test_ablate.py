"""Band interventions: exact identities on every tiny layout, cache consistency, scoping, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp import RopeInterpError, RotaryBands, band_scores, band_view, pass_view
from rope_interp.errors import LayerError, ParameterError, UselessInterventionError
from rope_interp.intervene.ablate import BandIntervention, ablate_bands, prope, shift_bands
from rope_interp.model.hooks import attn_hook
from rope_interp.model.testing import tiny_layout_model
from rope_interp.read.decompose import band_score_terms

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])


def scores_of(model, hookset=None, layer=None, tokens=TOKENS):
    """hook_attn_scores of every layer (or one) in a run with ``hookset`` attached."""
    names = [attn_hook(L, "attn_scores") for L in range(model.cfg.n_layers)]
    with torch.no_grad():
        if hookset is None:
            _, cache = model.run_with_cache(tokens, names_filter=names)
        else:
            with hookset:
                _, cache = model.run_with_cache(tokens, names_filter=names)
    out = [cache[n] for n in names]
    return out if layer is None else out[layer]


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_empty_band_list_is_a_documented_identity(layout_model):
    base = layout_model(TOKENS)
    for hs in (
        ablate_bands(layout_model, [], mode="zero"),
        ablate_bands(layout_model, [], mode="shift", delta=5),
    ):
        assert hs.fwd_hooks() == []
        with torch.no_grad():
            assert torch.equal(hs.run(TOKENS), base)
    assert no_hooks_left(layout_model)


@pytest.mark.parametrize(
    "mode,params,target,match",
    [
        ("shift", {"phase": 0.0}, "k", "phase=0.0"),
        ("shift", {"phase": 4 * math.pi}, "q", "multiple of 2π"),
        ("shift", {"delta": 0}, "k", "delta=0"),
        ("shift", {"delta": 3}, "qk", "cancels in every q·k"),
        ("scale_freq", {"factor": 1.0}, "qk", "factor=1"),
    ],
)
def test_provable_no_ops_are_refused(mode, params, target, match):
    model = tiny_layout_model("gqa")
    with pytest.raises(UselessInterventionError, match=match):
        ablate_bands(model, [0, 1], mode=mode, target=target, **params)


def test_shift_on_q_and_k_would_keep_scores_so_it_is_refused_and_k_is_the_default(layout_model):
    # the identity behind the refusal: the same extra angle on q and k leaves every score unchanged
    spec = RotaryBands.from_model(layout_model)
    q, k = (
        torch.randn(1, 5, spec.n_heads, spec.n_bands, 2),
        torch.randn(1, 5, spec.n_kv_heads, spec.n_bands, 2),
    )
    ph = spec.freqs[0] * 3
    t0, _ = band_score_terms(q, k, 1.0)
    t1, _ = band_score_terms(shift_bands(q, ph), shift_bands(k, ph), 1.0)
    torch.testing.assert_close(t1, t0, atol=1e-4, rtol=1e-4)
    with pytest.raises(UselessInterventionError, match="target='k'"):
        ablate_bands(layout_model, None, target="qk", mode="shift", delta=3)
    base = scores_of(layout_model)
    default = ablate_bands(layout_model, None, mode="shift", delta=3)
    assert default.target == "k"
    k_only = scores_of(layout_model, default)
    assert (k_only[0] - base[0]).nan_to_num(0.0).abs().max() > 1e-3


def test_shift_on_keys_means_keys_sat_delta_positions_later():
    """Band scores after a key shift by delta equal those of keys rotated at n + delta (NeoX tiny model)."""
    model = tiny_layout_model("neox")
    spec = RotaryBands.from_model(model)
    d, L = 3, 0
    names = [attn_hook(L, "rot_q"), attn_hook(L, "rot_k"), attn_hook(L, "k")]
    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS, names_filter=names)
        with ablate_bands(model, None, layers=L, mode="shift", delta=d):
            _, shifted = model.run_with_cache(TOKENS, names_filter=names)
    from rope_interp.bands import rotate
    from rope_interp.intervene.modes import position_angles

    n = TOKENS.shape[1]
    pre = band_view(cache[attn_hook(L, "k")], 16, False)
    later = rotate(pre, position_angles(spec.freqs[L].float(), torch.arange(n).float() + d))
    torch.testing.assert_close(
        band_view(shifted[attn_hook(L, "rot_k")], 16, False), later, atol=1e-4, rtol=1e-4
    )


def test_readme_shift_example_changes_the_output():
    model = tiny_layout_model("neox", n_layers=3)
    with torch.no_grad():
        base = model(TOKENS)
        out = ablate_bands(model, [3], layers=[2], mode="shift", delta=5).run(TOKENS)
    assert (out - base).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "mode,params,name",
    [
        ("shift", {"delta": float("nan")}, "delta"),
        ("shift", {"delta": float("inf")}, "delta"),
        ("shift", {"phase": float("nan")}, "phase"),
        ("shift", {"phase": torch.tensor([0.1, float("inf")])}, "phase"),
        ("scale_freq", {"factor": float("nan")}, "factor"),
        ("scale_freq", {"factor": float("-inf")}, "factor"),
        ("shift", {"delta": "3"}, "delta"),
        ("mean", {"reference": "nan"}, "reference"),
    ],
)
def test_non_finite_parameters_are_refused(mode, params, name):
    model = tiny_layout_model("gqa")
    spec = RotaryBands.from_model(model)
    if params.get("reference") == "nan":
        ref = torch.zeros(spec.n_layers, spec.n_kv_heads, spec.n_bands, 2)
        ref[0, 0, 0, 0] = float("nan")
        params = {"reference": ref}
        with pytest.raises(ParameterError, match=name):
            ablate_bands(model, [0, 1], mode=mode, target="k", **params)
        return
    with pytest.raises(ParameterError, match=name):
        ablate_bands(model, [0, 1], mode=mode, **params)


def test_huge_finite_parameters_whose_angles_overflow_are_refused():
    # factor=1e308 made the extra angle inf, cos/sin NaN, and TL zeroed the NaN q/k: a finite, meaningless run
    model = tiny_layout_model("gqa")
    spec = RotaryBands.from_model(model)
    for factor in (1e308, -1e308):
        with pytest.raises(ParameterError, match="factor=.*beyond what float64 holds"):
            ablate_bands(model, [0, 1], mode="scale_freq", factor=factor)
    with pytest.raises(ParameterError, match="factor"):  # a sweep refuses before any forward
        from rope_interp.sweep.metrics import logit_diff
        from rope_interp.sweep.tiers import exact_sweep

        exact_sweep(
            model, TOKENS, logit_diff(1, 2), mode="scale_freq", params={"factor": 1e308}, progress=False
        )
    # the bound is per selection: the slowest band (theta < 1e-2) keeps 1e306 * theta * n_ctx finite
    last = spec.n_bands - 1
    assert float(spec.freqs[:, last].max()) * 1e306 * spec.n_ctx < torch.finfo(torch.float64).max
    with torch.no_grad():
        out = ablate_bands(model, [last], mode="scale_freq", factor=1e306).run(TOKENS)
    assert torch.isfinite(out).all()


def test_no_rotation_on_all_bands_is_unrotated_qk(layout_model):
    spec = RotaryBands.from_model(layout_model)
    rd, adj = spec.rotary_dim, spec.adjacent_pairs
    names = [attn_hook(L, s) for L in range(spec.n_layers) for s in ("q", "k", "attn_scores")]
    with torch.no_grad(), ablate_bands(layout_model, None, mode="no_rotation"):
        _, cache = layout_model.run_with_cache(TOKENS, names_filter=names)
    for L in range(spec.n_layers):
        amp = spec.amplitude[L].float()[:, None]
        q, k = cache[attn_hook(L, "q")], cache[attn_hook(L, "k")]
        terms, rest = band_score_terms(
            band_view(q, rd, adj) * amp,
            band_view(k, rd, adj) * amp,
            float(spec.attn_scale[L]),
            pass_view(q, rd),
            pass_view(k, rd),
        )
        want = terms.sum(2) + rest
        got = cache[attn_hook(L, "attn_scores")]
        mask = torch.isfinite(got)
        if layout_model.cfg.use_local_attn:  # local layers mask more; compare where the model attends
            want = want.masked_fill(~mask, float("-inf"))
        torch.testing.assert_close(got[mask], want[mask], atol=1e-4, rtol=1e-4)


def test_zeroing_band_changes_only_its_term(layout_model):
    spec = RotaryBands.from_model(layout_model)
    L, i = spec.n_layers - 1, spec.n_bands // 2
    before = band_scores(layout_model, TOKENS, L)
    with ablate_bands(layout_model, [i], layers=L, mode="zero"):
        after = band_scores(layout_model, TOKENS, L)
    others = [j for j in range(spec.n_bands) if j != i]
    assert after.per_band[:, :, i].abs().max() == 0
    assert before.per_band[:, :, i].abs().max() > 0
    torch.testing.assert_close(after.per_band[:, :, others], before.per_band[:, :, others], atol=0, rtol=0)
    torch.testing.assert_close(after.remainder, before.remainder, atol=0, rtol=0)


def test_scale_freq_zero_equals_no_rotation_and_prope(layout_model):
    base = layout_model(TOKENS)
    with torch.no_grad():
        scaled = ablate_bands(layout_model, [1, 2], target="q", mode="scale_freq", factor=0.0).run(TOKENS)
        unrot = ablate_bands(layout_model, [1, 2], target="q", mode="no_rotation").run(TOKENS)
        torch.testing.assert_close(scaled, unrot, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(scaled, base, atol=1e-4)
        torch.testing.assert_close(prope(layout_model, 1.0).run(TOKENS), base, atol=0, rtol=0)
        torch.testing.assert_close(
            prope(layout_model, 0.0).run(TOKENS),
            ablate_bands(layout_model, None, mode="no_rotation").run(TOKENS),
        )


def test_scale_freq_matches_rotating_pre_rotation_values_at_c_theta():
    model = tiny_layout_model("gqa")
    spec = RotaryBands.from_model(model)
    c, L = 2.5, 1
    names = [attn_hook(L, s) for s in ("q", "rot_q")]
    with torch.no_grad(), ablate_bands(model, None, layers=L, target="q", mode="scale_freq", factor=c):
        _, cache = model.run_with_cache(TOKENS, names_filter=names)
    m = torch.arange(TOKENS.shape[1], dtype=torch.float64)
    ang = (c * m[:, None] * spec.freqs[L][None, :])[None, :, None, :]
    pre = band_view(cache[attn_hook(L, "q")], spec.rotary_dim, spec.adjacent_pairs).double()
    want = torch.stack(
        [
            pre[..., 0] * ang.cos() - pre[..., 1] * ang.sin(),
            pre[..., 0] * ang.sin() + pre[..., 1] * ang.cos(),
        ],
        -1,
    )
    got = band_view(cache[attn_hook(L, "rot_q")], spec.rotary_dim, spec.adjacent_pairs).double()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mean_mode_replaces_by_positional_mean_or_reference():
    from rope_interp import BandStats

    model = tiny_layout_model("neox")
    L, bands = 0, [1, 5]
    site = attn_hook(L, "rot_k")
    with torch.no_grad():
        _, clean = model.run_with_cache(TOKENS, names_filter=[site])
        with ablate_bands(model, bands, layers=L, target="k", mode="mean"):
            _, cache = model.run_with_cache(TOKENS, names_filter=[site])
    v0, v1 = band_view(clean[site], 16, False), band_view(cache[site], 16, False)
    torch.testing.assert_close(
        v1[:, :, :, bands], v0[:, :, :, bands].mean(1, keepdim=True).expand_as(v1[:, :, :, bands])
    )
    others = [i for i in range(8) if i not in bands]
    assert torch.equal(v1[:, :, :, others], v0[:, :, :, others])
    stats = BandStats(model, sites=["rot_q", "rot_k"]).update(TOKENS)
    with torch.no_grad(), ablate_bands(model, bands, layers=L, target="k", mode="mean", reference=stats):
        _, ref_cache = model.run_with_cache(TOKENS, names_filter=[site])
    torch.testing.assert_close(band_view(ref_cache[site], 16, False)[:, :, :, bands], v1[:, :, :, bands])


@pytest.mark.parametrize(
    "mode,params",
    [("zero", {}), ("shift", {"delta": 2}), ("no_rotation", {}), ("scale_freq", {"factor": 0.5})],
)
def test_kv_cache_generation_matches_full_forward(mode, params):
    model = tiny_layout_model("gqa")
    n = TOKENS.shape[1]
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    with torch.no_grad(), ablate_bands(model, [0, 3, 7], mode=mode, **params):
        full = model(TOKENS)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
        steps = [
            model(TOKENS[:, :5], past_kv_cache=cache, attention_mask=torch.ones(1, 5, dtype=torch.long))[
                :, -1
            ]
        ]
        for t in range(5, n):
            steps.append(
                model(
                    TOKENS[:, t : t + 1],
                    past_kv_cache=cache,
                    attention_mask=torch.ones(1, 1, dtype=torch.long),
                )[:, -1]
            )
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "mode,params",
    [
        ("zero", {}),
        ("mean", {}),
        ("shift", {"phase": 0.3}),
        ("no_rotation", {}),
        ("scale_freq", {"factor": 2.0}),
    ],
)
def test_exception_inside_context_leaves_model_clean(layout_model, mode, params):
    with torch.no_grad():
        before = layout_model(TOKENS)
        hs = ablate_bands(layout_model, [0, 1], layers=0, mode=mode, **params) + prope(layout_model, 0.5)
        with pytest.raises(KeyError, match="boom"), hs:
            layout_model(TOKENS)
            raise KeyError("boom")
        assert no_hooks_left(layout_model)
        assert torch.equal(layout_model(TOKENS), before)
        # an exception raised by the forward itself (bad token id) also cleans up
        with pytest.raises(IndexError), hs:
            layout_model(torch.tensor([[10**6]]))
        assert no_hooks_left(layout_model)
        assert torch.equal(layout_model(TOKENS), before)


def test_run_with_hooks_list_equals_context():
    model = tiny_layout_model("gptj")
    hs = ablate_bands(model, [1], mode="scale_freq", factor=3.0) + ablate_bands(
        model, [2], target="k", mode="zero"
    )
    with torch.no_grad():
        a = model.run_with_hooks(TOKENS, fwd_hooks=hs.fwd_hooks())
        b = hs.run(TOKENS)
    assert torch.equal(a, b)
    assert not torch.allclose(a, model(TOKENS))


def test_gqa_head_rule():
    model = tiny_layout_model("gqa")  # 6 query heads, 2 kv heads: groups {0,1,2}, {3,4,5}
    with pytest.raises(RopeInterpError, match=r"query heads \[1, 2\] also read"):
        ablate_bands(model, [0], heads=[0], target="qk")
    assert ablate_bands(model, [0], heads=[0], target="q").k_heads is None
    assert ablate_bands(model, [0], heads=[3, 4, 5]).k_heads == [1]
    hs = ablate_bands(model, [0], heads=[0], kv_heads=[0])
    assert (hs.q_heads, hs.k_heads) == ([0], [0])
    # a q-only head selection touches only that head's scores
    base = scores_of(model, layer=0)
    got = scores_of(model, ablate_bands(model, [0, 1, 2], layers=0, heads=[4], target="q"), layer=0)
    changed = (got - base).nan_to_num(0.0).abs().amax(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [False, False, False, False, True, False]


def test_bad_inputs_raise_clear_errors():
    model = tiny_layout_model("neox")
    with pytest.raises(LayerError, match="band 8 is out of range"):
        ablate_bands(model, [8])
    with pytest.raises(LayerError, match="layer 5 is out of range"):
        ablate_bands(model, [0], layers=[5])
    with pytest.raises(LayerError, match="head 9"):
        ablate_bands(model, [0], heads=[9], target="q")
    with pytest.raises(RopeInterpError, match="unknown intervention mode 'erase'"):
        ablate_bands(model, [0], mode="erase")
    with pytest.raises(RopeInterpError, match="unknown target"):
        ablate_bands(model, [0], target="v")
    with pytest.raises(RopeInterpError, match="takes no parameters; got unexpected parameter 'factor'"):
        ablate_bands(model, [0], mode="zero", factor=2)
    with pytest.raises(RopeInterpError, match="exactly one of phase"):
        ablate_bands(model, [0], mode="shift")
    with pytest.raises(RopeInterpError, match="needs factor"):
        ablate_bands(model, [0], mode="scale_freq")
    with pytest.raises(RopeInterpError, match="shape"):
        ablate_bands(model, [0], mode="mean", reference=torch.zeros(3, 2))
    with pytest.raises(RopeInterpError, match="p must be in"):
        prope(model, 1.5)
    assert isinstance(ablate_bands(model, 0), BandIntervention)
