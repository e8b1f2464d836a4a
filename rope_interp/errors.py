"""Errors raised by rope_interp: one class per kind of mistake, all ``ValueError``s.

Each message says what was wrong and what would be right, so a user can fix the
call without reading rope_interp's source.
"""

from __future__ import annotations


class RopeInterpError(ValueError):
    """Base class of every error rope_interp raises for bad input."""


class NotAModelError(RopeInterpError, TypeError):
    """Something that is not a TransformerLens model where a model was expected."""


class NotRotaryError(RopeInterpError):
    """The model does not use rotary positional embeddings."""


class LayerError(RopeInterpError, IndexError):
    """A layer, head or band index that the model does not have."""


class SiteError(RopeInterpError, KeyError):
    """A hook site that is unknown, or that a capture / statistics object did not record."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MergeError(RopeInterpError):
    """Two statistics objects whose layouts differ (layers, sites, heads, bands, model...)."""


class HookStateError(RopeInterpError, RuntimeError):
    """Hook contexts used in a way that would remove or apply the wrong hooks (non-LIFO exit, threads)."""


class ContextLengthError(RopeInterpError):
    """Tokens longer than the model's context window."""


class ModelNotAvailableError(RopeInterpError, ImportError):
    """A model that cannot be loaded here (a package or file is missing)."""


class ParameterError(RopeInterpError):
    """A parameter with a wrong type or value (NaN / inf, a non-integer count, a negative size)."""


class TokenError(RopeInterpError):
    """Token ids that are not valid input for the model (outside its vocabulary, empty, wrong dtype)."""


class PaddingError(RopeInterpError):
    """A padded batch where padding would be counted as real tokens."""


class UselessInterventionError(RopeInterpError):
    """An intervention that provably changes nothing (e.g. the same shift on q and k)."""


class ReplayMismatchError(RopeInterpError):
    """A saved spec replayed on a model other than the one it records (name, config, weights or dtype)."""


class ModelMismatchError(ModelNotAvailableError):
    """A converted model that would compute something other than its source checkpoint (e.g. a rope scaling
    TransformerLens drops); raised by ``load_model`` instead of returning a different network."""


class OutputError(RopeInterpError):
    """An output folder that cannot be written safely (a file there that rope_interp did not write)."""
