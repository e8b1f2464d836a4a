"""Data-parallel runs under ``torchrun``: windows and sweep cells split over ranks, results merged.

rope_interp runs on the engine this field already uses, :mod:`torch.distributed` launched by
``torchrun`` (gloo on CPUs, NCCL on GPUs). Nothing else is needed: ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the command line calls :func:`init` itself,
and the Python API uses the process group as soon as one is initialised (by :func:`init` or by
your own ``torch.distributed.init_process_group``). A single process behaves exactly as before.

What is split, and how results are combined:

* **Shared-pass analyses** (:func:`rope_interp.analyses.stream.run_pass`, hence every registered analysis,
  ``registry.run``, the report and the analysis commands): the windows are cut into contiguous
  blocks, one per rank (:func:`shard`); after the pass every rank sends its accumulators to every
  other (:func:`reduce_accumulators`: an all-gather of their states) and each rank merges them **in
  rank order** with the accumulator's own ``merge()`` — the result is the single-process result
  (sums in float64: equal within rounding, 1e-6 relative is tested; kept windows in the same order).
* **Sweeps** (:func:`rope_interp.sweep.tiers.run_sweep` and the ``sweep`` command): the grid's cells are
  split into contiguous blocks and the values gathered in order (:func:`map_shard`).
* **Extra runs** declared by an analysis run after the merge, on every rank, so every rank returns
  the same result: the massive-value ablation splits its windows too; the positional-head causal
  check and the experiments of ``carrier``/``harmonics``/``alignment``/``induction`` are repeated
  on each rank (not split).
* **Outputs**: only rank 0 writes files and prints (the report's figures and views are built on
  rank 0 alone, inside :func:`local`); files go to a temporary folder renamed at the end, and only
  when every rank agreed that it succeeded (:func:`agree`).

Faults: every collective exchanges a status with its payload (:func:`exchange`), so an exception on
one rank (bad input on its shard, a crash) stops *every* rank at the next exchange with
:class:`RankFailedError` naming the rank and the cause. A rank that dies (killed, out of memory)
breaks the connection: the others get :class:`RankFailedError` ("lost contact") at once, or when the
process group's timeout runs out (``ROPE_INTERP_DIST_TIMEOUT`` seconds, default 1800), and
``torchrun`` itself stops the remaining workers when one exits non-zero.

>>> world() is None  # no process group: a single process
True
>>> [shard_bounds(10, r, 3) for r in range(3)]
[(0, 4), (4, 7), (7, 10)]
"""

from __future__ import annotations

import contextvars
import io
import os
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .errors import RopeInterpError

TIMEOUT_ENV = "ROPE_INTERP_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0

_STATS: dict[str, float] = {"exchanges": 0, "seconds": 0.0, "bytes": 0}


class RankFailedError(RopeInterpError):
    """A rank of a distributed run failed (or could not be reached); every rank raises it.

    Attributes: ``failed`` — ``{rank: cause}`` for the ranks that reported a failure (empty when
    contact was lost); ``rank`` — this process' rank.
    """

    def __init__(self, message: str, rank: int, failed: dict[int, str] | None = None):
        super().__init__(message)
        self.rank = rank
        self.failed = dict(failed or {})


@dataclass(frozen=True)
class World:
    """This process' place in a distributed run."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def _dist():
    import torch.distributed as dist

    return dist


_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("rope_interp_local", default=False)


@contextmanager
def local() -> Iterator[None]:
    """Run the block as a single process, even under ``torchrun`` (rank-0-only work: figures, views)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def world() -> World | None:
    """The initialised process group as a :class:`World`, or None for a single process (or a group of 1,
    or inside :func:`local`)."""
    if _LOCAL.get():
        return None
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size <= 1:
        return None
    return World(
        rank=dist.get_rank(),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=str(dist.get_backend()),
    )


def is_root() -> bool:
    """True on rank 0 and in a single process: the process that writes files and prints."""
    w = world()
    return w is None or w.is_root


