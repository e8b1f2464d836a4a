"""Hook names and scoped hooks: the one place that names TransformerLens hook points, and
the one way anything hooks a model (:class:`HookSet`).

**Names.**

Every other module asks :func:`attn_hook` for a name instead of writing
``"blocks.{layer}.attn.hook_..."`` itself, so a change of naming (a new model
class, a new TransformerLens major) is a one-file change.

>>> attn_hook(3, "rot_q")
'blocks.3.attn.hook_rot_q'
>>> parse_attn_hook("blocks.12.attn.hook_k")
(12, 'k')

**Scoped hooks.** Every rope_interp object that hooks a model is a :class:`HookSet`.

A ``HookSet`` is usable two ways, as TransformerLens users expect:

* as a context manager, ``with hs: model(tokens)`` — the hooks are removed in
  ``finally`` (TransformerLens' own ``model.hooks`` levels), also when the
  forward raises; hooks the user added before are left alone;
* as a plain list, ``model.run_with_hooks(tokens, fwd_hooks=hs.fwd_hooks())``.

Composition. ``a + b`` is a :class:`ComposedHooks`: ``a`` acts first, then ``b``, on
every activation both touch. That holds also for the query-side modes that
:mod:`rope_interp.intervene.ablate` applies late, at ``hook_rot_k`` (``no_rotation``,
``scale_freq``): within a composition, the ``hook_rot_q`` work of every part is run
at ``hook_rot_k`` of the same layer, part by part (part 1's q then k work, then part
2's...), on the same query tensor, before the scores are computed. Nesting contexts
(``with a: with b:``) registers ``a``'s hooks first too, but does not reorder the late
query modes: compose with ``+`` when the order matters.

Context exits must be in reverse order of entry (LIFO, as ``with`` blocks are):
TransformerLens removes hooks by nesting level, so exiting an outer context first would
remove the inner one's hooks. rope_interp checks this and raises
:class:`~rope_interp.errors.HookStateError` instead.

Threads. TransformerLens hooks are global state of the model: a hook added in one thread
fires in every thread's forward passes. Do not run hooked forwards of one model from
several threads; use one model per thread. Entering a rope_interp context on a model that
holds a context entered by another thread raises :class:`~rope_interp.errors.HookStateError`.

>>> import torch
>>> from rope_interp.model.testing import tiny_model
>>> from rope_interp import ablate_bands
>>> model = tiny_model()
>>> a, b = ablate_bands(model, [0], mode="zero"), ablate_bands(model, [1], mode="zero")
>>> outer, inner = a.__enter__(), b.__enter__()
>>> a.__exit__(None, None, None)
Traceback (most recent call last):
...
rope_interp.errors.HookStateError: hook contexts must be exited in reverse order of entry (LIFO): this HookSet was entered before another context on the same model that is still open; exit that one first (nested `with` blocks do this)
>>> b.__exit__(None, None, None); a.__exit__(None, None, None)
>>> sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())
0
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from ..errors import HookStateError, RopeInterpError
from .kind import Model

Site = Literal["q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"]
"""Attention hook sites that rope_interp reads or writes."""

QKSite = Literal["q", "k", "rot_q", "rot_k"]
"""The four sites that carry queries/keys: before (``q``, ``k``) and after rotation."""

RotSite = Literal["rot_q", "rot_k"]
"""Queries / keys after rotation."""

Side = Literal["q", "k"]
"""Which side of q·k: the query or the key."""

SITES: tuple[str, ...] = get_args(Site)
QK_SITES: tuple[str, ...] = get_args(QKSite)
ROT_SITES: tuple[RotSite, ...] = get_args(RotSite)
SIDES: tuple[Side, ...] = get_args(Side)


def rot_site(side: Side) -> RotSite:
    """The rotated site of a side, typed (instead of ``"rot_" + side``).

    >>> rot_site("k")
    'rot_k'
    """
    if side == "q":
        return "rot_q"
    if side == "k":
        return "rot_k"
    raise ValueError(f"side must be 'q' or 'k', got {side!r}")


_PATTERN = re.compile(r"^blocks\.(\d+)\.attn\.hook_([a-z_]+)$")


def attn_hook(layer: int, site: Site) -> str:
    """Name of the attention hook point ``site`` in block ``layer``."""
    if site not in SITES:
        raise ValueError(f"unknown attention hook site {site!r}; expected one of {SITES}")
    return f"blocks.{int(layer)}.attn.hook_{site}"


TableSite = Literal["cos", "sin"]


def rotary_table_hook(layer: int, table: TableSite) -> str:
    """Name of a bridge attention's ``hook_cos``/``hook_sin``: the rotary tables at the true positions.

    Only a ``TransformerBridge`` has them; they fire just before ``hook_rot_q``/``hook_rot_k``.

    >>> rotary_table_hook(0, "cos")
    'blocks.0.attn.hook_cos'
    """
    if table not in ("cos", "sin"):
        raise ValueError(f"unknown rotary table {table!r}; expected 'cos' or 'sin'")
    return f"blocks.{int(layer)}.attn.hook_{table}"


MLPSite = Literal["pre", "post"]


def mlp_hook(layer: int, site: MLPSite) -> str:
    """Name of the MLP hook ``hook_pre`` (before the activation function) or ``hook_post`` in block ``layer``.

    >>> mlp_hook(2, "post")
    'blocks.2.mlp.hook_post'
    """
    if site not in ("pre", "post"):
        raise ValueError(f"unknown MLP hook site {site!r}; expected 'pre' or 'post'")
    return f"blocks.{int(layer)}.mlp.hook_{site}"


def ln2_normalized_hook(layer: int) -> str:
    """Name of the MLP's normalised input (``ln2.hook_normalized``) in block ``layer``.

    Only a HookedTransformer has it (a ``TransformerBridge`` names its norms differently).

    >>> ln2_normalized_hook(4)
    'blocks.4.ln2.hook_normalized'
    """
    return f"blocks.{int(layer)}.ln2.hook_normalized"


def resid_mid_hook(layer: int) -> str:
    """Name of the residual stream between attention and MLP (``hook_resid_mid``) in block ``layer``.

    >>> resid_mid_hook(4)
    'blocks.4.hook_resid_mid'
    """
    return f"blocks.{int(layer)}.hook_resid_mid"


def parse_attn_hook(name: str) -> tuple[int, str]:
    """Inverse of :func:`attn_hook`: ``(layer, site)`` of a hook name."""
    match = _PATTERN.match(name)
    if match is None or match.group(2) not in SITES:
        raise ValueError(f"{name!r} is not a rope_interp attention hook name")
    return int(match.group(1)), match.group(2)


def is_key_site(site: str) -> bool:
    """True for sites whose head axis has ``n_key_value_heads`` entries under GQA."""
    return site in ("k", "rot_k", "v")


HookFn = Callable[..., Any]
FwdHooks = list[tuple[str | HookFn, HookFn]]
"""A forward-hook list as TransformerLens takes it (``run_with_hooks(fwd_hooks=...)``): names or filters."""


@dataclass(eq=False)
class _Entry:
    cm: Any
    thread: int
    owner: Any


_LOCK = threading.Lock()
_ACTIVE: weakref.WeakKeyDictionary[Any, list[_Entry]] = weakref.WeakKeyDictionary()


def active_contexts(model: Model) -> int:
    """How many rope_interp hook contexts are open on ``model`` (in any thread).

    >>> from rope_interp.model.testing import tiny_model
    >>> active_contexts(tiny_model())
    0
    """
    with _LOCK:
        return len(_ACTIVE.get(model, ()))


class HookSet:
    """Base class: subclasses implement :meth:`fwd_hooks`."""

    model: Model

    def __init__(self, model: Model):
        self.model = model
        self._contexts: list[_Entry] = []

    def fwd_hooks(self) -> FwdHooks:
        raise NotImplementedError

    def __enter__(self) -> HookSet:
        tid = threading.get_ident()
        with _LOCK:
            stack = _ACTIVE.setdefault(self.model, [])
            other = [e for e in stack if e.thread != tid]
            if other:
                raise HookStateError(
                    "this model already holds rope_interp hooks entered by another thread; hooks are global "
                    "state of the model and would fire in both threads' forward passes: use one model per thread"
                )
            cm = self.model.hooks(fwd_hooks=self.fwd_hooks())
            cm.__enter__()
            entry = _Entry(cm, tid, self)
            stack.append(entry)
        self._contexts.append(entry)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._contexts:
            raise HookStateError("__exit__ without a matching __enter__ on this HookSet")
        entry = self._contexts[-1]
        with _LOCK:
            stack = _ACTIVE.get(self.model, [])
            if not stack or stack[-1] is not entry:
                raise HookStateError(
                    "hook contexts must be exited in reverse order of entry (LIFO): this HookSet was entered "
                    "before another context on the same model that is still open; exit that one first "
                    "(nested `with` blocks do this)"
                )
            stack.pop()
            self._contexts.pop()
        entry.cm.__exit__(*exc)

    def __add__(self, other: HookSet) -> HookSet:
        if not isinstance(other, HookSet):
            return NotImplemented
        if other.model is not self.model:
            raise RopeInterpError("cannot compose hook sets built for different models")
        return ComposedHooks(self.model, [self, other])

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with these hooks attached, removed afterwards."""
        with self:
            return self.model(*args, **kwargs)


