"""Errors raised by rope_interp: one class per kind of mistake, all ``ValueError``s.

Each message says what was wrong and what would be right, so a user can fix the
call without reading rope_interp's source.
"""

from __future__ import annotations


class RopeInterpError(ValueError):
    """Base class of every error rope_interp raises for bad input."""


class NotRotaryError(RopeInterpError):
    """The model does not use rotary positional embeddings."""


class LayerError(RopeInterpError, IndexError):
    """A layer, head or band index that the model does not have."""


class ContextLengthError(RopeInterpError):
    """Tokens longer than the model's context window."""


class ModelNotAvailableError(RopeInterpError, ImportError):
    """A model that cannot be loaded here (a package or file is missing)."""


def check_index(kind: str, values: list[int], size: int, what: str = "the model") -> list[int]:
    """Validate integer indices (negatives count from the end) and return them normalised.

    >>> check_index("layer", [0, -1], 4)
    [0, 3]
    """
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                v = int(v)  # numpy / torch integer scalars
            except (TypeError, ValueError):
                raise LayerError(f"{kind} index must be an integer, got {v!r}") from None
        if not -size <= v < size:
            raise LayerError(f"{kind} {v} is out of range: {what} has {size} {kind}s (valid: 0..{size - 1})")
        out.append(v % size)
    return out
