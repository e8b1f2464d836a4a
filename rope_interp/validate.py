"""One validation layer for every public entry point.

Every user-facing function checks its inputs here and raises a
:class:`~rope_interp.errors.RopeInterpError` subclass whose message says what was wrong
and how to fix it. Nothing is coerced in a way that could change its meaning: a float,
a bool or a string is never read as an index, duplicates are refused where they would
break an identity, and floats must be finite.

>>> indices("band", [0, -1], 4)
[0, 3]
>>> indices("band", range(2), 4)
[0, 1]
>>> indices("band", [1.5], 4)
Traceback (most recent call last):
...
rope_interp.errors.LayerError: band index must be an integer (int or integer tensor), got 1.5 (float)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .errors import LayerError, ParameterError, RopeInterpError, TokenError


def _as_int(kind: str, v: Any) -> int:
    """One index: ``int``, a numpy integer or a 0-d integer tensor; anything else is refused."""
    if isinstance(v, Tensor):
        if v.ndim != 0 or v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            raise LayerError(
                f"{kind} index must be an integer, got a tensor of dtype {v.dtype} and shape {tuple(v.shape)}"
            )
        return int(v.item())
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        hint = ""
        if isinstance(v, str):
            hint = f"; pass [{v}] or a list of ints, not a string"
        raise LayerError(
            f"{kind} index must be an integer (int or integer tensor), got {v!r} ({type(v).__name__}){hint}"
        )
    return int(v)


def indices(
    kind: str,
    values: Any,
    size: int,
    what: str = "the model",
    *,
    allow_empty: bool = True,
    duplicates: bool = False,
) -> list[int]:
    """Validate one index or a collection of indices; return them as a list of ints in ``0..size-1``.

    ``values``: an int, a sequence / range / set of ints, or an integer tensor or array
    (0-d or 1-d). Negative indices count from the end. Bools, floats, strings and
    duplicates (unless ``duplicates=True``) raise :class:`~rope_interp.errors.LayerError`.

    >>> indices("layer", 2, 4)
    [2]
    >>> indices("head", torch.tensor([0, 1]), 4)
    [0, 1]
    >>> indices("band", [1, 1], 4)
    Traceback (most recent call last):
    ...
    rope_interp.errors.LayerError: band indices must not repeat: [1, 1] lists band 1 more than once
    """
    if isinstance(values, (str, bytes)):
        raise LayerError(
            f"{kind} indices must be integers, got the string {values!r}; pass a list of ints such as [1, 2]"
        )
    if isinstance(values, Tensor) or (hasattr(values, "ndim") and hasattr(values, "dtype")):
        t = torch.as_tensor(values)
        if t.ndim > 1:
            raise LayerError(f"{kind} indices must be a 1-d collection, got shape {tuple(t.shape)}")
        items: list[Any] = [t] if t.ndim == 0 else list(t.unbind(0))
    elif isinstance(values, Iterable):
        items = list(values)
    else:
        items = [values]
    out = []
    for v in items:
        i = _as_int(kind, v)
        if not -size <= i < size:
            raise LayerError(f"{kind} {i} is out of range: {what} has {size} {kind}s (valid: 0..{size - 1})")
        out.append(i % size)
    if not out and not allow_empty:
        raise LayerError(f"no {kind}s selected: pass at least one {kind} index")
    if not duplicates and len(set(out)) != len(out):
        rep = sorted({i for i in out if out.count(i) > 1})
        raise LayerError(
            f"{kind} indices must not repeat: {items if len(items) < 20 else out} lists {kind} "
            f"{', '.join(map(str, rep))} more than once"
        )
    return out


def finite(name: str, value: Any) -> Any:
    """Refuse NaN / inf in a float parameter or tensor (returns ``value`` unchanged).

    >>> finite("delta", 3.0)
    3.0
    >>> finite("delta", float("nan"))
    Traceback (most recent call last):
    ...
    rope_interp.errors.ParameterError: delta must be a finite number, got nan
    """
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            if value.device.type == "meta":
                return value
            if not bool(torch.isfinite(value).all()):
                n = int((~torch.isfinite(value)).sum())
                raise ParameterError(
                    f"{name} must be finite: {n} of its {value.numel()} entries are NaN or inf"
                )
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return value


@overload
def positive_int(name: str, value: Any, *, allow_none: Literal[False] = False, minimum: int = 1) -> int: ...
@overload
def positive_int(name: str, value: Any, *, allow_none: Literal[True], minimum: int = 1) -> int | None: ...
@overload
def positive_int(name: str, value: Any, *, allow_none: bool, minimum: int = 1) -> int | None: ...


def positive_int(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """An integer ``>= minimum`` (bools and floats refused).

    >>> positive_int("window", 512)
    512
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ParameterError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def token_id(what: str, value: Any, d_vocab: int | None = None) -> int:
    """One token id: an integer (not a float, bool or string) ``>= 0`` and, given ``d_vocab``, ``< d_vocab``.

    A negative id is refused (it would silently index the vocabulary from the end).

    >>> token_id("answer", 5, 10)
    5
    >>> token_id("answer", 5.9)
    Traceback (most recent call last):
    ...
    rope_interp.errors.TokenError: answer must be an integer token id, got 5.9 (float)
    >>> token_id("answer", -1)
    Traceback (most recent call last):
    ...
    rope_interp.errors.TokenError: answer must be a token id >= 0, got -1 (a negative id would index the vocabulary from the end)
    """
    try:
        v = _as_int(what, value)
    except LayerError:
        raise TokenError(
            f"{what} must be an integer token id, got {value!r} ({type(value).__name__})"
        ) from None
    if v < 0:
        raise TokenError(
            f"{what} must be a token id >= 0, got {v} (a negative id would index the vocabulary from the end)"
        )
    if d_vocab is not None and v >= d_vocab:
        raise TokenError(f"{what} = {v} is outside the vocabulary (d_vocab = {d_vocab})")
    return v


