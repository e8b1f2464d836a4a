"""RotaryBands against each model's own sin/cos tables, for every layout and scaling."""

import math

import pytest
import torch

from rope_interp import BandCapture, NotRotaryError, RotaryBands, band_view
from rope_interp.model.testing import LAYOUTS, tiny_layout_model, tiny_model


def test_frequencies_and_dims_match_the_models_sin_cos_buffers(layout_model):
    spec = RotaryBands.from_model(layout_model)
    assert spec.freqs.shape == (layout_model.cfg.n_layers, spec.n_bands)
    pos = torch.arange(layout_model.blocks[0].attn.rotary_sin.shape[0], dtype=torch.float64)[:40]
    for layer, block in enumerate(layout_model.blocks):
        sin, cos = block.attn.rotary_sin.double()[:40], block.attn.rotary_cos.double()[:40]
        for j in (0, 1):  # both dims of each band turn at the band's frequency
            d = spec.dims[:, j]
            angle = pos[:, None] * spec.freqs[layer][None, :]
            amp = spec.amplitude[layer][None, :]
            assert torch.allclose(sin[:, d], amp * torch.sin(angle), atol=2e-6)
            assert torch.allclose(cos[:, d], amp * torch.cos(angle), atol=2e-6)
    # band 0 is the highest frequency; frequencies never increase with the band index
    assert (spec.freqs[:, 1:] <= spec.freqs[:, :-1] + 1e-12).all()
    assert spec.pass_dims.tolist() == list(range(spec.rotary_dim, spec.d_head))


def test_rotation_seen_at_the_hooks_is_the_one_spec_describes(layout_model):
    """hook_rot_q band = rotate(hook_q band, theta*m) * amplitude; pass-through dims untouched; norms kept."""
    spec = RotaryBands.from_model(layout_model)
    tokens = torch.randint(0, layout_model.cfg.d_vocab, (2, 20))
    with BandCapture(layout_model, sites=["q", "rot_q", "k", "rot_k"], keep_passthrough=True) as cap:
        layout_model(tokens)
    from rope_interp.bands import band_norms, rotate

    m = torch.arange(20, dtype=torch.float64)
    for layer in range(spec.n_layers):
        angle = m[:, None, None] * spec.freqs[layer]  # [pos, 1, band]
        amp = spec.amplitude[layer]
        for pre, post in (("q", "rot_q"), ("k", "rot_k")):
            expect = rotate(cap[layer, pre].double(), angle) * amp[:, None]
            assert torch.allclose(cap[layer, post].double(), expect, atol=1e-5)
            assert torch.equal(cap.passthrough(layer, pre), cap.passthrough(layer, post))
            if torch.allclose(amp, torch.ones_like(amp)):
                assert torch.allclose(band_norms(cap[layer, post]), band_norms(cap[layer, pre]), atol=1e-5)


def test_scalings_change_frequencies_as_configured():
    base = RotaryBands.from_model(tiny_model())
    lin = RotaryBands.from_model(tiny_layout_model("linear_scaled"))
    assert torch.allclose(lin.freqs, base.freqs / 4)
    ntk = RotaryBands.from_model(tiny_layout_model("ntk_by_parts"))
    plain = RotaryBands.from_model(tiny_model(rotary_base=500000))
    # NTK-by-parts keeps the highest frequencies and divides the lowest by the factor
    assert torch.isclose(ntk.freqs[0, 0], plain.freqs[0, 0])
    assert torch.isclose(ntk.freqs[0, -1], plain.freqs[0, -1] / 8)
    lg = RotaryBands.from_model(tiny_layout_model("local_global"))
    assert not lg.uniform_across_layers
    assert torch.allclose(lg.freqs[0], RotaryBands.from_model(tiny_model(rotary_base=10000)).freqs[0])
    assert torch.allclose(lg.freqs[1], RotaryBands.from_model(tiny_model(rotary_base=1000000)).freqs[1])
    yarn = RotaryBands.from_model(tiny_layout_model("yarn"))
    assert torch.allclose(yarn.amplitude, torch.full_like(yarn.amplitude, 1.2))


def test_derived_quantities_and_table():
    spec = RotaryBands.from_model(tiny_model(d_head=8, rotary_base=10000))
    assert torch.allclose(spec.freqs[0], torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64))
    assert torch.allclose(spec.wavelengths[0, 0], torch.tensor(2 * math.pi, dtype=torch.float64))
    assert torch.allclose(spec.cycles(101)[0], spec.freqs[0] * 100 / (2 * math.pi))
    assert spec.band_of_dim(5) == 1 and spec.band_of_dim(1) == 1
    df = spec.to_dataframe(layer=-1, context_length=100)
    assert list(df.index) == [0, 1, 2, 3] and df.loc[1, "dim_b"] == 5
    assert "4 bands" in spec.describe()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_gqa_kv_map(name):
    model = tiny_layout_model(name)
    spec = RotaryBands.from_model(model)
    group = spec.n_heads // spec.n_kv_heads
    assert spec.kv_map.tolist() == [h // group for h in range(spec.n_heads)]


def test_non_rotary_model_gets_one_clear_error():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    gpt2ish = HookedTransformer(
        HookedTransformerConfig(
            n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=16, d_vocab=10, act_fn="gelu"
        )
    )
    with pytest.raises(NotRotaryError, match="rotary"):
        RotaryBands.from_model(gpt2ish)


def test_band_view_of_real_activation_matches_dims():
    model = tiny_model(layout="gptj", d_head=8, rotary_dim=6)
    spec = RotaryBands.from_model(model)
    x = torch.randn(1, 2, 4, 8)
    assert torch.equal(band_view(x, 6, True), x[..., spec.dims])
