"""Scoped hooks: every rope_interp object that hooks a model is a :class:`HookSet`.

A ``HookSet`` is usable two ways, as TransformerLens users expect:

* as a context manager, ``with hs: model(tokens)`` — the hooks are removed in
  ``finally`` (TransformerLens' own ``model.hooks`` levels), also when the
  forward raises; hooks the user added before are left alone;
* as a plain list, ``model.run_with_hooks(tokens, fwd_hooks=hs.fwd_hooks())``.

HookSets compose with ``+``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

HookFn = Callable[..., Any]
FwdHooks = list[tuple[str, HookFn]]


class HookSet:
    """Base class: subclasses implement :meth:`fwd_hooks`."""

    model: Any

    def __init__(self, model: Any):
        self.model = model
        self._contexts: list[Any] = []

    def fwd_hooks(self) -> FwdHooks:
        raise NotImplementedError

    def __enter__(self) -> HookSet:
        cm = self.model.hooks(fwd_hooks=self.fwd_hooks())
        cm.__enter__()
        self._contexts.append(cm)
        return self

    def __exit__(self, *exc: Any) -> None:
        cm = self._contexts.pop()
        cm.__exit__(*exc)

    def __add__(self, other: HookSet) -> HookSet:
        if other.model is not self.model:
            raise ValueError("cannot compose hook sets built for different models")
        return ComposedHooks(self.model, [self, other])

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with these hooks attached, removed afterwards."""
        with self:
            return self.model(*args, **kwargs)


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
    """Several hook sets applied together, in order (earlier ones run first at a shared hook point)."""

    def __init__(self, model: Any, parts: list[HookSet]):
        super().__init__(model)
        self.parts: list[HookSet] = []
        for p in parts:
            self.parts.extend(p.parts if isinstance(p, ComposedHooks) else [p])

    def fwd_hooks(self) -> FwdHooks:
        return [h for p in self.parts for h in p.fwd_hooks()]
