"""Device discipline: every hook-time code path runs on a model moved to ``torch.device("meta")``.

Why meta: a meta tensor has a shape, dtype and device but no data, so TransformerLens' own forward
runs on it (it is just shape propagation), any ``.item()`` / ``bool()`` on it raises, and a
non-scalar CPU tensor mixed into a meta op raises. PyTorch still lets a CPU *index* tensor, a
CPU-made tensor written into a meta tensor, or a 0-dim CPU tensor through, and meta raises only on
syncs of meta tensors, so :class:`DeviceGuard` (a ``TorchDispatchMode``) checks every op run *inside
a hook* (it wraps every hook added through ``HookPoint.add_hook``) and fails on:

* an operand on another device than the activations (CPU index tensors and CPU scalars included);
* a tensor made by a factory (``zeros``, ``arange``, ``tensor(...)``) on another device;
* a host sync (``.item()``, ``bool()``, ``.tolist()``, ``.nonzero()``, ``.cpu()``).

Outside hooks (setup, reading results) the guard does not judge, and only lets the entry point
finish on meta: a meta value read on the host reads as 1 and a meta tensor copied to the CPU
as ones (the numbers are meaningless; only the hooks are under test).

"Split" runs stand in for a model spread over several GPUs (TransformerLens ``n_devices``, a
bridge's ``device_map``), where block ``L``'s activations are not on the device of the first
weight: ``adapter.device`` is patched to answer ``cpu`` while the activations stay on meta, so
anything a hook builds on the "model device" instead of ``x.device`` is a CPU tensor and fails. A
copy between the two (a device-to-device copy there) is allowed in a hook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformer_lens.hook_points import HookPoint

from rope_interp.analyses import heads as heads_mod
from rope_interp.analyses.massive import massive_ablation, massive_values
from rope_interp.analyses.offsets import offset_features
from rope_interp.analyses.sinks import sink_channels
from rope_interp.analyses.spectral import attention_spectra, band_spectra, mlp_spectra, phase_alignment
from rope_interp.analyses.usage import frequency_usage
from rope_interp.intervene.ablate import MODES, ablate_bands, prope
from rope_interp.model import adapter
from rope_interp.model.testing import tiny_bridge, tiny_layout_model
from rope_interp.read.capture import BandCapture, BandStats, band_hooks
from rope_interp.read.decompose import band_scores, iter_band_scores
from rope_interp.sweep.patching import MaskedBands, PatternDistance, kl_metric, logit_diff, loss_metric
from rope_interp.sweep.tiers import (
    ablated_patterns,
    attribution_sweep,
    direct_effect_sweep,
    exact_sweep,
    naive_sweep,
)

META = torch.device("meta")
aten = torch.ops.aten

SYNCS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
FACTORIES = {
    aten.arange.default,
    aten.arange.start,
    aten.arange.start_step,
    aten.zeros.default,
    aten.ones.default,
    aten.empty.memory_format,
    aten.full.default,
    aten.scalar_tensor.default,
    aten.lift_fresh.default,
    aten.eye.default,
    aten.randn.default,
    aten.rand.default,
    aten.randint.low,
}
COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default}


class DeviceViolation(AssertionError):
    """A hook made a tensor off the activations' device, mixed one in, or synchronised with the host."""


