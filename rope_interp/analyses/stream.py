"""The fused streaming engine: one forward per window feeds every analysis' accumulator.

An :class:`Accumulator` is the state one analysis keeps during the shared pass:
its own hooks (attention patterns, MLP activations, band statistics), an optional
``on_pair`` consumer of the post-rotation band views of one layer's queries and keys,
and ``observe`` (called after each window's forward, e.g. to count tokens or keep the
first windows for a later causal check). Accumulators of the same kind ``merge()``
(sums add up), so a pass split over processes or over chunks of text gives the
same result.

:func:`run_pass` runs the model once per window with the hooks of all accumulators
attached together. The band views of ``hook_rot_q``/``hook_rot_k`` are built once per
layer and handed to every accumulator that reads that layer (:func:`qk_pair_hooks`).
The forward stops after the deepest layer any accumulator reads.

>>> import torch
>>> from rope_interp.model.testing import tiny_model
>>> from rope_interp.analyses.usage import UsageAccumulator
>>> from rope_interp.analyses.massive import MassiveAccumulator
>>> model = tiny_model()
>>> accs = [UsageAccumulator(model, [0, 1]), MassiveAccumulator(model, [1])]
>>> run_pass(model, torch.randint(0, 50, (2, 16)), accs, window=8, progress=False)  # two windows of [2, 8]
2
>>> accs[0].finalize().n_tokens, accs[1].finalize().n_tokens
(32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import MergeError
from ..model.hooks import FwdHooks
from ..model.kind import Model
from ..progress import progress_bar


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool((a == b).all())
    return bool(a == b)


def check_merge(mine: Any, other: Any, *names: str, what: str | None = None) -> None:
    """Raise :class:`~rope_interp.errors.MergeError` unless ``other`` is a ``type(mine)`` whose
    attributes ``names`` equal ``mine``'s (the layout two sums must share to be added up).

    The message names each attribute that differs, ``other``'s value first.

    >>> from types import SimpleNamespace as NS
    >>> check_merge(NS(layers=[0, 1], start_pos=1), NS(layers=[0, 1], start_pos=1), "layers", "start_pos")
    >>> check_merge(NS(layers=[0], start_pos=1), NS(layers=[1], start_pos=1), "layers", "start_pos", what="sums")
    Traceback (most recent call last):
    ...
    rope_interp.errors.MergeError: cannot merge sums with different layers (other vs this): layers: [1] vs [0]
    """
    what = what or type(mine).__name__
    if not isinstance(other, type(mine)):
        raise MergeError(
            f"cannot merge {what}: expected another {type(mine).__name__}, got {type(other).__name__}"
        )
    differ = [n for n in names if not _same(getattr(other, n), getattr(mine, n))]
    if differ:
        raise MergeError(
            f"cannot merge {what} with different {', '.join(differ)} (other vs this): "
            + "; ".join(f"{n}: {getattr(other, n)!r} vs {getattr(mine, n)!r}" for n in differ)
        )


class Accumulator:
    """Base class of one analysis' state in the shared pass (override what you need).

    Attributes:
        layers: the layers this accumulator reads (the forward runs up to ``max(layers)``).
        pair_layers: layers whose post-rotation ``(q, k)`` band views :meth:`on_pair` receives.
    """

    layers: list[int]
    pair_layers: Sequence[int] = ()
    needs_loss: bool = False
    """True: the forward runs to the end and :meth:`observe_loss` gets the per-token loss."""

    def configure(self, tokens: Tensor) -> None:
        """Fix settings that depend on the data (an FFT length, ...) from the stream's *first* window,
        before any window is fed: every rank of a distributed run sees the same first window."""

    def accepts(self, tokens: Tensor) -> bool:
        """Whether this window counts for the accumulator (e.g. long enough); default: every window."""
        return True

    def fwd_hooks(self) -> FwdHooks:
        """Hooks (read-only: they return the activation unchanged) to attach during the forward."""
        return []

    def on_pair(self, layer: int, q: Tensor, k: Tensor, q_pass: Tensor, k_pass: Tensor) -> None:
        """Receive one layer's post-rotation band views ``[batch, pos, head, band, 2]`` and pass-through dims."""

    def observe(self, tokens: Tensor) -> None:
        """Called after the forward over ``tokens`` (counts, cached windows)."""

    def observe_loss(self, tokens: Tensor, loss: Tensor) -> None:
        """With :attr:`needs_loss`: the next-token loss ``[batch, pos - 1]`` of the (unmodified) forward."""

    def merge(self, other: Any) -> Any:
        """Add ``other``'s sums into this accumulator (same model, layers and options); returns self."""
        raise NotImplementedError

    def check_merge(self, other: Any, *names: str, what: str | None = None) -> None:
        """For :meth:`merge`: :class:`~rope_interp.errors.MergeError` unless ``other`` is of this type and
        agrees on the attributes ``names`` (:func:`check_merge`)."""
        check_merge(self, other, *names, what=what)

    def add_sums(self, other: Any, *names: str) -> None:
        """For :meth:`merge`: add ``other``'s attributes ``names`` into this one's — tensors in place (moved to
        this one's device), dicts of tensors key by key, numbers by ``+``."""
        for name in names:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] += value.to(mine[key].device)
            elif isinstance(mine, Tensor):
                mine += theirs.to(mine.device)
            else:
                setattr(self, name, mine + theirs)

    def finalize(self) -> Any:
        """The analysis' result object."""
        raise NotImplementedError


