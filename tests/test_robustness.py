"""Robustness: half precision, contexts longer than TransformerLens' initial rotary cache,
memory of long decompositions, and hook hygiene of every context manager on both model classes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rope_interp.bands import rotate
from rope_interp.errors import TokenError
from rope_interp.model import adapter
from rope_interp.model.hooks import attn_hook
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import tiny_bridge, tiny_model
from rope_interp.read.capture import BandCapture, BandStats
from rope_interp.read.decompose import band_scores, iter_band_scores


def _scores(model, tokens, layer):
    store = []
    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            stop_at_layer=layer + 1,
            fwd_hooks=[(attn_hook(layer, "attn_scores"), lambda x, hook: store.append(x.detach().clone()))],
        )
    return store[0]


# ---- dtypes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_bf16():
    from rope_interp import load_model

    return load_model("smollm2-135m", dtype="bfloat16")


@pytest.mark.slow
def test_bf16_decomposition_error_is_bounded(smol, smol_bf16, english_tokens):
    """A bf16 model decomposed with float32 accumulation, against the float32 model.

    Measured on SmolLM2 (64 tokens): the arithmetic of the decomposition adds ~3e-8 of the
    largest term (float32 vs float64 accumulation of the same bf16 q/k); the bf16 model's
    own drift moves the terms by ~2% of the largest term at layer 4 (10-17% at layer 15);
    the terms add up to the model's own bf16 scores to ~0.2% (its bf16 rounding).
    """
    toks, layer = english_tokens[:, :64], 4
    ref = band_scores(smol, toks, layer)  # float32 model
    half = band_scores(smol_bf16, toks, layer)  # bf16 model, float32 accumulation
    exact = band_scores(smol_bf16, toks, layer, dtype=torch.float64)
    assert half.per_band.dtype == torch.float32 and exact.per_band.dtype == torch.float64
    scale = ref.per_band.abs().max().item()
    arithmetic = (half.per_band.double() - exact.per_band).abs().max().item() / scale
    model_err = (half.per_band - ref.per_band).abs().max().item() / scale
    assert arithmetic < 1e-6
    assert model_err < 0.05
    # the terms still add up to the bf16 model's own scores (computed in bf16)
    own = _scores(smol_bf16, toks, layer).float()
    mask = ref.causal_mask()
    assert (half.scores() - own)[..., mask].abs().max() < 0.02 * own[..., mask].abs().max()


@pytest.mark.slow
def test_bf16_spec_and_stats_precision(smol, smol_bf16, english_tokens):
    assert torch.equal(RotaryBands.from_model(smol_bf16).freqs, RotaryBands.from_model(smol).freqs)
    sin, cos = adapter.rotary_tables(smol_bf16, 0, 4096)
    assert sin.dtype == cos.dtype == torch.float64
    stats = BandStats(smol_bf16, layers=[1]).update(english_tokens[:, :32])
    assert stats.moments["rot_q"].sum_norm.dtype == torch.float64
    ref = BandStats(smol, layers=[1]).update(english_tokens[:, :32])
    torch.testing.assert_close(stats.mean_norm("rot_q"), ref.mean_norm("rot_q"), rtol=0.03, atol=1e-3)


@pytest.mark.parametrize("make", [tiny_model, tiny_bridge], ids=["hooked", "bridge"])
def test_half_precision_tiny_models(make):
    model = make(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    toks = torch.randint(3, 50, (1, 16), generator=torch.Generator().manual_seed(0))
    bs = band_scores(model, toks, 1)
    assert bs.per_band.dtype == torch.float32
    own = _scores(model, toks, 1).float()
    mask = bs.causal_mask()
    err = (bs.scores() - own)[..., mask].abs().max().item()
    assert err < 0.05 * own[..., mask].abs().max().item()  # bf16 rounding of the model's own scores
    assert RotaryBands.from_model(model).freqs.dtype == torch.float64


# ---- long contexts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_model, tiny_bridge], ids=["hooked", "bridge"])
def test_past_the_initial_rotary_cache(make):
    """HookedTransformer builds sin/cos for min(n_ctx, 2048) positions and grows them on demand:
    frequencies, tables and the decomposition stay exact past that point."""
    if make is tiny_model:
        model = tiny_model(n_ctx=4096, d_vocab=64)
        initial = adapter.rotary_buffers(model, 0)[0].shape[0]
        assert initial == 2048
    else:
        model = tiny_bridge("llama", max_position_embeddings=4096)
        initial = 2048
    n = initial + 300
    before = RotaryBands.from_model(model)
    toks = torch.randint(3, 60, (1, n), generator=torch.Generator().manual_seed(0))
    layer = 1
    chunks = list(iter_band_scores(model, toks, layer, chunk_size=1024))
    last = chunks[-1]
    ref = _scores(model, toks, layer)[..., last.q_start :, :]
    mask = last.causal_mask()
    assert (last.scores() - ref)[..., mask].abs().max().item() < 1e-4
    if make is tiny_model:
        assert adapter.rotary_buffers(model, 0)[0].shape[0] >= n  # TransformerLens grew its cache
        sin, cos = adapter.rotary_tables(model, 0, n)
        buf_sin, buf_cos = adapter.rotary_buffers(model, 0)
        torch.testing.assert_close(sin[initial:n].float(), buf_sin[initial:n], rtol=0, atol=1e-4)
        torch.testing.assert_close(cos[initial:n].float(), buf_cos[initial:n], rtol=0, atol=1e-4)
    after = RotaryBands.from_model(model)
    assert torch.equal(before.freqs, after.freqs)
    # hook_rot_q at late positions is hook_q rotated by theta_i * m with the spec's frequencies
    with BandCapture(model, layers=[0], sites=["q", "rot_q"]) as cap, torch.no_grad():
        model(toks, stop_at_layer=1)
    pos = torch.arange(initial, n, dtype=torch.float64)
    angle = pos[:, None, None] * after.freqs[0]
    want = rotate(cap[0, "q"][0, initial:].double(), angle)
    err = (cap[0, "rot_q"][0, initial:].double() - want).abs().max()
    assert err < 1e-3 * want.abs().max()  # the model's float32 angles at m ~ 2,300: ~1e-4 rad


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from rope_interp import load_model
    from rope_interp.data import load_text
    from rope_interp.read.decompose import iter_band_scores
    n, layer, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_grad_enabled(False)
    model = load_model("smollm2-135m")
    toks = model.to_tokens(load_text())
    toks = toks.repeat(1, n // toks.shape[1] + 1)[:, :n]
    total = torch.zeros(model.cfg.n_heads, 32, dtype=torch.float64)
    for c in iter_band_scores(model, toks, layer, chunk_size=chunk):
        total += c.mean_abs().double() * c.per_band.shape[-2]
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": n, "peak_rss_gib": kib / 1024**2, "finite": bool(torch.isfinite(total).all())}))
    """
)


