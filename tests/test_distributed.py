"""Data-parallel runs: 2 gloo processes over loopback (127.0.0.1) against one process.

Each test starts its ranks with RANK / WORLD_SIZE / MASTER_ADDR=127.0.0.1 set (what torchrun sets)
and one thread each; one test goes through torchrun itself. Every process is bounded in time.
Tolerance: float64 sums merged in rank order — 1e-6 relative (plus 1e-9 absolute for zeros).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
DRIVER = HERE / "dist_driver.py"
ROOT = HERE.parent
LIMIT_S = 240  # each launch, all ranks


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(rank: int | None, size: int, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ROPE_INTERP_DIST_TIMEOUT="60", **extra)
    if rank is not None:
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(size),
            LOCAL_WORLD_SIZE=str(size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    return env


def launch(args: list[str], n: int = 2, cwd: Path | None = None, limit: float = LIMIT_S):
    """Run ``python tests/dist_driver.py ARGS`` as ``n`` ranks (n=1: one plain process); returns
    ``[(returncode, stderr, seconds)]`` per rank. Kills everything past ``limit`` seconds."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), *args],
            env=env_for(None if n == 1 else r, n, port),
            cwd=cwd or ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]
    t0, out = time.monotonic(), []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, limit - (time.monotonic() - t0)))
            out.append((p.returncode, err, time.monotonic() - t0))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def two_vs_one(mode: str, tmp_path: Path) -> tuple[dict, dict]:
    """``dist_driver.py MODE`` on 2 ranks and in 1 process; both must succeed; returns (two, one)."""
    two = launch([mode, str(tmp_path / "two.pt")])
    assert [rc for rc, *_ in two] == [0, 0], [e[-2000:] for _, e, _ in two]
    one = launch([mode, str(tmp_path / "one.pt")], n=1)
    assert one[0][0] == 0, one[0][1][-2000:]
    return torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")


def cli_args(command: str, model: Path, text: Path, out: Path) -> list[str]:
    """Arguments of ``dist_driver.py cli``: one analysis command over ``text`` in windows of 16."""
    return ["cli", command, "--model", str(model), "--text", str(text), "--window", "16", "--out", str(out),
            "--no-progress"]  # fmt: skip


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    assert len(a) >= 25 and {k.split("/")[0] for k in a} == {
        "usage",
        "offsets",
        "massive",
        "heads",
        "sinks",
        "spectrum",
    }
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9, msg=k)


def test_report_statistics_two_ranks_equal_one(tmp_path):
    a, b = two_vs_one("stats", tmp_path)
    _close(a, b)
    # the merge really combined both shards: token counts are the whole input's (2 x 90 tokens)
    assert a["usage/n_tokens"].item() == b["usage/n_tokens"].item() == 180
    assert a["massive/values.n_tokens"].item() == 180
    assert a["massive/ablation.n_tokens"].item() == 174  # the ablation ran, split over the ranks too
    assert a["massive/ablation.control"].shape == (2,)


def test_bandstats_reduced_by_hand_equal_one_process(tmp_path):
    a, b = two_vs_one("bandstats", tmp_path)
    assert a["n"].item() == b["n"].item() == 180
    for k in ("q", "k"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9)


def test_sharded_sweeps_equal_one_process(tmp_path):
    a, b = two_vs_one("sweep", tmp_path)
    assert sorted(a) == ["exact", "naive", "refine"]
    for k in a:
        assert a[k].shape == (3, 8)
        assert a[k].abs().sum() > 0
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize(
    ("what", "differ"), [("sweep", "metric and tokens"), ("metric", "metric"), ("stats", "items")]
)
def test_ranks_given_different_inputs_fail_naming_both(what, differ):
    """The DDP idiom (each rank passes its own shard, or its own metric) is refused on every rank before the
    work: RankFailedError naming both ranks and what differs."""
    res = launch(["mismatch", what])
    assert [rc for rc, *_ in res] == [3, 3], [e[-2000:] for _, e, _ in res]
    for _, err, _ in res:
        assert f"the ranks were given different {differ}" in err and "(rank 0 vs rank 1;" in err, err[-2000:]
        assert "failed=[1]" in err and "every rank must pass the full data" in err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rope_interp.model.testing import tiny_hf_dir

    return tiny_hf_dir(tmp_path_factory.mktemp("dist") / "tiny", n_layers=2)


def _text(tmp_path: Path) -> Path:
    # 8 windows of 16 word tokens; "five" only in the last window: rank 1's shard
    words = ("the capital of france is paris and the old city " * 12).split()
    path = tmp_path / "text.txt"
    path.write_text(" ".join(words[:110] + ["five"] + words[:9]))
    return path