def _pair_hooks(model: Model, accs: Sequence[Accumulator]) -> FwdHooks:
    from .inputs import qk_pair_hooks

    by_layer: dict[int, list[Accumulator]] = {}
    for a in accs:
        for layer in a.pair_layers:
            by_layer.setdefault(layer, []).append(a)
    if not by_layer:
        return []

    def dispatch(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        for a in by_layer[layer]:
            a.on_pair(layer, q, k, qp, kp)

    return qk_pair_hooks(model, sorted(by_layer), dispatch)


def forward_window(model: Model, tokens: Tensor, accs: Sequence[Accumulator]) -> None:
    """One forward over ``tokens`` feeding the accumulators that accept it, then their ``observe``."""
    active = [a for a in accs if a.accepts(tokens)]
    if not active:
        return
    hooks = _pair_hooks(model, active) + [h for a in active for h in a.fwd_hooks()]
    want_loss = [a for a in active if a.needs_loss] if tokens.shape[1] >= 2 else []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        if want_loss:
            loss = model(tokens, return_type="loss", loss_per_token=True)
        else:
            model(tokens, stop_at_layer=max(max(a.layers) for a in active) + 1)
    for a in active:
        a.observe(tokens)
    for a in want_loss:
        a.observe_loss(tokens, loss)


def _options_of(acc: Accumulator) -> tuple[str, dict[str, Any]]:
    """An accumulator's kind and its numeric options (public int / float / bool attributes and lists of
    ints, e.g. ``layers``) — compared across ranks; strings and tensors are left out (devices differ)."""

    def simple(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(isinstance(x, int) for x in v)
        return v is None or isinstance(v, (bool, int, float))

    return type(acc).__qualname__, {
        k: v for k, v in getattr(acc, "__dict__", {}).items() if not k.startswith("_") and simple(v)
    }


def run_pass(
    model: Model,
    data: Any,
    accs: Sequence[Accumulator],
    *,
    window: int | None = None,
    progress: bool = True,
    desc: str = "analyses",
) -> int:
    """Stream ``data`` (text, token ids or batches; see :func:`~rope_interp.analyses.inputs.iter_windows`)
    through the model once, feeding every accumulator. Returns the number of windows.

    Under ``torchrun`` (an initialised process group, :mod:`rope_interp.distributed`) each rank
    runs a contiguous block of the windows and the accumulators are merged across ranks in rank
    order, so every rank ends with the single-process sums; a failure on one rank raises
    :class:`~rope_interp.distributed.RankFailedError` on all of them."""
    from .. import distributed
    from .inputs import windows

    n = 0
    if not accs:
        return n
    if distributed.world() is None:
        for tokens in windows(model, data, window, progress, desc):
            if n == 0:
                for a in accs:
                    a.configure(tokens)
            forward_window(model, tokens, accs)
            n += 1
        return n

    # under torchrun: this rank's contiguous block of windows, then every rank's sums merged in rank order
    def every_window() -> list[Tensor]:
        every = list(windows(model, data, window, False, desc))
        for a in accs:
            a.configure(every[0])  # the stream's first window, the same on every rank
        return every

    def feed(mine: list[Tensor]) -> int:
        for tokens in progress_bar(mine, desc=desc, enabled=progress):
            forward_window(model, tokens, accs)
        return len(mine)

    # the ranks check first that they stream the same windows into the same kinds of accumulators
    kinds = {"analyses": [_options_of(a) for a in accs]}
    n = sum(distributed.map_shard(every_window, feed, f"the shared pass ({desc})", inputs=kinds))
    distributed.reduce_accumulators(accs, what=f"merging the shared pass ({desc})")
    return n
