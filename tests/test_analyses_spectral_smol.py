"""The three faithful tests of Ruscio et al. v1/v2 on the embedded SmolLM2-135M (numbers in the docstrings)."""

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