class HookList(HookSet):
    """A plain forward-hook list as a :class:`HookSet`: attached under the same thread and LIFO guard.

    For code that builds its own ``fwd_hooks`` (the gradient tiers of the sweep): entering it on a
    model that holds a context of another thread raises :class:`~rope_interp.errors.HookStateError`
    instead of attaching hooks that would fire in (and measure) that thread's intervention.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> model, seen = tiny_model(), []
    >>> with HookList(model, [(attn_hook(0, "rot_q"), lambda a, hook: seen.append(a.shape))]):
    ...     _ = model(torch.tensor([[1, 2, 3]]))
    >>> seen
    [torch.Size([1, 3, 4, 16])]
    """

    def __init__(self, model: Model, hooks: Sequence[tuple[str | HookFn, HookFn]]):
        super().__init__(model)
        self.hooks: FwdHooks = list(hooks)

    def fwd_hooks(self) -> FwdHooks:
        return list(self.hooks)


def _call(fn: HookFn, act: Any, hook: Any) -> Any:
    """Run one hook function; an in-place result is kept, a returned tensor replaces ``act``."""
    out = fn(act, hook=hook)
    return act if out is None else out


def per_device(
    table: torch.Tensor, first: torch.device | None = None
) -> Callable[[torch.device], torch.Tensor]:
    """``table`` on a device, copied there once: for small tables that hooks index activations with.

    A hook asks for the table on its activation's device (``on(x.device)``), so a model spread over
    several devices works; passing ``first`` (the model's device) makes the usual copy now, outside
    the hooks, so a one-device model never copies inside a hook.

    >>> import torch
    >>> on = per_device(torch.arange(3), torch.device("cpu"))
    >>> on(torch.device("cpu")) is on(torch.device("cpu"))
    True
    """
    copies: dict[torch.device, torch.Tensor] = {}

    def on(device: torch.device) -> torch.Tensor:
        if device not in copies:
            copies[device] = table.to(device)
        return copies[device]

    if first is not None:
        on(torch.device(first))
    return on


