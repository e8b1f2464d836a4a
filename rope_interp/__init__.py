"""rope_interp: see and change what a rotary TransformerLens model does with each RoPE band."""

from .bands import band_dims, band_norms, band_view, from_bands, pass_view, rotate
from .capture import BandActivation, BandCapture, BandStats, band_hooks
from .decompose import BandScores, band_score_terms, band_scores, iter_band_scores
from .errors import ContextLengthError, LayerError, ModelNotAvailableError, NotRotaryError, RopeInterpError
from .hooks import attn_hook
from .models import load_model
from .spec import RotaryBands

__all__ = [
    "BandActivation",
    "BandCapture",
    "BandScores",
    "BandStats",
    "ContextLengthError",
    "LayerError",
    "ModelNotAvailableError",
    "NotRotaryError",
    "RopeInterpError",
    "RotaryBands",
    "attn_hook",
    "band_dims",
    "band_hooks",
    "band_norms",
    "band_score_terms",
    "band_scores",
    "band_view",
    "from_bands",
    "iter_band_scores",
    "load_model",
    "pass_view",
    "rotate",
]