def peak_rss_of_long_decomposition(n_tokens: int, layer: int = 3, chunk_size: int = 256) -> dict:
    """Run iter_band_scores over ``n_tokens`` of the embedded model in a fresh process; its peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(n_tokens), str(layer), str(chunk_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_long_decomposition_memory():
    """Chunked decomposition of 1,536 tokens stays far below 8 GiB (4,096 tokens: see the README)."""
    res = peak_rss_of_long_decomposition(1536, layer=2, chunk_size=256)
    assert res["finite"] and res["tokens"] == 1536
    assert res["peak_rss_gib"] < 8.0


# ---- hook hygiene -------------------------------------------------------------------------------------------
def _context_managers(model, toks):
    """Every HookSet rope_interp offers, built for ``model`` (name, factory)."""
    from rope_interp.analyses.heads import OffsetAttention
    from rope_interp.analyses.massive import MeanAblateDims
    from rope_interp.intervene.ablate import ablate_bands, prope
    from rope_interp.sweep.patching import MaskedBands, PatternDistance

    rb = RotaryBands.from_model(model)
    q_mask = torch.zeros(1, 1, rb.n_heads, rb.n_bands, dtype=torch.bool)
    q_mask[..., 0] = True
    dims = torch.zeros(rb.n_heads, rb.d_head, dtype=torch.bool)
    dims[:, 1] = True
    yield "BandCapture", lambda: BandCapture(model, sites=["q", "k", "rot_q", "rot_k", "v"])
    yield "BandStats", lambda: BandStats(model, sites=["rot_q", "rot_k", "v"])
    for mode, params in [
        ("zero", {}),
        ("mean", {}),
        ("no_rotation", {}),
        ("shift", {"delta": 2}),
        ("scale_freq", {"factor": 2.0}),
    ]:
        yield (
            f"ablate_bands-{mode}",
            lambda mode=mode, params=params: ablate_bands(model, [0, 1], mode=mode, **params),
        )
    yield "prope", lambda: prope(model, 0.5)
    yield (
        "composed",
        lambda: ablate_bands(model, [0], layers=0) + BandCapture(model) + BandStats(model, layers=[1]),
    )
    yield "MaskedBands", lambda: MaskedBands(model, 1, q_mask, None)
    yield "PatternDistance", lambda: PatternDistance(model, 1, PatternDistance.reference(model, toks, 1))
    yield "MeanAblateDims", lambda: MeanAblateDims(model, {(0, "rot_q"): dims})
    yield "OffsetAttention", lambda: OffsetAttention(model, [0, 1])


def _live_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("make", [tiny_model, tiny_bridge], ids=["hooked", "bridge"])
def test_every_context_manager_cleans_up_on_error(make):
    model = make()
    toks = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(toks)
    level = model.context_level
    names = []
    for name, build in _context_managers(model, toks):
        names.append(name)
        cm = build()
        with pytest.raises(_Boom), torch.no_grad():
            with cm:
                assert _live_hooks(model) > 0, name
                model(toks)
                raise _Boom(name)
        assert _live_hooks(model) == 0, name
        assert model.context_level == level, name
        with torch.no_grad():
            assert torch.equal(model(toks), before), name
        # the same object is reusable after the error, and as a plain fwd_hooks list
        with torch.no_grad():
            model.run_with_hooks(toks, fwd_hooks=cm.fwd_hooks())
        assert _live_hooks(model) == 0, name
    assert len(names) == 13


@pytest.mark.parametrize("make", [tiny_model, tiny_bridge], ids=["hooked", "bridge"])
def test_functions_clean_up_when_the_forward_fails(make):
    """Functions that hook internally leave nothing behind when the model raises mid-forward."""
    model = make()
    toks = torch.randint(3, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(toks)
    bad = toks.clone()
    bad[0, 3] = 10**6  # out of the vocabulary: refused before anything is hooked
    with pytest.raises(TokenError, match="outside the model's vocabulary"):
        band_scores(model, bad, 1)

    def boom(act, hook):  # a user's hook that raises inside the forward, after rope_interp's hooks
        raise _Boom("forward failed")

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", boom)]):
        users = _live_hooks(model)
        with pytest.raises(_Boom):
            band_scores(model, toks, 1)
        with pytest.raises(_Boom):
            BandStats(model).update(toks)
        with pytest.raises(_Boom):
            list(iter_band_scores(model, toks, 0 + 1, chunk_size=4))
        assert _live_hooks(model) == users  # only the user's own hook
    assert _live_hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(toks), before)
