"""Frequency entropy of band query norms: pure tones, the pipeline against a direct computation, matched controls."""

import json
import math

import pytest
import torch

from rope_interp.analyses import (
    frequency_entropy,
)
from rope_interp.analyses.entropy import (
    ZeroQueryBands,
    extreme_entries,
    matched_control,
    power_spectrum,
    spectral_entropy,
)
from rope_interp.errors import ParameterError
from rope_interp.intervene.ablate import ablate_bands
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import tiny_layout_model, tiny_model


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