def _no_output(out: Path) -> None:
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    assert not out.exists() or not list(out.glob(".rope-interp-staging-*"))  # no staging folder left
    assert not any(p.name.startswith(f".{out.name}.partial-") for p in out.parent.iterdir())


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_stops_every_rank_with_a_clear_message(tmp_path, tiny_dir, how):
    text, out = _text(tmp_path), tmp_path / "out"
    args = cli_args(f"boom-{how}", tiny_dir, text, out)
    t0 = time.monotonic()
    res = launch(args)
    took = time.monotonic() - t0
    codes = [rc for rc, *_ in res]
    assert all(rc != 0 for rc in codes), codes
    err0, err1 = res[0][1], res[1][1]
    if how == "raise":
        assert "rank 1" in err0 and "ValueError: the word 'five' is not allowed on this shard" in err0, err0[
            -2000:
        ]
        assert "on rank 1 of 2" in err1 and "'five'" in err1, err1[-2000:]
    else:
        assert codes[1] == -9  # SIGKILL
        assert "rank 0 of 2 lost contact" in err0, err0[-2000:]
    assert took < 120  # bounded: the group timeout is 60 s and a dead peer is noticed sooner
    _no_output(out)


def test_command_on_two_ranks_counts_both_shards_and_writes_once(tmp_path, tiny_dir):
    """The test analysis without its bad word passes on 2 ranks; rank 0 writes the merged count once."""
    text = tmp_path / "t.txt"
    text.write_text("the capital of france is paris " * 30)
    out = tmp_path / "out"
    res = launch(cli_args("boom-raise", tiny_dir, text, out))
    assert [rc for rc, *_ in res] == [0, 0], [e[-2000:] for _, e, _ in res]
    import json

    assert json.loads((out / "boom-raise.json").read_text()) == {"n": 181}  # 180 words + BOS, both shards
    assert not list(out.glob(".rope-interp-staging-*")) and (out / ".rope-interp-complete").is_file()


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed next to this python",
)
def test_report_under_torchrun(tmp_path, tiny_dir):
    """The README's command shape: torchrun starts 2 ranks of `rope-interp report`; the report's
    statistics equal a single-process report's."""
    import json

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    text = tmp_path / "t.txt"
    text.write_text("the capital of france is paris and the old city of rome is on a river " * 12)
    common = [
        "report",
        "--model",
        str(tiny_dir),
        "--text",
        str(text),
        "--window",
        "32",
        "--no-progress",
        "--sections",
        "usage",
        "offsets",
        "massive",
        "heads",
    ]
    port = free_port()
    run = functools.partial(
        subprocess.run, env=env_for(None, 1, port), capture_output=True, text=True, timeout=LIMIT_S, cwd=ROOT
    )
    torchrun_2 = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    two = run([*torchrun_2, "-m", "rope_interp.cli", *common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone prints
    one = run([sys.executable, "-m", "rope_interp.cli", *common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "two" / "summary.json").read_text())
    b = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert (tmp_path / "two" / "report.html").is_file()
    assert (a["processes"], b["processes"]) == (2, 1)
    assert "with 2 processes (torchrun)" in (tmp_path / "two" / "report.html").read_text()
    for name in ("usage", "offsets", "massive", "heads"):
        assert _numbers(a["analyses"][name]) == pytest.approx(
            _numbers(b["analyses"][name]), rel=1e-6, abs=1e-9
        )
    assert a["analyses"]["usage"]["n_tokens"] == b["analyses"]["usage"]["n_tokens"] > 0


def _numbers(x):
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _numbers(x[k])]
    if isinstance(x, list):
        return [v for item in x for v in _numbers(item)]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    return [float(x)]


# ---- in-process checks (no process group) -----------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shards_partition_the_items_in_order(n, size):
    from rope_interp.distributed import shard_bounds

    bounds = [shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_single_process_is_untouched(monkeypatch):
    from rope_interp import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() is None and distributed.world() is None and distributed.is_root()
    assert distributed.shard([1, 2, 3]) == [1, 2, 3] and distributed.exchange("x") == ["x"]
    with pytest.raises(ValueError, match="mine"):
        distributed.agree(ValueError("mine"))  # a single process re-raises its own error


def test_launch_without_a_rendezvous_address_is_a_clear_error(monkeypatch):
    from rope_interp import distributed
    from rope_interp.errors import RopeInterpError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RopeInterpError, match="start the run with torchrun"):
        distributed.init()


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "nan"])
def test_bad_timeout_is_a_clear_error(monkeypatch, bad):
    from rope_interp import distributed
    from rope_interp.errors import RopeInterpError

    monkeypatch.setenv("ROPE_INTERP_DIST_TIMEOUT", bad)
    with pytest.raises(RopeInterpError, match="ROPE_INTERP_DIST_TIMEOUT"):
        distributed.timeout_s()


def test_packed_accumulator_round_trip_keeps_model_and_closures():
    """pack/unpack: the model becomes a placeholder (restored to the receiver's), tensors travel on the CPU."""
    from rope_interp.analyses.sinks import SinkAccumulator
    from rope_interp.analyses.stream import forward_window
    from rope_interp.distributed import _restore, pack, unpack
    from rope_interp.model.testing import tiny_model

    model = tiny_model()
    acc = SinkAccumulator(model, [0, 1])
    forward_window(model, torch.randint(0, 50, (1, 12)), [acc])
    data, tensors, devices = packed = pack(acc)
    assert devices == ["cpu"] and tensors and b"SinkAccumulator" in data
    back = _restore(unpack(packed, model, devices), acc)
    assert back.spec.n_bands == acc.spec.n_bands and back._kv_on is acc._kv_on  # the closure kept locally
    for k in acc.sums:
        assert torch.equal(back.sums[k], acc.sums[k])
    assert back.merge(acc).n_q == 2 * acc.n_q
