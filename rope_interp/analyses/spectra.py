"""The registered ``spectrum`` analysis: the four measures of :mod:`.spectral` (Ruscio et al.) as one record.

The measures (and their public functions ``band_spectra``, ``attention_spectra``,
``mlp_spectra``, ``phase_alignment``) are defined in :mod:`.spectral`. Here each one
is also an :class:`~rope_interp.analyses.stream.Accumulator`, built from :mod:`.spectral`'s
own pure helpers (``psd``, ``row_spectrum_stats``, ``corr_from_sums``...), so that the
report computes all four in the shared pass; ``tests/test_engine.py`` checks that
they equal the public functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import MergeError
from ..model import adapter
from ..model.hooks import FwdHooks, attn_hook, mlp_hook
from ..model.layout import RotaryBands
from . import spectral
from .inputs import layer_list, prefix_mean
from .registry import Analysis, Block, Option, RunContext, literal_choices
from .spectral import _add_sums, _entropy, _nfft, corr_from_sums, psd, row_spectrum_stats
from .stream import Accumulator

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


# ---- accumulators (the shared-pass form of spectral.py's four functions) ---------------------------------
class _SumsMerge(Accumulator):
    """Merge by adding every tensor / number attribute listed in ``_sums``."""

    _sums: tuple[str, ...] = ()

    def merge(self, other: Any) -> Any:
        if other.layers != self.layers:
            raise ValueError(
                f"cannot merge {type(self).__name__} over layers {other.layers} into {self.layers}"
            )
        mine, theirs = getattr(self, "nfft", None), getattr(other, "nfft", None)
        if mine and theirs and mine != theirs:
            raise MergeError(
                f"cannot merge {type(self).__name__} computed with nfft={theirs} into one with nfft={mine}: "
                "pass the same nfft (or the same first window) to both"
            )
        if not mine and theirs:
            self.nfft = theirs
        for name in self._sums:
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a[k] + v if k in a else v
            else:
                setattr(self, name, a + b)
        return self


class BandSpectraAccumulator(_SumsMerge):
    """:func:`.spectral.band_spectra` in the shared pass."""

    _sums = ("acc", "n")

    def __init__(self, model: Any, layers: list[int], nfft: int | None = None):
        self.layers = self.pair_layers = list(layers)
        self.theta = RotaryBands.from_model(model).freqs[self.layers].float()
        self.nfft, self.n = nfft, 0
        self.acc: dict[tuple[str, int], Tensor] = {}

    def configure(self, tokens: Tensor) -> None:
        self.nfft = self.nfft or _nfft(tokens.shape[1])  # from the stream's first window, on every rank

    def accepts(self, tokens: Tensor) -> bool:
        n = tokens.shape[1]
        self.nfft = self.nfft or _nfft(n)
        if n > self.nfft:
            raise ValueError(f"window of {n} tokens is longer than nfft={self.nfft}; pass a larger nfft")
        return True

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        for name, x in (("q", q), ("k", k)):
            z = torch.complex(x[..., 0].double(), x[..., 1].double()).movedim(1, -1)  # [b, h, B, pos]
            p = psd(z, self.nfft).mean((0, 1))
            key = (name, self.layers.index(layer))
            self.acc[key] = self.acc[key] + p if key in self.acc else p

    def observe(self, tokens: Tensor) -> None:
        self.n += 1

    def finalize(self) -> spectral.BandSpectra:
        def stack(s: str) -> Tensor:
            # per-layer sums live on their layer's device (a model split over GPUs): gather on the CPU
            return torch.stack([self.acc[s, i].cpu() for i in range(len(self.layers))]).float() / self.n

        return spectral.BandSpectra(
            stack("q"), stack("k"), self.theta, self.layers, int(self.nfft or 0), self.n
        )


class AttentionSpectraAccumulator(_SumsMerge):
    """:func:`.spectral.attention_spectra` in the shared pass."""

    _sums = ("energy", "sums")

    def __init__(self, model: Any, layers: list[int], min_row: int = 32, row_stride: int = 8):
        self.layers = list(layers)
        self.min_row, self.row_stride = min_row, row_stride
        H, dev = adapter.n_heads(model), adapter.device(model)
        self.energy = torch.zeros(len(layers), H, 3, dtype=torch.float64, device=dev)
        self.sums = torch.zeros(6, len(layers), H, dtype=torch.float64, device=dev)

    def _on_pattern(self, pat: Tensor, hook: Any, i: int) -> Tensor:
        for m in range(self.min_row, pat.shape[-2], self.row_stride):
            e, hp, hs = row_spectrum_stats(pat[:, :, m, : m + 1])
            self.energy[i] += e.sum(0)
            _add_sums(self.sums[:, i], hp, hs, (0,))
        return pat

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, "pattern"), lambda p, hook, i=i: self._on_pattern(p, hook, i))
            for i, layer in enumerate(self.layers)
        ]

    def finalize(self) -> spectral.AttentionSpectra:
        n = self.sums[0, 0, 0].item() if len(self.layers) else 0
        if n == 0:
            raise ValueError(
                f"no query row at position >= min_row={self.min_row}: use longer windows or a smaller min_row"
            )
        s = self.sums.cpu()
        return spectral.AttentionSpectra(
            (self.energy.cpu() / n).float(),
            (s[1] / n).float(),
            (s[2] / n).float(),
            corr_from_sums(s).float(),
            self.layers,
            int(n),
        )


class MLPSpectraAccumulator(_SumsMerge):
    """:func:`.spectral.mlp_spectra` in the shared pass."""

    _sums = ("acc", "n")

    def __init__(self, model: Any, layers: list[int], nfft: int | None = None, harmonics: int = 3):
        self.layers = list(layers)
        self.theta = RotaryBands.from_model(model).freqs[self.layers].float()
        self.nfft, self.harmonics, self.n, self.len = nfft, harmonics, 0, 0
        self.acc: dict[tuple[int, int], Tensor] = {}

    def configure(self, tokens: Tensor) -> None:
        self.nfft = self.nfft or _nfft(tokens.shape[1])  # from the stream's first window, on every rank

    def accepts(self, tokens: Tensor) -> bool:
        n = tokens.shape[1]
        self.nfft = self.nfft or _nfft(n)
        self.len = max(self.len, n)
        if n > self.nfft:
            raise ValueError(f"window of {n} tokens is longer than nfft={self.nfft}; pass a larger nfft")
        return True

    def _on_mlp(self, x: Tensor, hook: Any, key: tuple[int, int]) -> Tensor:
        y = x.detach().double()
        y = (y - y.mean(1, keepdim=True)).movedim(1, -1)  # [b, d_mlp, pos]
        p = psd(y, self.nfft).mean((0, 1))
        self.acc[key] = self.acc[key] + p if key in self.acc else p
        return x

    def fwd_hooks(self) -> FwdHooks:
        return [
            (mlp_hook(layer, site), lambda x, hook, k=(i, s): self._on_mlp(x, hook, k))
            for i, layer in enumerate(self.layers)
            for s, site in enumerate(("pre", "post"))
        ]

    def observe(self, tokens: Tensor) -> None:
        self.n += 1

    def merge(self, other: Any) -> Any:
        self.len = max(self.len, other.len)
        return super().merge(other)

    def finalize(self) -> spectral.MLPSpectra:
        L = len(self.layers)
        out = torch.stack([torch.stack([self.acc[i, s].cpu() for s in range(2)]) for i in range(L)]).float()
        return spectral.MLPSpectra(
            out / self.n, self.theta, self.layers, int(self.nfft or 0), self.harmonics, window_len=self.len
        )


class PhaseAlignmentAccumulator(_SumsMerge):
    """:func:`.spectral.phase_alignment` in the shared pass."""

    _sums = ("s_ent", "s_max")

    def __init__(self, model: Any, layers: list[int], start_pos: int = 1):
        self.layers = self.pair_layers = list(layers)
        self.spec = RotaryBands.from_model(model)
        self.start_pos = start_pos
        dev = adapter.device(model)
        L, H, B = len(layers), self.spec.n_heads, self.spec.n_bands
        self.s_ent = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
        self.s_max = torch.zeros(6, L, H, B, dtype=torch.float64, device=dev)
        self.held: dict[int, Tensor] = {}

    @staticmethod
    def _unit(x: Tensor) -> Tensor:
        z = torch.complex(x[..., 0].double(), x[..., 1].double())
        return z / z.abs().clamp_min(1e-30)

    def on_pair(self, layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        uk = self._unit(k[:, :, self.spec.kv_map.to(k.device)])
        self.held[layer] = (self._unit(q) * prefix_mean(uk).conj()).real[:, self.start_pos :]  # [b, m, h, B]

    def _on_pattern(self, pat: Tensor, hook: Any, layer: int) -> Tensor:
        a = self.held.pop(layer)
        p = pat[:, :, self.start_pos :].double()
        ent = _entropy(p).transpose(1, 2)[..., None].expand_as(a)  # [b, m, h, B]
        mx = p.amax(-1).transpose(1, 2)[..., None].expand_as(a)
        i = self.layers.index(layer)
        _add_sums(self.s_ent[:, i], a, ent, (0, 1))
        _add_sums(self.s_max[:, i], a, mx, (0, 1))
        return pat

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, "pattern"), lambda p, hook, layer=layer: self._on_pattern(p, hook, layer))
            for layer in self.layers
        ]

    def finalize(self) -> spectral.PhaseAlignment:
        se, sm = self.s_ent.cpu(), self.s_max.cpu()
        n = int(se[0, 0, 0, 0])
        if n == 0:
            raise ValueError(f"no query at position >= start_pos={self.start_pos}")
        return spectral.PhaseAlignment(
            (se[1] / n).float(), corr_from_sums(se).float(), corr_from_sums(sm).float(), self.layers, n
        )


ACCUMULATORS = {
    "bands": BandSpectraAccumulator,
    "attention": AttentionSpectraAccumulator,
    "mlp": MLPSpectraAccumulator,
    "phase": PhaseAlignmentAccumulator,
}


def _start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    layers = spectra_layers(ctx.model, ctx.layers, opts["spectra_layers"])
    return [ACCUMULATORS[p](ctx.model, layers) for p in opts["parts"]]


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list[Accumulator]) -> Spectra:
    layers = spectra_layers(ctx.model, ctx.layers, opts["spectra_layers"])
    return Spectra({p: acc.finalize() for p, acc in zip(opts["parts"], accs, strict=True)}, layers)


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
    from ..view.html import paragraph

    blocks: list[Block] = [(None, paragraph(ANALYSIS.description + f" Layers {r.layers}."))]
    for p, res in r.parts.items():  # each measure says which paper version it follows, or that it is ours
        blocks += [(None, spectral.provenance_html(NAMES[p])), (None, res.plot())]
    return blocks


NAMES = {
    "bands": "band_spectra",
    "attention": "attention_spectra",
    "mlp": "mlp_spectra",
    "phase": "phase_alignment",
}
"""Each part's public function, table and provenance name (:data:`.spectral.PROVENANCE`)."""


def _tables(r: Spectra) -> dict[str, Any]:
    return {NAMES[p]: res.to_dataframe() for p, res in r.parts.items()}


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
    start=_start,
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
