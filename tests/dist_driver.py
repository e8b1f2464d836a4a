"""One rank of the distributed tests (tests/test_distributed.py starts several with RANK/WORLD_SIZE set).

    python tests/dist_driver.py stats OUT      # registry.run over the report's statistics; rank 0 saves them
    python tests/dist_driver.py sweep OUT      # naive + exact layer x band sweeps; rank 0 saves them
    python tests/dist_driver.py bandstats OUT  # BandStats on each rank's share, reduce_accumulators
    python tests/dist_driver.py mismatch WHAT  # each rank given its own tokens (WHAT: sweep, stats or metric)
    python tests/dist_driver.py cli ARGS...    # rope_interp.cli.main(ARGS) with the test analyses registered

Without WORLD_SIZE it runs as a single process (the reference).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

torch.set_num_threads(1)

from rope_interp import distributed  # noqa: E402
from rope_interp.analyses import registry  # noqa: E402
from rope_interp.analyses.registry import Analysis, Option  # noqa: E402
from rope_interp.analyses.stream import Accumulator  # noqa: E402
from rope_interp.model.testing import result_tensors as tensors  # noqa: E402
from rope_interp.model.testing import tiny_model  # noqa: E402

STATS = {
    "usage": {},
    "offsets": {"context_length": 64},
    "massive": {"lam": 1.5},  # low enough that the tiny model has massive dims: the ablation runs too
    "heads": {},
    "sinks": {},
    "spectrum": {},
}


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (2, 90), generator=g)  # windows of 40: 3 per row (40, 40, 10), 6 windows


def stats(out: str, device: str = "cpu") -> None:
    model = tiny_model(n_layers=3).to(distributed.local_device(device))
    res = registry.run(model, data().to(model.cfg.device), STATS, window=40, progress=False)
    flat = {f"{n}/{k}": v for n, r in res.items() for k, v in tensors(r).items()}
    if distributed.is_root():
        torch.save(flat, out)


def sweep(out: str) -> None:
    from rope_interp.sweep.metrics import loss_metric
    from rope_interp.sweep.tiers import run_sweep

    model = tiny_model(n_layers=3)
    t = data()[:1, :24]
    extra = {"naive": {}, "exact": {"batch_size": 3}, "refine": {"batch_size": 3, "top": 4}}
    res = {
        m: run_sweep(model, t, loss_metric(t), method=m, mode="zero", progress=False, **kw).values
        for m, kw in extra.items()
    }
    if distributed.is_root():
        torch.save(res, out)


def bandstats(out: str) -> None:
    """BandStats updated by hand on this rank's share of the batches, then reduced (the README's recipe)."""
    from rope_interp.read.capture import BandStats

    model = tiny_model(n_layers=3)
    batches = list(data().split(15, dim=1))  # 6 batches of [2, 15]
    stats = BandStats(model, sites=("rot_q", "rot_k"))
    for b in distributed.shard(batches):
        stats.update(b)
    distributed.reduce_accumulators([stats])
    if distributed.is_root():
        torch.save(
            {
                "n": torch.tensor(float(stats.n_tokens)),
                "q": stats.mean_norm("rot_q"),
                "k": stats.mean_norm("rot_k"),
            },
            out,
        )


def mismatch(what: str) -> None:
    """The DDP idiom rope_interp must refuse: every rank passes different data (or another metric)."""
    from rope_interp.sweep.metrics import logit_diff, loss_metric
    from rope_interp.sweep.tiers import run_sweep

    rank = distributed.world().rank  # type: ignore[union-attr]
    model = tiny_model(n_layers=3)
    t = data()[rank : rank + 1, :24]  # each rank its own row
    if what == "sweep":
        run_sweep(model, t, loss_metric(t), method="exact", mode="zero", progress=False)
    elif what == "metric":  # same tokens, logit_diff with another answer on each rank
        t = data()[:1, :24]
        run_sweep(model, t, logit_diff(1 + rank, 7), method="naive", progress=False)
    else:
        registry.run(model, data()[rank : rank + 1], {"usage": {}}, window=40, progress=False)


# ---- analyses that fail on one rank's shard (registered for the cli mode) ----------------------------
class Boom(Accumulator):
    """Fails (or kills its process) on a window holding the word "five" (the test puts it in the last window)."""

    def __init__(self, model, how: str):
        self.layers, self.how, self.n = [0], how, 0
        self.bad = int(model.to_tokens("five", prepend_bos=False)[0, -1])

    def observe(self, tokens):
        self.n += tokens.numel()
        if (tokens == self.bad).any():
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("the word 'five' is not allowed on this shard")

    def merge(self, other):
        self.n += other.n
        return self

    def finalize(self):
        return self.n


def _boom(name: str) -> Analysis:
    return Analysis(
        name=name,
        title=name,
        help="test analysis that fails on the word five",
        description="test analysis that fails on the word five",
        start=lambda ctx, opts: [Boom(ctx.model, name.split("-")[1])],
        finish=lambda ctx, opts, accs: accs[0].finalize(),
        options=(Option("unused", int, 0, "nothing"),),
        summary=lambda r: {"n": r},
        tables=lambda r: {},
    )


def cli(argv: list[str]) -> int:
    from rope_interp.cli import main

    registry.register(_boom("boom-raise"))
    registry.register(_boom("boom-kill"))
    return main(argv)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "stats":
        device = rest[1] if len(rest) > 1 else "cpu"
        distributed.init(device=device)
        stats(rest[0], device)
    elif mode == "bandstats":
        distributed.init()
        bandstats(rest[0])
    elif mode == "sweep":
        distributed.init()
        sweep(rest[0])
    elif mode == "mismatch":
        distributed.init()
        try:
            mismatch(rest[0])
        except distributed.RankFailedError as err:
            print(f"RankFailedError: {err} failed={sorted(err.failed)}", file=sys.stderr)
            sys.exit(3)
    elif mode == "cli":
        sys.exit(cli(rest))
    else:
        sys.exit(f"unknown mode {mode!r}")
    distributed.leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as the CLI does: no interpreter teardown racing gloo's threads
