"""CPU vs CUDA: the same model gives the same band tables, decomposition, interventions and statistics.

Marked ``gpu``: ``conftest.py`` skips them where ``torch.cuda.is_available()`` is false. Run them
all, with the sweep benchmark and a report, by ``bash scripts/gpu_check.sh``.

Tolerances (stated once, here):

* float64 host-side tables (frequencies, amplitudes, scales): equal to ``1e-12`` relative;
* float32 activations and logits: CUDA matmuls may use other kernels and reduction orders than
  the CPU's (TF32 is off in PyTorch by default for matmuls), so ``atol = rtol = 1e-4`` on
  values of order 1; integer outputs (positions read from the rotary tables, greedy tokens) equal;
* float64 sums of float32 activations (``BandStats``): ``rtol = 1e-5``;
* bf16 on CUDA against float32 on the CPU: bf16 keeps 8 significant bits (relative step
  ``2**-8 ≈ 0.004``) and the error grows through 2 layers, so ``atol = rtol = 5e-2`` on activations
  and score terms, ``atol = 0.15`` on logits (after the unembedding, seen up to 0.065); within one
  bf16 run the exact decomposition equals ``hook_attn_scores`` to bf16 rounding of the scores,
  ``atol = 2e-2 * max |score|``.
"""

from __future__ import annotations

import pytest
import torch

from rope_interp.intervene.ablate import ablate_bands, prope
from rope_interp.model import adapter
from rope_interp.model.hooks import attn_hook
from rope_interp.model.layout import RotaryBands
from rope_interp.model.testing import LAYOUTS, tiny_bridge, tiny_layout_model
from rope_interp.read.capture import BandCapture, BandStats
from rope_interp.read.decompose import band_scores, iter_band_scores
from rope_interp.sweep.patching import logit_diff
from rope_interp.sweep.tiers import direct_effect_sweep, exact_sweep, naive_sweep

pytestmark = pytest.mark.gpu

F32 = dict(atol=1e-4, rtol=1e-4)
BF16 = dict(atol=5e-2, rtol=5e-2)
BF16_LOGITS = dict(atol=0.15, rtol=5e-2)
TOKENS = torch.tensor(
    [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5]]
)
MODES = [
    ("zero", {}),
    ("mean", {}),
    ("no_rotation", {}),
    ("shift", {"delta": 3}),
    ("shift", {"phase": 0.7}),
    ("scale_freq", {"factor": 0.5}),
]


@pytest.fixture
def dev() -> torch.device:
    return torch.device("cuda")


def pair(name: str, dev: torch.device, dtype: torch.dtype = torch.float32):
    """The same tiny model twice: float32 on the CPU, and on ``dev`` in ``dtype``."""
    cpu = tiny_layout_model(name)
    other = tiny_layout_model(name).to(dev)
    if dtype != torch.float32:
        other = other.to(dtype)
    return cpu, other


def _close(a: torch.Tensor, b: torch.Tensor, **tol) -> None:
    torch.testing.assert_close(a.detach().float().cpu(), b.detach().float().cpu(), **tol)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_band_tables_and_capture_match(name, dev):
    cpu, gpu = pair(name, dev)
    a, b = RotaryBands.from_model(cpu), RotaryBands.from_model(gpu)
    for field in ("freqs", "amplitude", "attn_scale"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-12, atol=1e-12)
    assert torch.equal(a.kv_map, b.kv_map)
    for L in range(adapter.n_layers(cpu)):
        for x, y in zip(adapter.rotary_tables(cpu, L, 16), adapter.rotary_tables(gpu, L, 16), strict=True):
            torch.testing.assert_close(y.cpu(), x, rtol=1e-12, atol=1e-12)
    caps = []
    for model in (cpu, gpu):
        with torch.no_grad(), BandCapture(model, sites=("k", "rot_q", "rot_k", "v")) as cap:
            model(TOKENS.to(adapter.device(model)))
        caps.append(cap)
    for key in caps[0]._bands:
        assert caps[1][key].device.type == dev.type
        _close(caps[1][key], caps[0][key], **F32)


@pytest.mark.parametrize("name", ["neox", "gptj", "partial", "gqa", "local_global"])
def test_decomposition_matches(name, dev):
    cpu, gpu = pair(name, dev)
    for L in range(adapter.n_layers(cpu)):
        a, b = band_scores(cpu, TOKENS, L), band_scores(gpu, TOKENS, L)
        assert b.per_band.device.type == dev.type
        _close(b.per_band, a.per_band, **F32)
        _close(b.remainder, a.remainder, **F32)
        _close(b.pattern(drop=[0]), a.pattern(drop=[0]), **F32)
        for c in iter_band_scores(gpu, TOKENS, L, chunk_size=5):
            m, n = c.per_band.shape[-2:]
            _close(c.per_band, a.per_band[..., c.q_start : c.q_start + m, :n], **F32)


