"""Metrics for sweeps and patching: a function of the logits ``[batch, pos, vocab]`` that returns a scalar.

:func:`logit_diff`, :func:`loss_metric`, :func:`kl_metric`; :class:`PatternDistance` reads
an attention pattern instead (it is a HookSet the sweeps attach themselves). A metric may
define ``batched(logits, n)`` to score ``n`` conditions stacked along the batch at once;
:func:`metric_values` does that for any metric. These are our own conventions (the same
as TransformerLens' patching metrics: a callable on logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError, RopeInterpError, TokenError
from ..model import adapter
from ..model.hooks import FwdHooks, HookSet, attn_hook
from ..model.kind import Model
from ..validate import _as_int, token_id

Metric = Callable[[Tensor], Tensor]


def _token_ids(what: str, ids: int | Tensor) -> Tensor:
    """Token ids as a 1-d integer tensor: floats, bools, strings and negative ids are refused."""
    if isinstance(ids, Tensor) and ids.ndim > 0:
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TokenError(f"logit_diff: {what} must hold integer token ids, got dtype {ids.dtype}")
        if bool((ids < 0).any()):
            raise TokenError(f"logit_diff: {what} holds a negative token id (it would index from the end)")
        return ids.reshape(-1)
    return torch.tensor([token_id(f"logit_diff: {what}", ids)])


def logit_diff(answer: int | Tensor, wrong: int | Tensor, pos: int = -1) -> Metric:
    """Metric: mean over the batch of ``logit[answer] - logit[wrong]`` at position ``pos``.

    >>> m = logit_diff(2, 0)
    >>> m(torch.tensor([[[1.0, 0.0, 3.0]]])).item()
    2.0
    """
    a, w = _token_ids("answer", answer), _token_ids("wrong", wrong)
    pos = _as_int("pos", pos)  # negative positions count from the end, as in Python
    if a.shape == w.shape and bool((a == w).all()):
        raise ParameterError(
            f"logit_diff: answer and wrong are the same token(s) ({a.tolist()}): the metric is identically zero; "
            "pass a different wrong token"
        )

    top = int(max(a.max(), w.max()))  # once here: no host sync per call

    def metric(logits: Tensor) -> Tensor:
        if top >= logits.shape[-1]:
            raise TokenError(
                f"logit_diff: token id {top} is outside the vocabulary (d_vocab = {logits.shape[-1]})"
            )
        last = logits[:, pos]
        ai, wi = a.to(last.device).expand(last.shape[0]), w.to(last.device).expand(last.shape[0])
        rows = torch.arange(last.shape[0], device=last.device)
        return (last[rows, ai] - last[rows, wi]).mean()

    return metric


def loss_metric(tokens: Tensor) -> Metric:
    """Metric: mean next-token cross-entropy of ``tokens`` ``[batch, pos]``.

    >>> abs(loss_metric(torch.tensor([[0, 1]]))(torch.zeros(1, 2, 4)).item() - 1.3862944) < 1e-6
    True
    """

    def metric(logits: Tensor) -> Tensor:
        t = tokens.to(logits.device)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return -logp.gather(-1, t[:, 1:, None]).mean()

    return metric


def kl_metric(reference_logits: Tensor, pos: int | None = -1) -> Metric:
    """Metric: ``KL(reference || patched)`` of the next-token distributions, mean over batch (and positions if ``pos=None``).

    >>> ref = torch.randn(1, 3, 5)
    >>> kl_metric(ref)(ref).abs().item() < 1e-6
    True
    """
    ref = reference_logits if pos is None else reference_logits[:, pos : (pos + 1) or None]
    ref_logp = torch.log_softmax(ref.float(), dim=-1)

    def metric(logits: Tensor) -> Tensor:
        new = logits if pos is None else logits[:, pos : (pos + 1) or None]
        logp = torch.log_softmax(new.float(), dim=-1)
        r = ref_logp.to(logp.device)
        return (r.exp() * (r - logp)).sum(-1).mean()

    return metric


class PatternDistance(HookSet):
    """Metric on an attention pattern: mean total-variation distance of ``layer``'s pattern rows
    (over batch, heads and query positions) from ``reference`` ``[batch, head, q_pos, k_pos]``.

    It ignores the logits; sweeps attach its hook (it is a HookSet). Conditions at layers
    after ``layer`` cannot change the pattern and get the base value.

    >>> from rope_interp.model.testing import tiny_model
    >>> model, toks = tiny_model(), torch.tensor([[1, 2, 3, 4]])
    >>> ref = PatternDistance.reference(model, toks, layer=1)
    >>> pd = PatternDistance(model, 1, ref)
    >>> with pd:
    ...     logits = model(toks)
    >>> pd(logits).item()
    0.0
    """

    def __init__(self, model: Model, layer: int, reference: Tensor, heads: Sequence[int] | None = None):
        super().__init__(model)
        self.layer = adapter.layers(model, layer)[0]
        self.heads = None if heads is None else adapter.heads(model, heads)
        self.ref = reference if self.heads is None else reference[:, self.heads]
        self._pattern: Tensor | None = None

    @staticmethod
    def reference(model: Model, tokens: Any, layer: int) -> Tensor:
        """The pattern of ``layer`` on ``tokens`` (one forward up to that layer)."""
        store: list[Tensor] = []
        with torch.no_grad():
            model.run_with_hooks(
                adapter.to_tokens(model, tokens),
                stop_at_layer=layer + 1,
                fwd_hooks=[(attn_hook(layer, "pattern"), lambda a, hook: store.append(a.detach().clone()))],
            )
        return store[0]

    def _record(self, act: Tensor, hook: Any) -> None:
        self._pattern = act if self.heads is None else act[:, self.heads]

    def fwd_hooks(self) -> FwdHooks:
        return [(attn_hook(self.layer, "pattern"), self._record)]

    def batched(self, logits: Tensor, n: int) -> Tensor:
        """One value per condition when ``n`` conditions are stacked along the batch."""
        if self._pattern is None:
            raise RopeInterpError(
                f"PatternDistance: layer {self.layer}'s pattern was not recorded in this run"
            )
        p = self._pattern.unflatten(0, (n, -1))
        tv = 0.5 * (p - self.ref.to(p)).abs().sum(-1)
        return tv.flatten(1).mean(1)

    def __call__(self, logits: Tensor) -> Tensor:
        return self.batched(logits, 1)[0]


def metric_values(metric: Metric, logits: Tensor, n: int) -> Tensor:
    """Evaluate ``metric`` on ``n`` conditions stacked along the batch: a float tensor ``[n]``.

    Raises a clear error if the metric does not return a scalar.
    """
    if hasattr(metric, "batched"):
        return metric.batched(logits, n)
    out = []
    for chunk in logits.unflatten(0, (n, -1)):
        v = metric(chunk)
        if isinstance(v, (int, float)):
            v = torch.tensor(float(v), device=logits.device)
        if not isinstance(v, Tensor) or v.ndim != 0:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise RopeInterpError(
                f"metric must return a scalar (0-dim tensor or float), got {shape}; reduce it, e.g. .mean()"
            )
        out.append(v)
    return torch.stack(out).float()
