"""Models split over several GPUs, and data-parallel ranks on GPUs (NCCL). Needs >= 2 CUDA devices.

Marked ``gpu`` (skipped without CUDA by ``conftest.py``) and skipped here with fewer than two
devices. A TransformerLens ``HookedTransformer`` with ``n_devices=2`` puts half of its blocks on
``cuda:1``: every hook and accumulator must work on its activation's device and every result that
spans layers must be gathered explicitly. Compared with the same model on the CPU; tolerances as
in ``tests/test_gpu.py`` (float32 activations ``1e-4``; float64 sums ``1e-5`` relative).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs at least 2 CUDA devices"
    ),
]

STATS = {
    "usage": {},
    "offsets": {"context_length": 64},
    "massive": {},
    "heads": {},
    "sinks": {},
    "spectrum": {},
}


def _split_model():
    """The tiny test model, once on the CPU and once with its blocks over cuda:0 and cuda:1."""
    from transformer_lens import HookedTransformer

    from rope_interp.model.testing import tiny_model

    cpu = tiny_model(n_layers=4)
    cfg = cpu.cfg.to_dict()
    cfg.update(device="cuda", n_devices=2)
    from transformer_lens import HookedTransformerConfig

    split = HookedTransformer(HookedTransformerConfig(**cfg), move_to_device=True)
    split.load_state_dict(cpu.state_dict(), strict=True)
    split.move_model_modules_to_device()
    split.eval()
    assert {p.device.index for p in split.blocks[-1].parameters()} == {1}
    return cpu, split


def test_split_model_statistics_equal_cpu():
    sys.path.insert(0, str(Path(__file__).parent))
    from dist_driver import data

    from rope_interp.analyses import registry
    from rope_interp.model.testing import result_tensors as tensors

    cpu, split = _split_model()
    a = registry.run(cpu, data(), STATS, window=40, progress=False)
    b = registry.run(split, data().to("cuda:0"), STATS, window=40, progress=False)
    for name in STATS:
        ta, tb = tensors(a[name]), tensors(b[name])
        assert sorted(ta) == sorted(tb)
        for k in ta:
            torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-4, msg=f"{name}/{k}")


def test_split_model_band_capture_and_exact_sweep_equal_cpu():
    from rope_interp.read.capture import BandStats
    from rope_interp.sweep.metrics import loss_metric
    from rope_interp.sweep.tiers import exact_sweep

    cpu, split = _split_model()
    t = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(0))
    sa, sb = BandStats(cpu), BandStats(split)
    sa.update(t)
    sb.update(t.to("cuda:0"))
    torch.testing.assert_close(sb.mean_norm("rot_q").cpu(), sa.mean_norm("rot_q"), rtol=1e-5, atol=1e-6)
    ea = exact_sweep(cpu, t[:1], loss_metric(t[:1]), progress=False)
    eb = exact_sweep(split, t[:1].to("cuda:0"), loss_metric(t[:1].to("cuda:0")), progress=False)
    torch.testing.assert_close(eb.values, ea.values, rtol=1e-4, atol=1e-4)


def test_two_ranks_on_two_gpus_nccl(tmp_path):
    """Data-parallel over 2 GPUs (one rank each, NCCL + a gloo group for objects) equals one process."""
    sys.path.insert(0, str(Path(__file__).parent))
    import test_distributed as T

    two = T.launch(["stats", str(tmp_path / "two.pt"), "cuda"])
    assert [rc for rc, *_ in two] == [0, 0], [e[-2000:] for _, e, _ in two]
    one = T.launch(["stats", str(tmp_path / "one.pt")], n=1)
    assert one[0][0] == 0
    a, b = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)
