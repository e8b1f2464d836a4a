"""Ruscio et al. on the embedded SmolLM2-135M: the three faithful tests of v1/v2 (numbers in the docstrings)
and the recorded numbers of the four spectral measures."""

from __future__ import annotations

import math

import pytest
import torch

from rope_interp.analyses import carrier_survey, causal_alignment, ffn_harmonics

pytestmark = pytest.mark.slow


def test_carrier_reaches_the_sink_but_not_the_mlp_input_on_text(smol, english_tokens):
    """Measured (256 positions, layers 0 and 2): text sink 9/108 head-bands, MLP input 0/12 bands;
    one repeated token: sink 67/108, MLP input 8/12; random tokens: sink 41/108, MLP input 0/12."""
    with torch.no_grad():
        s = carrier_survey(smol, english_tokens, n_pos=256, layers=[0, 2], progress=False).summary()
    assert s["text"]["mlp_in_lines"] == 0 and s["random"]["mlp_in_lines"] == 0
    assert s["repeated"]["mlp_in_lines"] >= 4
    assert s["repeated"]["sink_lines"] > s["random"]["sink_lines"] > s["text"]["sink_lines"] > 0


def test_real_ffn_makes_harmonics_growing_like_a_to_the_k(smol, english_tokens):
    """Measured (layer 1, head 0): slopes 1.97 / 2.98 / 4.18 for 2θ / 3θ / 4θ in W_Q's band directions
    (random directions 1.97 / 2.93 / 3.90); at a = 2σ the 2nd harmonic is 0.90 of the fundamental."""
    with torch.no_grad():
        h = ffn_harmonics(smol, english_tokens[:, :256], layer=1, head=0, progress=False)
    sl = h.slopes()
    torch.testing.assert_close(sl[:, 1:3], torch.tensor([[2.0, 3.0], [2.0, 3.0]]), atol=0.15, rtol=0)
    assert bool((h.rel()[:, -1, 1] > 0.3).all())  # strong harmonics at a = 2σ
    assert bool((h.rel("mlp_in")[:, -1, 1] < 0.1).all())  # the norm alone makes little
    assert bool((h.generation()[:, -1, 1] > 10).all())  # the MLP raises 2θ by > 10x over its input's


def test_sharpness_tracks_the_aligning_shift_not_the_clean_phase(smol, english_tokens):
    """Measured (256 tokens, layer 1 head 2, the layer's sharpest): its most-used band 24 is not aligned in
    the clean model (weighted alignment -0.41; aligning shift +2.0 rad). Entropy is 0.261 clean, 0.17 over
    Δφ in [+0.5, π] (around the aligning shift), 0.35 at Δφ = -0.5..-1.0 (around the anti-aligning one);
    least-used band 18: < 0.002 change. Sharpness follows alignment, but the trained head is not at it."""
    with torch.no_grad():
        r = causal_alignment(
            smol,
            english_tokens[:, :256],
            layer=1,
            head=2,
            bands=[24, 18],
            phases=[0.0, 2.0, -1.0, math.pi],
            n_random=0,
            progress=False,
        )
    assert int(r.usage.argmax()) == 24
    assert float(r.clean_alignment[24]) < -0.3 and 1.5 < float(r.aligning_shift[24]) < 2.5
    e = r.entropy[0]
    assert float(e[1]) < float(e[0]) - 0.05  # shifting toward alignment sharpens
    assert float(e[2]) > float(e[0]) + 0.05  # shifting away flattens
    assert abs(float(r.entropy[1, -1] - r.entropy[1, 0])) < 0.005


# Recorded from the public functions as they were before each became its accumulator fed by the shared
# pass (their own window loops, commit ba78222): 256 tokens of the bundled text in two windows of 128,
# layers 0 and 2, default options; reduced per layer in float64. The values did not change between 1 and
# 2 CPU threads; compared with rtol=1e-5, atol=1e-7 (tests/test_stream.py's float tolerance).
SPECTRAL_NUMBERS = {
    "bands": {
        "psd_q": [954088.619032383, 1613788.7890043259],
        "psd_k": [1299574.3285505772, 3646724.066016197],
        "nfft": 256,
        "n_windows": 2,
    },
    "attention": {
        "energy": [
            [0.7397641075981988, 0.1767510308159722, 0.08348486117190784],
            [0.5366863045427535, 0.33091312812434304, 0.13240057478348413],
        ],
        "h_pos": [0.8710194362534417, 0.6638262106312646],
        "h_spec": [0.6259273621771071, 0.8014435834354825],
        "rho": [-0.6972045236163669, -0.19483072786695427],
        "n_rows": 24,
    },
    "mlp": {
        "psd": [[782.9589986801147, 154.5270379781723], [1245.4708213806152, 376.16197580099106]],
        "nfft": 256,
        "window_len": 128,
    },
    "phase": {
        "alignment": [0.18274254328288306, 0.12440715673579285],
        "corr_entropy": [-0.1031910559209387, -0.08946592393133163],
        "corr_max": [0.07083544633213831, 0.0513096467396584],
        "n_queries": 254,
    },
}


def test_spectral_measures_keep_their_numbers(smol, english_tokens):
    """The four public spectral functions give the numbers they gave with their own window loops."""
    from rope_interp.analyses import attention_spectra, band_spectra, mlp_spectra, phase_alignment

    kw = dict(layers=[0, 2], window=128, progress=False)
    tokens = english_tokens[:, :256]
    with torch.no_grad():
        b, a = band_spectra(smol, tokens, **kw), attention_spectra(smol, tokens, **kw)
        m, p = mlp_spectra(smol, tokens, **kw), phase_alignment(smol, tokens, **kw)
    got = {
        "bands": {
            "psd_q": b.psd_q.double().sum((1, 2)),
            "psd_k": b.psd_k.double().sum((1, 2)),
            "nfft": b.nfft,
            "n_windows": b.n_windows,
        },
        "attention": {
            "energy": a.energy.double().mean(1),
            "h_pos": a.h_pos.double().mean(1),
            "h_spec": a.h_spec.double().mean(1),
            "rho": a.rho.double().mean(1),
            "n_rows": a.n_rows,
        },
        "mlp": {"psd": m.psd.double().sum(-1), "nfft": m.nfft, "window_len": m.window_len},
        "phase": {
            "alignment": p.alignment.double().mean((1, 2)),
            "corr_entropy": p.corr_entropy.double().mean((1, 2)),
            "corr_max": p.corr_max.double().mean((1, 2)),
            "n_queries": p.n_queries,
        },
    }
    assert b.layers == a.layers == m.layers == p.layers == [0, 2]
    for part, want in SPECTRAL_NUMBERS.items():
        for key, value in want.items():
            x = got[part][key]
            if isinstance(value, int):
                assert x == value, f"{part}.{key}"
            else:
                expected = torch.tensor(value, dtype=torch.float64)
                torch.testing.assert_close(
                    x, expected, rtol=1e-5, atol=1e-7, msg=lambda s, w=f"{part}.{key}": w + s
                )
