"""Generation under band interventions: greedy tokens with the KV cache equal those without it.

HookedTransformer caches keys *before* rotation and re-rotates every key at each step
(``hook_rot_k`` sees all keys); the bridge caches keys *after* rotation (``hook_rot_k``
sees only the new key, and the cached ones keep the intervention they got when computed),
so the position-dependent modes read the true positions from ``hook_cos``/``hook_sin``.
"""

from __future__ import annotations

import pytest
import torch

from rope_interp.intervene.ablate import ablate_bands, positions_from_angles, prope
from rope_interp.model.testing import tiny_bridge, tiny_model
from rope_interp.read.capture import BandStats

N_NEW = 20

# cache-consistent on both model classes
COMMON = [
    ("zero", {}),
    ("shift", {"phase": 1.0}),
    ("shift", {"delta": 5}),
    ("mean", {"reference": "stats"}),
]
# position-dependent modes: positions from the cache offset (HookedTransformer) or hook_cos/hook_sin (bridge)
POSITIONAL = [("no_rotation", {}), ("scale_freq", {"factor": 0.5}), ("prope", {"p": 0.25})]


def _generate(model, tokens, cache: bool, intervention=None):
    kwargs = dict(
        max_new_tokens=N_NEW, do_sample=False, use_past_kv_cache=cache, verbose=False, stop_at_eos=False
    )
    with torch.no_grad():
        if intervention is None:
            return model.generate(tokens, **kwargs)
        with intervention:
            return model.generate(tokens, **kwargs)


def _ablation(model, tokens, mode, params, **sel):
    if mode == "prope":
        return prope(model, **params, **sel)
    if params.get("reference") == "stats":
        params = {"reference": BandStats(model, sites=["rot_q", "rot_k"]).update(tokens)}
    return ablate_bands(model, sel.pop("bands", None), mode=mode, **sel, **params)


def _check(model, tokens, mode, params, **sel):
    """Cached and uncached greedy generation under the same intervention give the same tokens."""
    cached = _generate(model, tokens, True, _ablation(model, tokens, mode, params, **sel))
    uncached = _generate(model, tokens, False, _ablation(model, tokens, mode, params, **sel))
    assert cached.shape == (tokens.shape[0], tokens.shape[1] + N_NEW)
    assert torch.equal(cached, uncached), (
        mode,
        params,
        cached[0, -N_NEW:].tolist(),
        uncached[0, -N_NEW:].tolist(),
    )
    assert [h for hp in model.hook_dict.values() for h in hp.fwd_hooks] == []
    return cached


def _changes_logits(model, tokens, mode, params, **sel):
    with torch.no_grad():
        base = model(tokens)
        with _ablation(model, tokens, mode, params, **sel):
            return (model(tokens) - base).abs().max().item() > 0.1


@pytest.fixture(scope="module")
def tiny_pair():
    """Tiny random models whose greedy continuations are not degenerate (init_range=1)."""
    hooked = tiny_model(d_vocab=64, n_ctx=128, init_range=1.0)
    bridge = tiny_bridge("llama", initializer_range=1.0)
    toks = torch.randint(3, 60, (1, 8), generator=torch.Generator().manual_seed(0))
    return {"hooked": hooked, "bridge": bridge}, toks


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
@pytest.mark.parametrize("mode,params", COMMON, ids=[f"{m}-{next(iter(p), '')}" for m, p in COMMON])
def test_tiny_cache_consistent(tiny_pair, kind, mode, params):
    models, toks = tiny_pair
    _check(models[kind], toks, mode, params)


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
@pytest.mark.parametrize("mode,params", POSITIONAL, ids=[m for m, _ in POSITIONAL])
def test_tiny_positional_modes_cache_consistent(tiny_pair, kind, mode, params):
    models, toks = tiny_pair
    cached = _check(models[kind], toks, mode, params)
    assert not torch.equal(_generate(models[kind], toks, True), cached)  # it changes the continuation


@pytest.mark.parametrize("seed", range(4))
def test_positions_from_angles_exact_on_rounded_tables(seed):
    """Integer positions come back exactly from bf16-rounded (cos, sin) tables, up to the longest wavelength."""
    g = torch.Generator().manual_seed(seed)
    n_bands = int(torch.randint(4, 65, (), generator=g))
    base = float(10 ** (3 + 4 * torch.rand((), generator=g)))
    scale = float(torch.randint(1, 9, (), generator=g))  # linear position scaling
    freqs = base ** -(torch.arange(n_bands, dtype=torch.float64) / n_bands) / scale
    pos = torch.randint(0, int(min(2 * torch.pi / freqs[-1], 2**20)), (3, 50), generator=g).double()
    angle = (pos[..., None] * freqs.float()).float()  # as HF computes it: float32
    cos, sin = angle.cos().bfloat16().double(), angle.sin().bfloat16().double()
    assert torch.equal(positions_from_angles(torch.atan2(sin, cos), freqs), pos)


@pytest.mark.slow
@pytest.mark.parametrize("mode,params", [("no_rotation", {})])
def test_embedded_hooked_generation(smol, mode, params):
    toks = smol.to_tokens("The capital of France is Paris. The capital of Italy is")
    sel = dict(bands=[0, 1, 2, 20, 24], layers=[2, 3, 4])
    assert _changes_logits(smol, toks, mode, params, **sel)
    _check(smol, toks, mode, params, **sel)


@pytest.mark.slow
def test_embedded_bridge_generation():
    from rope_interp import load_model

    bridge = load_model("smollm2-135m", bridge=True)
    toks = bridge.to_tokens("The capital of France is Paris. The capital of Italy is")
    sel = dict(bands=[0, 1, 2, 20, 24], layers=[2, 3, 4])
    assert _changes_logits(bridge, toks, "zero", {}, **sel)
    _check(bridge, toks, "zero", {}, **sel)