@pytest.mark.parametrize("mode,params", MODES, ids=[f"{m}-{'-'.join(p)}" for m, p in MODES])
@pytest.mark.parametrize("name", ["neox", "gptj", "partial", "gqa"])
def test_every_intervention_mode_matches(name, mode, params, dev):
    cpu, gpu = pair(name, dev)
    heads = list(range(adapter.n_heads(cpu) // adapter.n_kv_heads(cpu)))  # one whole kv group
    outs = []
    for model in (cpu, gpu):
        with torch.no_grad():
            full = ablate_bands(model, [0, 2, 3], mode=mode, **params).run(TOKENS.to(adapter.device(model)))
            part = ablate_bands(model, [1], layers=[1], heads=heads, target="q", mode=mode, **params).run(
                TOKENS.to(adapter.device(model))
            )
        outs.append((full, part))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert b.device.type == dev.type
        _close(b, a, **F32)


def test_prope_and_cached_generation_match(dev):
    cpu, gpu = pair("neox", dev)
    prompt, n_new = TOKENS[:1, :6], 6
    with torch.no_grad():
        _close(prope(gpu, 0.5).run(TOKENS.to(dev)), prope(cpu, 0.5).run(TOKENS), **F32)
        gen = []
        for model in (cpu, gpu):
            with ablate_bands(model, [3, 4], mode="no_rotation"):  # the KV-cache path (deferred q)
                out = model.generate(
                    prompt.to(adapter.device(model)),
                    max_new_tokens=n_new,
                    do_sample=False,
                    stop_at_eos=False,
                    verbose=False,
                )
            gen.append(out.cpu())
        # greedy tokens are only comparable across devices while the top two logits are not tied to rounding
        logits = ablate_bands(cpu, [3, 4], mode="no_rotation").run(gen[0])[0, prompt.shape[1] - 1 : -1]
        top2 = logits.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        n_sure = int((margin > 1e-3).long().cumprod(0).sum())
    assert n_sure >= 1, f"CPU greedy margins {margin.tolist()} too small to compare"
    assert torch.equal(gen[1][:, : prompt.shape[1] + n_sure], gen[0][:, : prompt.shape[1] + n_sure])


@pytest.mark.parametrize("mode,params", [("no_rotation", {}), ("scale_freq", {"factor": 2.0}), ("zero", {})])
def test_bridge_modes_match(mode, params, dev):
    """Bridges read positions from hook_cos/hook_sin (on the activation's device) for the first two."""
    cpu = tiny_bridge("llama")
    gpu = tiny_bridge("llama").to(dev)
    t = TOKENS % 60 + 3
    with torch.no_grad():
        a = ablate_bands(cpu, [0, 3], mode=mode, **params).run(t)
        b = ablate_bands(gpu, [0, 3], mode=mode, **params).run(t.to(dev))
        base = cpu(t)
    assert (a - base).abs().max() > 0  # the intervention did something
    _close(b, a, **F32)


@pytest.mark.parametrize("name", ["neox", "gqa", "partial_gptj"])
def test_band_stats_match(name, dev):
    cpu, gpu = pair(name, dev)
    stats = []
    for model in (cpu, gpu):
        mask = torch.ones(TOKENS.shape, dtype=torch.bool)
        mask[1, 10:] = False  # a CPU mask is fine: update() moves it once
        s = BandStats(model, sites=("rot_q", "k", "v"), start_pos=1).update(TOKENS, mask=mask).update(TOKENS)
        stats.append(s)
    a, b = stats
    assert a.n_tokens == b.n_tokens == 15 + 9 + 2 * 15  # start_pos=1; row 1 masked from 10 on
    for site in ("rot_q", "k", "v"):
        assert b.mean_norm(site).device.type == dev.type
        for fn in ("mean_norm", "rms_norm", "mean_vector", "second_moment", "consistency"):
            torch.testing.assert_close(getattr(b, fn)(site).cpu(), getattr(a, fn)(site), rtol=1e-5, atol=1e-8)


def test_sweeps_match(dev):
    cpu, gpu = pair("gqa", dev)
    ld = logit_diff(3, 4)
    a = exact_sweep(cpu, TOKENS, ld, ("layer", "head", "band"), progress=False)
    b = exact_sweep(gpu, TOKENS, ld, ("layer", "head", "band"), progress=False)
    c = naive_sweep(gpu, TOKENS, ld, ("layer", "head", "band"), progress=False)
    _close(b.values, a.values, **F32)
    _close(c.values, b.values, **F32)
    _close(
        direct_effect_sweep(gpu, TOKENS, progress=False).values,
        direct_effect_sweep(cpu, TOKENS, progress=False).values,
        **F32,
    )


def test_bf16_on_cuda(dev):
    """bf16 activations: the decomposition stays exact within the bf16 run, and close to float32."""
    cpu, gpu = pair("gqa", dev, torch.bfloat16)
    assert next(gpu.parameters()).dtype == torch.bfloat16
    t = TOKENS.to(dev)
    for L in range(adapter.n_layers(gpu)):
        bs = band_scores(gpu, t, L)
        assert bs.per_band.dtype == torch.float32  # terms accumulate in float32 whatever the model dtype
        store: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            gpu.run_with_hooks(
                t,
                fwd_hooks=[
                    (attn_hook(L, "attn_scores"), lambda x, hook, store=store: store.setdefault("s", x))
                ],
            )
        ref = store["s"].float()
        mask = bs.causal_mask()
        err = (bs.total() - ref)[..., mask].abs().max()
        assert err <= 2e-2 * ref[..., mask].abs().max()
        _close(bs.per_band, band_scores(cpu, TOKENS, L).per_band, **BF16)
    with torch.no_grad():
        for mode, params in MODES:
            out = ablate_bands(gpu, [0, 2], mode=mode, **params).run(t)
            assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
            _close(out, ablate_bands(cpu, [0, 2], mode=mode, **params).run(TOKENS), **BF16_LOGITS)
    s = BandStats(gpu).update(t)
    torch.testing.assert_close(
        s.mean_norm("rot_q").cpu(), BandStats(cpu).update(TOKENS).mean_norm("rot_q"), **BF16
    )