def token_ids(tokens: Tensor, d_vocab: int, what: str = "tokens") -> Tensor:
    """Refuse token ids outside ``0..d_vocab-1`` (negative ids would silently index from the end).

    >>> token_ids(torch.tensor([[1, 2]]), 10).shape
    torch.Size([1, 2])
    """
    if not isinstance(tokens, Tensor):
        raise TokenError(f"{what} must be a tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.dtype.is_complex:
        raise TokenError(f"{what} must be an integer tensor of token ids, got dtype {tokens.dtype}")
    if tokens.numel() == 0:
        raise TokenError(f"{what} is empty (shape {tuple(tokens.shape)}): pass at least one token")
    if tokens.device.type != "meta":
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            bad = lo if lo < 0 else hi
            raise TokenError(
                f"{what} holds token id {bad}, outside the model's vocabulary 0..{d_vocab - 1}; "
                "tokenize with the model's own tokenizer (model.to_tokens)"
            )
    return tokens


def device(value: Any) -> torch.device:
    """A device this torch build can use: ``cpu``, ``cuda[:i]`` (CUDA available, index in range) or ``mps``.

    Checked before any model loads (torch would fail later with an AssertionError or a long dump).

    >>> device("cpu")
    device(type='cpu')
    >>> device("tpu")
    Traceback (most recent call last):
    ...
    rope_interp.errors.ParameterError: device 'tpu' is not a torch device (expected cpu, cuda, cuda:N or mps)
    """
    if value is None:
        return torch.device("cpu")
    if isinstance(value, torch.device):
        dev = value
    elif isinstance(value, str):
        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError):
            raise ParameterError(
                f"device {value!r} is not a torch device (expected cpu, cuda, cuda:N or mps)"
            ) from None
    else:
        raise ParameterError(
            f"device must be a string or torch.device, got {value!r} ({type(value).__name__})"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                f"device {str(dev)!r}: this torch build has no usable CUDA (torch.cuda.is_available() is "
                "False); use --device cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ParameterError(f"device {str(dev)!r}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ParameterError(f"device {str(dev)!r}: MPS is not available in this torch build; use cpu")
    elif dev.type not in ("cpu", "meta"):
        raise ParameterError(f"device {str(dev)!r} is not supported (expected cpu, cuda, cuda:N or mps)")
    return dev


__all__ = ["RopeInterpError", "device", "finite", "indices", "positive_int", "token_ids"]