class ComposedHooks(HookSet):
    """Several hook sets applied together, in order: earlier parts act first (see the module docstring).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> from rope_interp import ablate_bands
    >>> model = tiny_model()
    >>> toks = torch.tensor([[1, 2, 3, 4, 5]])
    >>> un, mean = ablate_bands(model, [6, 7], mode="no_rotation"), ablate_bands(model, [6, 7], mode="mean")
    >>> both = (un + mean).run(toks)           # un-rotate, then replace by the mean
    >>> torch.allclose(both, (mean + un).run(toks))
    False
    """

    def __init__(self, model: Model, parts: list[HookSet]):
        super().__init__(model)
        self.parts: list[HookSet] = []
        for p in parts:
            self.parts.extend(p.parts if isinstance(p, ComposedHooks) else [p])
        self._stash: dict[str, tuple[Any, Any]] = {}
        self._k_first: set[str] = set()

    def fwd_hooks(self) -> FwdHooks:
        per_part = [p.fwd_hooks() for p in self.parts]
        # layers whose rot_q / rot_k are hooked by two or more parts, with some rot_q work
        touch: dict[str, set[int]] = {}
        has_q: set[str] = set()
        for i, hooks in enumerate(per_part):
            for name, _ in hooks:
                if isinstance(name, str) and name.endswith((".hook_rot_q", ".hook_rot_k")):
                    prefix = name.rsplit(".", 1)[0]
                    touch.setdefault(prefix, set()).add(i)
                    if name.endswith("_q"):
                        has_q.add(prefix)
        grouped = {p for p, parts in touch.items() if len(parts) > 1 and p in has_q}
        out: FwdHooks = []
        done: set[str] = set()
        for hooks in per_part:
            for name, fn in hooks:
                prefix = name.rsplit(".", 1)[0] if isinstance(name, str) else None
                if prefix in grouped and name.endswith((".hook_rot_q", ".hook_rot_k")):
                    if prefix not in done:
                        done.add(prefix)
                        out.append((f"{prefix}.hook_rot_q", self._q_hook(prefix, per_part)))
                        out.append((f"{prefix}.hook_rot_k", self._k_hook(prefix, per_part)))
                    continue
                out.append((name, fn))
        return out

    @staticmethod
    def _part_fns(hooks: FwdHooks, name: str) -> list[HookFn]:
        return [fn for n, fn in hooks if n == name]

    def _run_q(
        self, prefix: str, per_part: list[FwdHooks], q: Any, hook: Any, k: Any = None, khook: Any = None
    ):
        """Each part's q work then k work, part by part, on the same tensors (q in place)."""
        for hooks in per_part:
            for fn in self._part_fns(hooks, f"{prefix}.hook_rot_q"):
                new = _call(fn, q, hook)
                if new is not q:
                    q.copy_(new)
            if k is not None:
                for fn in self._part_fns(hooks, f"{prefix}.hook_rot_k"):
                    k = _call(fn, k, khook)
        return k

    def _q_hook(self, prefix: str, per_part: list[FwdHooks]) -> HookFn:
        def hook(q: Any, hook: Any) -> Any:
            if prefix in self._k_first:  # a model that fires hook_rot_k first: run q work now, in order
                self._k_first.discard(prefix)
                self._run_q(prefix, per_part, q, hook)
            else:
                self._stash[prefix] = (q, hook)
            return q

        return hook

    def _k_hook(self, prefix: str, per_part: list[FwdHooks]) -> HookFn:
        def hook(k: Any, hook: Any) -> Any:
            stashed = self._stash.pop(prefix, None)
            if stashed is None:
                self._k_first.add(prefix)
                for hooks in per_part:
                    for fn in self._part_fns(hooks, f"{prefix}.hook_rot_k"):
                        k = _call(fn, k, hook)
                return k
            q, qhook = stashed
            return self._run_q(prefix, per_part, q, qhook, k, hook)

        return hook

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if not self._contexts:
                self._stash.clear()
                self._k_first.clear()
