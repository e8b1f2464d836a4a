"""rope_interp: see and change what a rotary TransformerLens model does with each RoPE band.

This module is the flat public API. The package's folders are its layers, each importing only
from itself and the layers below (README "Architecture"; checked by ``tests/test_layers.py``):
``errors`` → ``validate`` → ``bands`` → ``distributed`` → ``progress`` → ``model/`` (the only
folder touching TransformerLens) → ``read/`` (capture, decomposition) → ``intervene/`` (modes,
ablations) → ``sweep/`` (grids, tiers, patching, specs) → ``view/`` (HTML, circuitsvis) →
``analyses/`` (the papers, the report) → ``cli/``.
"""

from . import analyses, data
from .bands import band_dims, band_norms, band_view, from_bands, pass_view, rotate
from .errors import (
    ContextLengthError,
    HookStateError,
    LayerError,
    MergeError,
    ModelMismatchError,
    ModelNotAvailableError,
    NotAModelError,
    NotRotaryError,
    OutputError,
    PaddingError,
    ParameterError,
    ReplayMismatchError,
    RopeInterpError,
    SiteError,
    TokenError,
    UselessInterventionError,
)
from .intervene.ablate import BandIntervention, ablate_bands, prope
from .intervene.modes import MODE_TABLE
from .model.bridge import BridgeRotaryHooksError
from .model.compat import StackWarning
from .model.hooks import attn_hook, mlp_hook
from .model.layout import RotaryBands
from .model.load import load_model
from .read.capture import BandActivation, BandCapture, BandStats, band_hooks
from .read.decompose import BandScores, band_score_terms, band_scores, iter_band_scores
from .sweep.patching import (
    MaskedBands,
    PatternDistance,
    SweepResult,
    kl_metric,
    logit_diff,
    loss_metric,
    patch_layer_band,
    patch_layer_band_pos,
    patch_layer_head_band,
    patch_sweep,
)
from .sweep.spec import InterventionSpec, SweepSpec
from .sweep.tiers import (
    ablated_patterns,
    ablation_sweep,
    attribution_sweep,
    direct_effect_sweep,
    exact_sweep,
    naive_sweep,
    qk_attribution_sweep,
    refine_sweep,
    run_sweep,
)
from .view.explore import Explorer, explore

__all__ = [
    "StackWarning",
    "ModelMismatchError",
    "ReplayMismatchError",
    "TokenError",
    "SiteError",
    "PaddingError",
    "OutputError",
    "NotAModelError",
    "MergeError",
    "HookStateError",
    "BandActivation",
    "BandCapture",
    "BandIntervention",
    "BandScores",
    "BandStats",
    "BridgeRotaryHooksError",
    "ContextLengthError",
    "InterventionSpec",
    "LayerError",
    "MODE_TABLE",
    "MaskedBands",
    "ModelNotAvailableError",
    "NotRotaryError",
    "ParameterError",
    "PatternDistance",
    "RopeInterpError",
    "RotaryBands",
    "SweepResult",
    "SweepSpec",
    "UselessInterventionError",
    "ablate_bands",
    "ablated_patterns",
    "ablation_sweep",
    "attn_hook",
    "attribution_sweep",
    "mlp_hook",
    "band_dims",
    "band_hooks",
    "band_norms",
    "band_score_terms",
    "band_scores",
    "band_view",
    "analyses",
    "data",
    "direct_effect_sweep",
    "exact_sweep",
    "explore",
    "Explorer",
    "from_bands",
    "iter_band_scores",
    "kl_metric",
    "load_model",
    "logit_diff",
    "loss_metric",
    "naive_sweep",
    "pass_view",
    "patch_layer_band",
    "patch_layer_band_pos",
    "patch_layer_head_band",
    "patch_sweep",
    "prope",
    "qk_attribution_sweep",
    "refine_sweep",
    "run_sweep",
    "rotate",
]