def launched() -> bool:
    """True when ``torchrun`` (or another launcher) started this process as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def timeout_s() -> float:
    """The process group's timeout: ``ROPE_INTERP_DIST_TIMEOUT`` seconds, default 1800."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise RopeInterpError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise RopeInterpError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return value


def init(device: str | torch.device | None = None, backend: str | None = None) -> World | None:
    """Join the process group ``torchrun`` describes in the environment; None when not launched so.

    ``backend`` defaults to NCCL for a CUDA ``device`` and gloo otherwise (objects are always
    exchanged over gloo, so a CPU-side exchange works next to NCCL). With CUDA, each rank uses
    ``cuda:LOCAL_RANK`` unless ``device`` names one. Already initialised: returns the world as is.
    """
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched():
        return None
    if not dist.is_available():
        raise RopeInterpError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RopeInterpError(
            f"WORLD_SIZE > 1 but {missing} not set: start the run with torchrun (see the README, 'Scaling out')"
        )
    cuda = device is not None and torch.device(device).type == "cuda"
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s()))
    return world()


def leave() -> None:
    """Leave the process group (the command line calls it at exit when it joined one)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        # leave together (a peer that closes its connections first can abort gloo here), over gloo only:
        # gloo notices a dead peer at once, NCCL would wait for the whole timeout
        group = _GLOO if _GLOO is not None else None if "nccl" not in str(dist.get_backend()) else False
        if group is not False:
            try:
                dist.barrier(group=group)
            except Exception:  # a rank is gone already: nothing to wait for
                pass
        dist.destroy_process_group()
    _reset_groups()


def local_device(device: str | torch.device) -> str:
    """The device this rank should use for ``device``: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    d = torch.device(device)
    w = world()
    if d.type == "cuda" and d.index is None and w is not None and torch.cuda.is_available():
        return f"cuda:{w.local_rank % torch.cuda.device_count()}"
    return str(d)


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` items that rank ``rank`` of ``size`` takes
    (sizes differ by at most one, the first ranks take the larger blocks)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's contiguous block of ``items`` (all of them in a single process)."""
    w = world()
    items = list(items)
    if w is None:
        return items
    start, stop = shard_bounds(len(items), w.rank, w.size)
    return items[start:stop]


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, one line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _object_group():
    """A gloo group for object exchanges (the default group when it is gloo already)."""
    global _GLOO
    dist = _dist()
    if "nccl" not in str(dist.get_backend()):
        return None
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s()))
    return _GLOO


_GLOO: Any = None


def _reset_groups() -> None:
    global _GLOO
    _GLOO = None


def exchange(payload: Any, error: BaseException | None = None, what: str = "exchange") -> list[Any]:
    """Send ``payload`` (or this rank's ``error``) to every rank; returns every rank's payload in rank order.

    Raises :class:`RankFailedError` on every rank when any rank passed an ``error`` (naming each failed
    rank and its cause), or when another rank cannot be reached (killed, crashed, timed out).
    In a single process: ``[payload]``, or ``error`` re-raised.
    """
    w = world()
    if w is None:
        if error is not None:
            raise error
        return [payload]
    dist = _dist()
    mine = ("error", describe(error)) if error is not None else ("ok", payload)
    out: list[Any] = [None] * w.size
    t0 = time.perf_counter()
    try:
        dist.all_gather_object(out, mine, group=_object_group())
    except Exception as err:  # a rank died or the group timed out: nobody can be asked any more
        _mark(error)
        raise RankFailedError(
            f"rank {w.rank} of {w.size} lost contact with the other ranks during {what} (a rank crashed, was "
            f"killed, or did not answer within {timeout_s():.0f} s): {describe(err)}",
            w.rank,
        ) from (error or err)
    _STATS["exchanges"] += 1
    _STATS["seconds"] += time.perf_counter() - t0
    failed = {r: msg for r, (kind, msg) in enumerate(out) if kind == "error"}
    if failed:
        causes = "; ".join(f"rank {r}: {msg}" for r, msg in failed.items())
        who = "this rank" if w.rank in failed else f"rank {min(failed)}"
        _mark(error)
        raise RankFailedError(
            f"stopped on rank {w.rank} of {w.size} during {what}: {who} failed ({causes})", w.rank, failed
        ) from error
    return [p for _, p in out]


def _mark(error: BaseException | None) -> None:
    if error is not None:
        try:
            error.rope_interp_reported = True  # type: ignore[attr-defined]
        except AttributeError:
            pass


def reported(error: BaseException) -> bool:
    """Whether every rank already knows about ``error`` (it went through :func:`exchange`, or is a
    :class:`RankFailedError`, which every rank raises together)."""
    return isinstance(error, RankFailedError) or bool(getattr(error, "rope_interp_reported", False))


def agree(error: BaseException | None = None, what: str = "the end of the run") -> None:
    """Every rank says whether it succeeded; raises :class:`RankFailedError` everywhere if one did not.

    Call it before committing outputs (rank 0) so that no complete-looking file is left when any
    rank failed. A no-op in a single process (``error`` is re-raised there).
    """
    exchange(None, error, what)


def stats() -> dict[str, float]:
    """Exchanges made in this process so far, the seconds spent in them (waiting for the slowest rank
    included) and the bytes of accumulator state this rank sent (for benchmarks)."""
    return dict(_STATS)


# ---- accumulator states --------------------------------------------------------------------------------
class _Pickler(pickle.Pickler):
    """Pickles an accumulator without its model (a placeholder) and with every tensor moved to the CPU."""

    def __init__(self, f: Any, devices: list[str]):
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.devices = devices
        self.tensors: list[torch.Tensor] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.nn.Module):
            return ("module",)
        if callable(obj) and "<locals>" in getattr(obj, "__qualname__", ""):
            return ("local",)  # a closure (a per-device table, a hook): the receiver keeps its own
        if isinstance(obj, torch.Tensor):
            dev = str(obj.device)
            if dev not in self.devices:
                self.devices.append(dev)
            self.tensors.append(obj.detach().cpu())
            return ("tensor", len(self.tensors) - 1, self.devices.index(dev))
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: Any, model: Any, tensors: list[torch.Tensor], device_map: list[str]):
        super().__init__(f)
        self.model, self.tensors, self.device_map = model, tensors, device_map

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "module":
            return self.model
        if pid[0] == "local":
            return _KEEP_LOCAL
        _, i, d = pid
        return self.tensors[i].to(self.device_map[d]) if d < len(self.device_map) else self.tensors[i]


def pack(obj: Any) -> tuple[bytes, list[torch.Tensor], list[str]]:
    """An accumulator (or any object holding the model and tensors) as portable bytes + CPU tensors."""
    buf, devices = io.BytesIO(), []
    p = _Pickler(buf, devices)
    p.dump(obj)
    return buf.getvalue(), p.tensors, devices


def unpack(packed: tuple[bytes, list[torch.Tensor], list[str]], model: Any, local_devices: list[str]) -> Any:
    """Rebuild a :func:`pack`-ed object here: the model placeholder becomes ``model``; the sender's
    i-th device becomes ``local_devices[i]`` (the receiver's own, in first-use order), CPU otherwise."""
    data, tensors, devices = packed
    device_map = [
        (local_devices[i] if i < len(local_devices) and d != "cpu" else "cpu") for i, d in enumerate(devices)
    ]
    return _Unpickler(io.BytesIO(data), model, tensors, device_map).load()


class _KeepLocal:
    def __repr__(self) -> str:
        return "<kept from the local accumulator>"


_KEEP_LOCAL = _KeepLocal()


def _restore(new: Any, old: Any, seen: set[int] | None = None) -> Any:
    """``new`` with every closure placeholder replaced by the value at the same place in ``old``."""
    if new is _KEEP_LOCAL:
        return old
    seen = set() if seen is None else seen
    if id(new) in seen or isinstance(new, (torch.Tensor, torch.nn.Module, str, bytes, int, float)):
        return new
    seen.add(id(new))
    if isinstance(new, dict) and isinstance(old, dict):
        for k in list(new):
            if k in old:
                new[k] = _restore(new[k], old[k], seen)
    elif isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        new[:] = [_restore(a, b, seen) for a, b in zip(new, old, strict=True)]
    elif hasattr(new, "__dict__") and type(new) is type(old):
        for k, v in list(vars(new).items()):
            if k in vars(old) and (r := _restore(v, vars(old)[k], seen)) is not v:
                object.__setattr__(new, k, r)  # frozen dataclasses too
    return new


def _model_of(obj: Any) -> Any:
    for v in vars(obj).values():
        if isinstance(v, torch.nn.Module):
            return v
    return None


def reduce_accumulators(accs: Sequence[Any], what: str = "merging the accumulators") -> None:
    """Merge every rank's accumulators into each rank's, in rank order, in place (a no-op in one process).

    ``accs`` must be the same list (same kinds, options, layers) on every rank. Each rank
    rebuilds rank 0's states, merges ranks 1, 2, ... into them with ``merge()`` and takes the
    result, so every rank ends with the single-process result. A rank that cannot pack its
    accumulators is reported to every rank (:func:`exchange`).
    """
    w = world()
    if w is None:
        return
    packed, error = [], None
    try:
        packed = [pack(a) for a in accs]
        _STATS["bytes"] += sum(len(b) + sum(t.nbytes for t in ts) for b, ts, _ in packed)
    except Exception as err:  # reported to every rank, like a failure during the pass
        error = err
    states = exchange(packed, error, what)
    if any(len(s) != len(accs) for s in states):
        raise RankFailedError(
            f"the ranks hold different numbers of accumulators ({[len(s) for s in states]}): every rank must "
            "run the same analyses with the same options",
            w.rank,
        )
    for i, acc in enumerate(accs):
        local_devices = states[w.rank][i][2]
        model = _model_of(acc)
        merged = unpack(states[0][i], model, local_devices)
        for s in states[1:]:
            merged = merged.merge(unpack(s[i], model, local_devices)) or merged
        acc.__dict__.update(_restore(merged, acc).__dict__)


def map_shard(
    items: Sequence[Any] | Callable[[], Sequence[Any]],
    fn: Callable[[list[Any]], Any],
    what: str,
    inputs: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Run ``fn`` on this rank's contiguous block of ``items``; returns every rank's result, in rank order.

    ``items`` may be a function that builds them (run inside the guard: a failure there is reported
    too). Under ``torchrun`` the ranks first check that they hold the same ``items`` and ``inputs``
    (:func:`same_inputs`), then run their blocks. A failure on any rank raises :class:`RankFailedError`
    on every rank (:func:`exchange`). In a single process: ``[fn(all items)]``.

    >>> map_shard(lambda: [1, 2, 3], sum, "a sum")
    [6]
    """
    w = world()
    error, out, every = None, None, []
    try:
        every = list(items() if callable(items) else items)
    except Exception as err:  # reported to every rank at the input check
        if w is None:
            raise
        error = err
    if w is not None:
        same_inputs(what, {"items": every, **(inputs or {})}, error)
    try:
        out = fn(shard(every))
    except Exception as err:  # reported to every rank at the exchange
        if w is None:
            raise
        error = err
    return exchange(out, error, what)


# ---- the ranks' inputs -----------------------------------------------------------------------------------
def _canon(obj: Any, contents: bool = True, depth: int = 0) -> Any:
    """A picklable, rank-independent description of ``obj`` (what :func:`fingerprint` hashes).

    Tensors: shape, dtype and (``contents``) a hash of their values on the CPU — never their device;
    numbers, strings, None: themselves; lists, tuples, dicts: element by element; a function: its module
    and qualname and the values its closure holds (so ``logit_diff(answer, wrong, pos)`` is covered by
    its ``answer``, ``wrong`` and ``pos``); ``functools.partial``: its function and arguments; another
    object: its type and public attributes. Modules and devices are left out (each rank has its own);
    anything deeper than 4 levels is described by its type alone.
    """
    import functools
    import hashlib

    if isinstance(obj, (bool, int, float, str, bytes, type(None))):
        return obj
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        digest = hashlib.sha256(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        return ("tensor", tuple(t.shape), str(t.dtype), digest[:16] if contents else None)
    if isinstance(obj, (torch.nn.Module, torch.device)):
        return (type(obj).__qualname__,)
    if depth > 4:
        return (type(obj).__qualname__,)
    sub = functools.partial(_canon, contents=contents, depth=depth + 1)
    if isinstance(obj, (list, tuple)):
        return [sub(x) for x in obj]
    if isinstance(obj, Mapping):
        return sorted((str(k), sub(v)) for k, v in obj.items())
    if isinstance(obj, functools.partial):
        return ("partial", sub(obj.func), sub(obj.args), sub(obj.keywords))
    if callable(obj) and hasattr(obj, "__code__"):
        cells = [c.cell_contents for c in (getattr(obj, "__closure__", None) or ()) if _filled(c)]
        return ("function", getattr(obj, "__module__", ""), obj.__qualname__, sub(cells))
    public = {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}
    return ("object", type(obj).__module__, type(obj).__qualname__, sub(public))


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def fingerprint(obj: Any, contents: bool = True) -> str:
    """A short hash of ``obj``'s rank-independent description (see :func:`_canon` for what is covered).

    >>> fingerprint([1, torch.arange(3)]) == fingerprint([1, torch.arange(3)]), fingerprint(1) == fingerprint(2)
    (True, False)
    """
    import hashlib

    return hashlib.sha256(repr(_canon(obj, contents)).encode()).hexdigest()[:12]


def same_inputs(what: str, parts: Mapping[str, Any], error: BaseException | None = None) -> None:
    """Every rank sends the :func:`fingerprint` of each of ``parts`` (tokens, options, metric...); raises
    :class:`RankFailedError` on every rank, naming the ranks and the parts that differ, unless all agree.

    rope_interp splits the work itself: every rank must be given the full data and the same options
    (the usual DDP idiom of passing each rank its own shard would shard it again). ``error`` (this rank
    failed before the check) is reported instead. A no-op in a single process (``error`` re-raised).
    """
    mine = {k: fingerprint(v) for k, v in parts.items()} if error is None else None
    everyone = exchange(mine, error, f"checking the ranks' inputs for {what}")
    w = world()
    if w is None:
        return
    differ = sorted({k for fp in everyone for k in fp if len({str(f.get(k)) for f in everyone}) > 1})
    if not differ:
        return
    groups: dict[str, list[int]] = {}
    for r, fp in enumerate(everyone):
        groups.setdefault(repr([fp.get(k) for k in differ]), []).append(r)
    ranks = " vs ".join(f"rank{'s' if len(g) > 1 else ''} {', '.join(map(str, g))}" for g in groups.values())
    detail = "; ".join(
        f"rank {r}: " + ", ".join(f"{k} {fp.get(k)}" for k in differ) for r, fp in enumerate(everyone)
    )
    raise RankFailedError(
        f"the ranks were given different {' and '.join(differ)} for {what} ({ranks}; fingerprints: {detail}): "
        "every rank must pass the full data, the same options and the same metric — rope_interp splits the "
        "work over the ranks itself (README, 'Scaling out')",
        w.rank,
        {
            r: f"different {', '.join(differ)} from rank 0"
            for r, fp in enumerate(everyone)
            if r not in groups[repr([everyone[0].get(k) for k in differ])]
        },
    )
