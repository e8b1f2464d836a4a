"""Band activation patching: identities on every tiny layout, metrics, results, errors."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from rope_interp import RotaryBands, band_scores
from rope_interp.errors import LayerError, RopeInterpError
from rope_interp.model.hooks import attn_hook
from rope_interp.model.testing import tiny_layout_model
from rope_interp.sweep.patching import (
    MaskedBands,
    PatternDistance,
    capture_source,
    kl_metric,
    logit_diff,
    loss_metric,
    patch_layer_band,
    patch_layer_band_pos,
    patch_layer_head_band,
    patch_sweep,
)

matplotlib.use("Agg")

CLEAN = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
CORRUPT = torch.tensor([[3, 1, 4, 1, 7, 9, 2, 8, 5, 3]])


def full_masks(spec, n=1):
    q = torch.ones(n, 1, spec.n_heads, spec.n_bands, dtype=torch.bool)
    k = torch.ones(n, 1, spec.n_kv_heads, spec.n_bands, dtype=torch.bool)
    return q, k


@pytest.mark.parametrize("method", ["naive", "exact", "attribution"])
def test_patching_clean_into_clean_is_identity(layout_model, method):
    metric = logit_diff(7, 8)
    r = patch_layer_head_band(layout_model, CLEAN, CLEAN, metric, method=method, progress=False)
    spec = RotaryBands.from_model(layout_model)
    assert r.values.shape == (spec.n_layers, spec.n_kv_heads, spec.n_bands)
    with torch.no_grad():
        assert r.base == pytest.approx(metric(layout_model(CLEAN)).item(), abs=1e-6)
    torch.testing.assert_close(r.effect, torch.zeros_like(r.effect), atol=1e-5, rtol=0)


def test_patching_every_band_restores_clean_scores(layout_model):
    spec = RotaryBands.from_model(layout_model)
    L = spec.n_layers - 1
    src = capture_source(layout_model, CLEAN, [L])[L]
    q, k = full_masks(spec)
    names = [attn_hook(L, "attn_scores")]
    with torch.no_grad():
        _, clean = layout_model.run_with_cache(CLEAN, names_filter=names)
        _, corrupt = layout_model.run_with_cache(CORRUPT, names_filter=names)
        with MaskedBands(layout_model, L, q, k, src, passthrough=True):
            _, patched = layout_model.run_with_cache(CORRUPT, names_filter=names)
    assert not torch.allclose(corrupt[names[0]], clean[names[0]])
    torch.testing.assert_close(patched[names[0]], clean[names[0]], atol=1e-5, rtol=1e-5)
    # without the pass-through dims, every band's own score term is the clean one
    clean_terms = band_scores(layout_model, CLEAN, L).per_band
    with MaskedBands(layout_model, L, q, k, src):
        patched_terms = band_scores(layout_model, CORRUPT, L).per_band
    torch.testing.assert_close(patched_terms, clean_terms, atol=1e-5, rtol=1e-5)


def test_metrics():
    model = tiny_layout_model("neox")
    with torch.no_grad():
        logits = model(CLEAN)
    assert loss_metric(CLEAN)(logits).item() == pytest.approx(
        model(CLEAN, return_type="loss").item(), rel=1e-5
    )
    assert kl_metric(logits, pos=None)(logits).abs().item() < 1e-6
    assert kl_metric(logits)(logits + torch.randn_like(logits)).item() > 0
    ld = logit_diff(torch.tensor([1]), torch.tensor([2]), pos=3)(logits)
    assert ld.item() == pytest.approx((logits[0, 3, 1] - logits[0, 3, 2]).item())
    ref = PatternDistance.reference(model, CLEAN, layer=0)
    pd = PatternDistance(model, 0, ref, heads=[0, 2])
    with torch.no_grad(), pd:
        model(CORRUPT)
    d = pd(None)
    assert 0 < d.item() <= 1
    exact = patch_layer_band(model, CLEAN, CORRUPT, pd, progress=False)
    naive = patch_layer_band(model, CLEAN, CORRUPT, pd, method="naive", progress=False)
    assert exact.base == pytest.approx(d.item(), abs=1e-6)
    torch.testing.assert_close(exact.values, naive.values, atol=1e-6, rtol=0)
    assert (exact.values[1] == exact.base).all()  # layer 1 cannot change layer 0's pattern
    assert exact.effect[0].abs().max() > 1e-3


def test_per_position_sweep_and_result_views():
    model = tiny_layout_model("gqa")
    r = patch_layer_band_pos(
        model, CLEAN, CORRUPT, logit_diff(7, 8), layers=[0], bands=[0, 3], positions=[2, 4, 9], progress=False
    )
    assert r.values.shape == (1, 2, 3)
    assert r.coords == {"layer": [0], "band": [0, 3], "pos": [2, 4, 9]}
    # position 2 is identical in clean and corrupted, and nothing at or before it differs: no effect there
    assert r.effect[0, :, 0].abs().max() < 1e-6
    df = r.to_dataframe()
    assert len(df) == 6 and list(df.columns) == ["layer", "band", "pos", "value", "effect"]
    assert df.loc[df.pos == 9, "effect"].abs().max() == pytest.approx(r.effect[0, :, 2].abs().max().item())
    fig = r.plot()
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() == "pos" and ax.get_ylabel() == "layer"
    fig2 = patch_layer_band(model, CLEAN, CORRUPT, logit_diff(7, 8), progress=False).plot(title="t")
    assert fig2.axes[0].get_title() == "t" and fig2.axes[0].get_xlabel() == "band"


def test_q_only_head_axis_is_query_heads():
    model = tiny_layout_model("gqa")
    r = patch_layer_head_band(model, CLEAN, CORRUPT, logit_diff(7, 8), target="q", layers=[1], progress=False)
    assert r.values.shape == (1, 6, 8)
    r = patch_layer_head_band(model, CLEAN, CORRUPT, logit_diff(7, 8), target="k", heads=[1], progress=False)
    assert r.values.shape == (2, 1, 8)


def test_bad_inputs_raise_clear_errors():
    model = tiny_layout_model("neox")
    ld = logit_diff(1, 2)
    with pytest.raises(RopeInterpError, match="differ in shape"):
        patch_layer_band(model, CLEAN, CLEAN[:, :-1], ld)
    with pytest.raises(RopeInterpError, match="metric must return a scalar"):
        patch_layer_band(model, CLEAN, CORRUPT, lambda logits: logits[:, -1, 0], progress=False)
    with pytest.raises(LayerError, match="layer 2 is out of range"):
        patch_layer_band(model, CLEAN, CORRUPT, ld, layers=[2])
    with pytest.raises(LayerError, match="band 8 is out of range"):
        patch_layer_band(model, CLEAN, CORRUPT, ld, bands=[8])
    with pytest.raises(LayerError, match="kv head 2 is out of range"):
        patch_layer_head_band(model, CLEAN, CORRUPT, ld, heads=[2])
    with pytest.raises(LayerError, match="position 10 is out of range"):
        patch_layer_band_pos(model, CLEAN, CORRUPT, ld, positions=[10])
    with pytest.raises(RopeInterpError, match="unknown method"):
        patch_layer_band(model, CLEAN, CORRUPT, ld, method="fast")
    with pytest.raises(RopeInterpError, match="unknown target"):
        patch_layer_band(model, CLEAN, CORRUPT, ld, target="v")
    with pytest.raises(RopeInterpError, match="per must list"):
        patch_sweep(model, CLEAN, CORRUPT, ld, ("band", "neuron"))
    with pytest.raises(RopeInterpError, match="add 'head' to per"):
        patch_layer_band(model, CLEAN, CORRUPT, ld, heads=[0])
