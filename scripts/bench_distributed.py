"""Benchmark data-parallel analyses: one analysis on the same corpus with 1 and 2 processes (torchrun, gloo).

Each process has one thread (``OMP_NUM_THREADS=1``), so on a 2-core machine 2 processes can at best
halve the time. Both runs go through ``torchrun --master_addr 127.0.0.1`` (loopback only); the
timed part is the analysis (``registry.run``), after the model is loaded and a barrier. It prints

* the time with 1 and 2 processes, the speed-up and the scaling efficiency (speed-up / 2; target >= 0.85);
* the largest absolute and relative difference between the two results (every tensor of the result);
* the communication cost of one all-reduce of the analysis' accumulators (the all-gather of their
  states + the merge, after a barrier, median of 5), and the bytes each rank sends.

    python scripts/bench_distributed.py                        # usage, 4,096 tokens of the bundled corpus
    python scripts/bench_distributed.py --analysis offsets --tokens 2048
    python scripts/bench_distributed.py --model tiny           # a random tiny model: seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from rope_interp import distributed
    from rope_interp.analyses import registry
    from rope_interp.model.testing import result_tensors

    w = distributed.init()
    if args.model == "tiny":
        from rope_interp.model.testing import tiny_model

        model = tiny_model(n_layers=4, n_ctx=args.window)
        tokens = torch.randint(0, 50, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    else:
        from rope_interp import load_model
        from rope_interp.data import load_text

        model = load_model(args.model)
        tokens = model.to_tokens(load_text(), truncate=False)[:, : args.tokens]
    opts = {args.analysis: {}}
    registry.run(model, tokens[:, : args.window], opts, window=args.window, progress=False)  # warm-up
    if w:
        dist.barrier()
    t0 = time.perf_counter()
    res = registry.run(model, tokens, opts, window=args.window, progress=False)[args.analysis]
    seconds = time.perf_counter() - t0
    comm, sent = [], 0
    if w:
        seconds = max(distributed.exchange(seconds))  # the job ends with its slowest rank
        analysis = registry.get(args.analysis)
        from rope_interp.analyses.registry import RunContext

        ctx = RunContext(model, tokens, None, args.window, False)
        for _ in range(5):
            accs = analysis.start(ctx, analysis.options_with({}))
            before = distributed.stats()["bytes"]
            dist.barrier()
            t1 = time.perf_counter()
            distributed.reduce_accumulators(accs)
            comm.append(time.perf_counter() - t1)
            sent = distributed.stats()["bytes"] - before
    if distributed.is_root():
        torch.save(
            dict(
                seconds=seconds,
                result=result_tensors(res),
                comm=comm,
                sent=sent,
                n_tokens=int(tokens.shape[1]),
            ),
            args.out,
        )
    distributed.leave()


def launch(n: int, args, out: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        sys.exit("torchrun not found (it comes with torch)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        torchrun, "--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(port),
        __file__, "--worker", "--out", str(out), "--analysis", args.analysis, "--tokens", str(args.tokens),
        "--window", str(args.window), "--model", args.model,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run(cmd, env=env, check=True, timeout=args.timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analysis", default="usage", help="a registered analysis (default: usage)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--model", default="smollm2-135m", help="a model name for load_model, or 'tiny'")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed for each torchrun")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        import torch

        runs = {}
        for n in (1, 2):
            launch(n, args, Path(tmp) / f"{n}.pt")
            runs[n] = torch.load(Path(tmp) / f"{n}.pt")
    one, two = runs[1], runs[2]
    speedup = one["seconds"] / two["seconds"]
    abs_d = max((one["result"][k] - two["result"][k]).abs().max().item() for k in one["result"])
    rel_d = max(
        ((one["result"][k] - two["result"][k]).abs() / one["result"][k].abs().clamp_min(1e-12)).max().item()
        for k in one["result"]
    )
    comm = statistics.median(two["comm"])
    print(
        f"{args.analysis} on {one['n_tokens']} tokens ({args.model}, windows of {args.window}), 1 thread/process"
    )
    print(f"  1 process   {one['seconds']:8.2f} s")
    print(
        f"  2 processes {two['seconds']:8.2f} s   speed-up {speedup:.2f}x, scaling efficiency {speedup / 2:.2f}"
    )
    print(f"  largest difference: {abs_d:.3g} absolute, {rel_d:.3g} relative ({len(one['result'])} tensors)")
    print(
        f"  one all-reduce of the accumulators: {comm * 1e3:.1f} ms, {two['sent'] / 1e6:.2f} MB sent per rank"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(analysis=args.analysis, tokens=one["n_tokens"], model=args.model, one=one["seconds"],
                     two=two["seconds"], speedup=speedup, efficiency=speedup / 2, max_abs_diff=abs_d,
                     max_rel_diff=rel_d, allreduce_s=comm, sent_bytes=two["sent"]),
                indent=1,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