class DeviceGuard(TorchDispatchMode):
    """Checks ops run inside hooks (see the module docstring); stubs host reads of meta tensors outside."""

    def __init__(self, allow_copies: bool = False):
        super().__init__()
        self.allow_copies = allow_copies
        self.depth = 0  # > 0 while a hook runs
        self.hook_calls = 0

    @contextlib.contextmanager
    def in_hook(self):
        self.depth += 1
        self.hook_calls += 1
        try:
            yield
        finally:
            self.depth -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_meta = any(t.device == META for t in tensors)
        if self.depth:
            self._check(func, tensors, on_meta, kwargs)
        elif on_meta and func is aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 1
        if on_meta and func is aten._to_copy.default and kwargs.get("device") not in (None, META):
            t = args[0]  # outside a hook, or a device-to-device copy of a split model: data cannot leave meta
            return torch.ones(t.shape, dtype=kwargs.get("dtype") or t.dtype, device=kwargs["device"])
        if func is aten.copy_.default and args[0].device != META and args[1].device == META:
            return args[0]
        out = func(*args, **kwargs)
        if self.depth and func in FACTORIES:
            made = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            bad = [t for t in made if t.device != META]
            if bad:
                raise DeviceViolation(
                    f"{func} made a tensor on {bad[0].device} inside a hook (make it on the activation's device)"
                )
        return out

    def _check(self, func, tensors, on_meta, kwargs) -> None:
        if (func in SYNCS or func is aten.nonzero.default) and on_meta:
            raise DeviceViolation(f"host sync {func} inside a hook")
        if func in COPIES:
            dst = kwargs.get("device")
            devices = {t.device for t in tensors} | ({dst} if dst is not None else set())
            if len(devices) > 1 and not self.allow_copies:
                raise DeviceViolation(f"{func} copies between {sorted(map(str, devices))} inside a hook")
            return
        others = [t for t in tensors if t.device != META]
        if on_meta and others:
            t = others[0]
            raise DeviceViolation(
                f"{func} mixes a {t.device} tensor of shape {tuple(t.shape)} with meta activations inside a hook"
            )


@pytest.fixture
def guard(monkeypatch):
    """A :class:`DeviceGuard` that every hook added to any HookPoint reports to."""
    g = DeviceGuard()
    original = HookPoint.add_hook

    def add_hook(self, hook, *args, **kwargs):
        @functools.wraps(hook)
        def guarded(*a, **kw):
            with g.in_hook():
                return hook(*a, **kw)

        return original(self, guarded, *args, **kwargs)

    monkeypatch.setattr(HookPoint, "add_hook", add_hook)
    return g


def meta_model(name: str = "gqa", split: bool = False, monkeypatch=None):
    model = tiny_layout_model(name).to(META)
    if split:
        monkeypatch.setattr(adapter, "device", lambda model: torch.device("cpu"))
    return model


def toks(batch: int = 2, n: int = 8, device: torch.device = META) -> torch.Tensor:
    return torch.randint(3, 40, (batch, n), generator=torch.Generator().manual_seed(0)).to(device)


def run(guard: DeviceGuard, fn, *args, **kwargs):
    with guard:
        out = fn(*args, **kwargs)
    assert guard.hook_calls > 0, "no hook ran: the entry point was not exercised"
    return out


# ---- the hook-time entry points -------------------------------------------------------------------------
def _capture(model, t):
    seen = []
    model.run_with_hooks(
        t, fwd_hooks=band_hooks(model, lambda a: seen.append(a.bands * 2), sites=("q", "rot_k", "v"))
    )
    with BandCapture(model, heads=[0, 3], bands=[1, 2], keep_passthrough=True) as cap:
        model(t)
    assert cap[1, "rot_q"].device == META and len(seen) == 6


def _stats(model, t):
    s = BandStats(model, sites=("rot_q", "k", "v"), start_pos=1)
    mask = torch.ones(t.shape, dtype=torch.bool)  # a CPU mask: moved once by update(), not in the hooks
    s.update(t, mask=mask).update(t)
    s.merge(BandStats(model, sites=("rot_q", "k", "v"), start_pos=1).update(t))
    s.covariance("k")


def _decompose(model, t):
    band_scores(model, t, 1, heads=[1, 2], bands=[0, 3]).pattern(drop=[0])
    for chunk in iter_band_scores(model, t, 0, chunk_size=3):
        chunk.scores()


