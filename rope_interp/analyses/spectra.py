"""The registered ``spectrum`` analysis: the four measures of :mod:`.spectral` (Ruscio et al.) as one record.

The measures themselves (and their public functions ``band_spectra``,
``attention_spectra``, ``mlp_spectra``, ``phase_alignment``) live in :mod:`.spectral`;
this module only says how the CLI and the report run and show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine import Accumulator
from ..registry import Analysis, Block, Option, RunContext, literal_choices
from . import spectral
from .inputs import layer_list

Part = Literal["bands", "attention", "mlp", "phase"]
"""The spectral measures: band trajectories, attention rows, MLP activations, phase alignment."""

FUNCTIONS = {
    "bands": spectral.band_spectra,
    "attention": spectral.attention_spectra,
    "mlp": spectral.mlp_spectra,
    "phase": spectral.phase_alignment,
}


@dataclass
class Spectra:
    """Results of the chosen spectral measures, by part name."""

    parts: dict[str, Any] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)


def spectra_layers(model: Any, layers: list[int] | None, chosen: list[int] | None) -> list[int]:
    """``chosen``, else the first, middle and last of ``layers`` (default: all the model's layers)."""
    if chosen:
        return layer_list(model, chosen)
    pool = layer_list(model, layers)
    return sorted({pool[0], pool[len(pool) // 2], pool[-1]})


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list[Accumulator]) -> Spectra:
    layers = spectra_layers(ctx.model, ctx.layers, opts["spectra_layers"])
    kw = dict(layers=layers, window=ctx.window, progress=ctx.progress)
    return Spectra({p: FUNCTIONS[p](ctx.model, ctx.data, **kw) for p in opts["parts"]}, layers)


def _summary(r: Spectra) -> dict[str, Any]:
    out: dict[str, Any] = {"layers": r.layers}
    a = r.parts.get("attention")
    if a is not None:
        rho = a.rho_across_heads().tolist()
        e = a.energy.mean(1).tolist()
        out["attention"] = [
            {
                "layer": layer,
                "low": round(e[i][0], 4),
                "mid": round(e[i][1], 4),
                "high": round(e[i][2], 4),
                "rho_across_heads": round(rho[i], 4),
            }
            for i, layer in enumerate(a.layers)
        ]
    m = r.parts.get("mlp")
    if m is not None:
        h = m.harmonic_table()
        out["mlp_harmonic_peaks"] = int(h["peak"].sum()) if len(h) else 0
    return out


def _findings(r: Spectra) -> list[str]:
    a = r.parts.get("attention")
    if a is None:
        return []
    e = a.energy.mean(1)
    rho = a.rho_across_heads()
    return [
        f"Spectra: the share of attention-row energy in the lowest third of frequencies goes from "
        f"{float(e[0, 0]):.2f} in layer {a.layers[0]} to {float(e[-1, 0]):.2f} in layer {a.layers[-1]}; across "
        f"heads, positional and spectral entropy correlate with ρ between {float(rho.min()):.2f} and "
        f"{float(rho.max()):.2f} (Ruscio et al. report −0.42 to −0.74)."
    ]


def _section(r: Spectra) -> list[Block]:
    from ..html import paragraph

    return [(None, paragraph(ANALYSIS.description + f" Layers {r.layers}."))] + [
        (None, res.plot()) for res in r.parts.values()
    ]


def _tables(r: Spectra) -> dict[str, Any]:
    names = {
        "bands": "band_spectra",
        "attention": "attention_spectra",
        "mlp": "mlp_spectra",
        "phase": "phase_alignment",
    }
    return {names[p]: res.to_dataframe() for p, res in r.parts.items()}


ANALYSIS = Analysis(
    name="spectrum",
    title="Spectra (Ruscio et al.)",
    help="Spectra (Ruscio et al.): band trajectories, attention rows, MLP activations, phase alignment",
    description=(
        "Power spectra over positions of band trajectories, attention rows (energy in the low/mid/high thirds of "
        "Nyquist; positional vs spectral entropy) and MLP activations (harmonics at integer multiples of band "
        "frequencies); phase alignment of q and k per band against attention sharpness (Ruscio et al., Beyond "
        "position: how rotary embeddings shape representations and memory, 2025)."
    ),
    finish=_finish,
    options=(
        Option(
            "parts",
            str,
            list(literal_choices(Part)),
            "measures to run",
            choices=literal_choices(Part),
            many=True,
        ),
        Option(
            "spectra_layers", int, None, "layers (default: first, middle and last analysed layer)", many=True
        ),
    ),
    summary=_summary,
    summary_doc={
        "layers": "layers of the spectral measures",
        "attention": "records per layer: energy share in the low/mid/high thirds of Nyquist, rho_across_heads",
        "mlp_harmonic_peaks": "MLP harmonics of band frequencies above 3x the local median",
    },
    findings=_findings,
    tables=_tables,
    section=_section,
)
