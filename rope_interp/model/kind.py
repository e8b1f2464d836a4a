"""The type of a model rope_interp reads: :data:`Model` (for annotations; ``Any`` at run time).

Which kind a given model object is gets decided at run time by :func:`rope_interp.model.adapter.of`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    Model = HookedTransformer | TransformerBridge
    """A TransformerLens ``HookedTransformer`` or ``TransformerBridge``."""
else:
    Model = Any