def _mode(mode, **params):
    def case(model, t):
        group = list(range(adapter.n_heads(model) // adapter.n_kv_heads(model)))  # the heads of kv head 0
        with ablate_bands(model, [1, 3], layers=[0, 1], heads=group, mode=mode, **params):
            model(t)
        ablate_bands(model, None, target="k", mode=mode, **params).run(t)

    return case


def _mean_reference(model, t):
    stats = BandStats(model).update(t)
    with ablate_bands(model, [0, 2], mode="mean", reference=stats):
        model(t)


def _prope(model, t):
    prope(model, 0.5).run(t)


def _masked(model, t):
    q = torch.zeros(2, 1, 6, 8, dtype=torch.bool, device=t.device)
    q[0, ..., 1] = True
    k = torch.zeros(2, 8, 2, 8, dtype=torch.bool, device=t.device)
    k[1, 3] = True
    MaskedBands(model, 1, q, k).run(t.repeat(2, 1))
    src = {}
    model.run_with_hooks(
        t,
        fwd_hooks=[
            (f"blocks.1.attn.hook_rot_{s}", lambda a, hook, s=s: src.__setitem__(s, a.clone())) for s in "qk"
        ],
    )
    MaskedBands(model, 1, q, k, source=src, passthrough=True).run(t.repeat(2, 1))


def _sweeps(model, t):
    ld = logit_diff(3, 4)
    naive_sweep(model, t, ld, ("layer", "head", "band"), bands=[0, 5], progress=False)
    exact_sweep(
        model,
        t,
        loss_metric(t),
        ("layer", "band", "pos"),
        source=t,
        bands=[2],
        positions=[0, 5],
        progress=False,
    )
    exact_sweep(model, t, PatternDistance(model, 1, torch.zeros(2, 6, 8, 8, device=t.device)), progress=False)
    exact_sweep(
        model, t, kl_metric(torch.zeros(2, 8, 50, device=t.device)), target="k", batch_size=3, progress=False
    )
    attribution_sweep(model, t, ld, ("layer", "head", "band", "pos"), source=t, progress=False)
    ablated_patterns(model, t, 1, heads=[0, 5])
    direct_effect_sweep(model, t, distance="kl", progress=False)


def _found(model, t):
    """Massive values of a meta run (its sums read as ones on the host), with dim 0 made massive."""
    found = massive_values(model, t, progress=False)
    found.q_sq[..., 0] = found.k_sq[..., 0] = 1e4
    return found


ANALYSES = {
    "frequency_usage": lambda m, t: frequency_usage(m, t, start_pos=1, progress=False),
    "positional_heads": lambda m, t: heads_mod.positional_heads(m, t, progress=False),
    "causal_check": lambda m, t: heads_mod.causal_check(
        m, [t], layer=1, head=2, offset=1, k=2, method="hooks"
    ),
    "sink_channels": lambda m, t: sink_channels(m, t, progress=False),
    "offset_features": lambda m, t: offset_features(m, t, progress=False),
    "massive_values": lambda m, t: massive_values(m, t, progress=False),
    "massive_ablation": lambda m, t: massive_ablation(m, t, _found(m, t), progress=False),
    "band_spectra": lambda m, t: band_spectra(m, t, nfft=16, progress=False),
    "attention_spectra": lambda m, t: attention_spectra(m, t, min_row=2, progress=False),
    "mlp_spectra": lambda m, t: mlp_spectra(m, t, nfft=16, progress=False),
    "phase_alignment": lambda m, t: phase_alignment(m, t, progress=False),
}


CASES = {
    "capture": _capture,
    "band_stats": _stats,
    "decompose": _decompose,
    **{f"ablate_{m}": _mode(m) for m in MODES if m not in ("shift", "scale_freq", "mean")},
    "ablate_mean": _mode("mean"),
    "ablate_mean_reference": _mean_reference,
    "ablate_shift_phase": _mode("shift", phase=0.3),
    "ablate_shift_delta": _mode("shift", delta=2),
    "ablate_scale_freq": _mode("scale_freq", factor=0.5),
    "prope": _prope,
    "masked_bands": _masked,
    "sweeps": _sweeps,
    **{f"analysis_{k}": v for k, v in ANALYSES.items()},
}


@pytest.mark.parametrize("split", [False, True], ids=["meta", "split"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hooks_stay_on_the_activation_device(case, split, guard, monkeypatch):
    guard.allow_copies = split
    model = meta_model("gqa", split=split, monkeypatch=monkeypatch)
    run(guard, CASES[case], model, toks())


SPECTRAL = ("band_spectra", "attention_spectra", "mlp_spectra", "phase_alignment")


def two_device_model(monkeypatch):
    """A tiny model split over two devices: block 0 on the CPU, block 1 on meta; TransformerLens moves the
    residual to each block's device (as with ``n_devices=2``). Patched for every model until the test ends."""
    split = tiny_layout_model("gqa")
    split.blocks[1].to(META)
    tl = importlib.import_module(
        "transformer_lens.HookedTransformer"
    )  # the module (the package exports the class)
    on = lambda i, cfg, device=None: torch.device("cpu") if i == 0 else META  # noqa: E731
    monkeypatch.setattr(tl, "get_device_for_block_index", on)
    return split


@pytest.mark.parametrize("name", SPECTRAL)
def test_spectral_functions_on_layers_on_two_devices(name, monkeypatch):
    """Each layer's sums stay on its layer's device and are gathered on the CPU at the end (the public
    ``band_spectra`` / ``mlp_spectra`` once stacked them first, which fails on a split model).

    Layer 0 ran on the CPU, so its numbers equal the one-device run's; layer 1's meta sums read as
    ones on the CPU (:class:`DeviceGuard` outside hooks; the hooks themselves are checked above)."""
    t = toks(device=torch.device("cpu"))
    want = ANALYSES[name](tiny_layout_model("gqa"), t)
    split = two_device_model(monkeypatch)
    with DeviceGuard():
        got = ANALYSES[name](split, t)
    assert got.layers == want.layers == [0, 1]
    for f in dataclasses.fields(got):
        x, y = getattr(got, f.name), getattr(want, f.name)
        if isinstance(x, torch.Tensor):
            assert x.device.type == "cpu", f.name
            torch.testing.assert_close(x[0], y[0], msg=lambda m, f=f: f"{name}.{f.name}: {m}")


BRIDGE_CASES = ["capture", "band_stats", "decompose", "prope", *[c for c in CASES if c.startswith("ablate_")]]


@pytest.fixture(scope="module")
def meta_bridge():
    """A tiny llama bridge moved to meta, and its band layout read on the CPU before the move."""
    from rope_interp.model.layout import RotaryBands

    model = tiny_bridge("llama")
    spec = RotaryBands.from_model(model)
    return model.to(META), spec


@pytest.mark.parametrize("split", [False, True], ids=["meta", "split"])
@pytest.mark.parametrize("case", BRIDGE_CASES)
def test_bridge_hooks_stay_on_the_activation_device(case, split, meta_bridge, guard, monkeypatch):
    """The bridge paths, incl. the positions no_rotation/scale_freq/prope read from hook_cos/hook_sin.

    The band layout (frequencies) is host-side metadata computed from the rotary tables; on meta there
    are no table values to read it from, so it is computed on the CPU first and handed over.
    """
    from rope_interp.model.layout import RotaryBands

    model, spec = meta_bridge
    monkeypatch.setattr(RotaryBands, "from_model", classmethod(lambda cls, m: spec))
    if split:  # a bridge loaded with a device_map over several GPUs
        guard.allow_copies = True
        monkeypatch.setattr(adapter, "device", lambda model: torch.device("cpu"))
    run(guard, CASES[case], model, toks())


# ---- the guard itself fails on each kind of offence --------------------------------------------------------
OFFENCES = {
    "cpu factory": lambda x: x + torch.arange(x.shape[-1]).to(x.device),
    "cpu index": lambda x: x[..., torch.tensor([0, 1])],
    "cpu write": lambda x: x.__setitem__((..., 0), torch.ones(x.shape[:-1])),
    "cpu scalar tensor": lambda x: x * torch.tensor(2.0),
    "item": lambda x: x.sum().item(),
    "bool": lambda x: bool(x.abs().max() > 0),
    "tolist": lambda x: x[0, 0, 0].tolist(),
    "cpu copy": lambda x: x.cpu(),
}


@pytest.mark.parametrize("offence", sorted(OFFENCES))
def test_guard_catches(offence, guard):
    model, t = meta_model("neox"), toks()
    hook = ("blocks.0.attn.hook_rot_q", lambda x, hook: OFFENCES[offence](x))
    with guard, pytest.raises(DeviceViolation):
        model.run_with_hooks(t, fwd_hooks=[hook])
    assert guard.hook_calls == 1


def test_guard_passes_a_clean_hook_and_leaves_no_hooks(guard):
    model, t = meta_model("neox"), toks()

    def clean(x, hook):
        return x * torch.arange(x.shape[-1], device=x.device) + 2.0

    with guard:
        model.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_rot_q", clean)])
    assert guard.hook_calls == 1
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
