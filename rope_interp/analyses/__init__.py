"""The papers' analyses, one module each, all streaming over windows of text.

* :mod:`.usage` — frequency usage (Barbero et al.): mean band norms of q, k and v.
* :mod:`.heads` — positional (diagonal / previous-token) heads, their bands, a causal check.
* :mod:`.sinks` — sink / semantic channels: bands separating the BOS key, vs Cauchy–Schwarz bounds.
* :mod:`.offsets` — rotary offset features (Jonasson) against our frequency bound.
* :mod:`.massive` — massive values (Jin et al.) and their mean-ablation vs a matched control.
* :mod:`.spectral` — spectra of band trajectories (ours), attention rows (Ruscio v3/v4 style, our cut points), MLP activations and observational phase alignment (ours; see ``spectral.PROVENANCE``).
* :mod:`.carrier` — θ_i lines in the sink attention and the MLP input (ours; precondition of Ruscio v1/v2).
* :mod:`.harmonics` — harmonic generation in the real FFN under a synthetic rotating drive (Ruscio v1/v2 claim).
* :mod:`.alignment` — phase alignment, causally: shift one band of one head by Δφ (Ruscio v1/v2 claim).
* :mod:`.synthetic` — the papers' constructions checked numerically.
* :mod:`.induction` — induction heads and their circuit through the bands.
* :mod:`.entropy` — frequency entropy of band query norms, extremes ablated against matched controls.

Every analysis takes ``(model, data, ...)`` where ``data`` is text, token ids or an
iterable of batches (:func:`.inputs.iter_windows`), shows a tqdm bar
(``progress=False`` hides it) and returns a small dataclass with ``.plot()``.

Each one is also an :class:`~rope_interp.analyses.stream.Accumulator` (its state in one shared
streaming pass, with ``merge()``) and a registered record (``ANALYSIS`` at the end of
its module, registered below in report order) that the CLI and the report loop over; see
:mod:`rope_interp.analyses.registry`. The registry imports no analysis: this package
registers the built-ins when it is imported (as SAELens' package ``__init__`` does).
"""

from . import (
    alignment,
    carrier,
    entropy,
    harmonics,
    heads,
    induction,
    massive,
    offsets,
    sinks,
    spectral,
    usage,
)
from .alignment import CausalAlignment, WeightedAlignment, causal_alignment, weighted_alignment
from .carrier import CarrierLines, CarrierSurvey, carrier_lines, carrier_survey
from .entropy import FrequencyEntropy, frequency_entropy
from .harmonics import FFNHarmonics, ffn_harmonics
from .heads import PositionalHeads, causal_check, positional_heads
from .induction import InductionCircuit, InductionHeads, induction_circuit, induction_heads
from .inputs import EmptyInputError, iter_windows
from .massive import MassiveAblation, MassiveValues, MeanAblateDims, massive_ablation, massive_values
from .offsets import OffsetFeatures, offset_features, predicted_bands, sign_stable
from .registry import register as _register
from .sinks import SinkChannels, sink_channels
from .spectral import (
    AttentionSpectra,
    BandSpectra,
    MLPSpectra,
    PhaseAlignment,
    attention_spectra,
    band_spectra,
    mlp_spectra,
    phase_alignment,
)
from .synthetic import diagonal_head_sharpness, nonlinearity_harmonics, rotary_decay
from .usage import FrequencyUsage, frequency_usage

# The built-ins, in report order; the CLI gets a ``rope-interp <name>`` subcommand and the report a section.
for _module in (
    usage,
    heads,
    sinks,
    offsets,
    massive,
    spectral,
    induction,
    entropy,
    carrier,
    harmonics,
    alignment,
):
    _register(_module.ANALYSIS)

__all__ = [
    "AttentionSpectra",
    "CarrierLines",
    "CausalAlignment",
    "CarrierSurvey",
    "BandSpectra",
    "EmptyInputError",
    "FFNHarmonics",
    "FrequencyEntropy",
    "FrequencyUsage",
    "InductionCircuit",
    "InductionHeads",
    "MLPSpectra",
    "MassiveAblation",
    "MassiveValues",
    "MeanAblateDims",
    "OffsetFeatures",
    "PhaseAlignment",
    "PositionalHeads",
    "SinkChannels",
    "WeightedAlignment",
    "attention_spectra",
    "band_spectra",
    "carrier_lines",
    "carrier_survey",
    "causal_alignment",
    "causal_check",
    "diagonal_head_sharpness",
    "ffn_harmonics",
    "frequency_entropy",
    "frequency_usage",
    "induction_circuit",
    "induction_heads",
    "iter_windows",
    "massive_ablation",
    "massive_values",
    "mlp_spectra",
    "nonlinearity_harmonics",
    "offset_features",
    "phase_alignment",
    "positional_heads",
    "predicted_bands",
    "rotary_decay",
    "sign_stable",
    "sink_channels",
    "weighted_alignment",
]
