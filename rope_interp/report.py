"""The main job: one offline HTML report of every rope_interp analysis on a model and a text.

``rope-interp report --out DIR`` (embedded SmolLM2-135M and the bundled corpus by
default) writes ``DIR/report.html`` plus the raw tables as CSV and a JSON summary.
By default it reads the first 2,048 tokens (``--max-tokens`` for more) so that it
finishes in minutes on a 2-core CPU; spectra default to the first, middle and last
layers. Sections: the band table; frequency usage (Barbero et al.); positional heads with
their band attribution and ablation check; sink channels; rotary offset features
against the bound (Jonasson; the bound is our derivation); massive values and
their mean-ablation (Jin et al.); spectra and phase alignment (Ruscio et al.); and
interactive circuitsvis views of a top-band vs bottom-band ablation.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SECTIONS = ("bands", "usage", "heads", "sinks", "offsets", "massive", "spectra", "views")


@dataclass
class ReportConfig:
    """What the report analyses. ``quick`` trims tokens and layers for a fast smoke run."""

    window: int = 512
    max_tokens: int | None = 2048
    layers: list[int] | None = None
    spectra_layers: list[int] | None = None
    view_tokens: int = 96
    n_view_bands: int = 8
    sections: tuple[str, ...] = SECTIONS
    progress: bool = True
    quick: bool = False


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _close(fig: Any) -> Any:
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


def build_report(model: Any, tokens: torch.Tensor, out: Path, cfg: ReportConfig, source: str = "") -> Path:
    """Run the analyses and write ``out/report.html`` (+ CSV tables, ``summary.json``). Returns the HTML path."""
    from tqdm.auto import tqdm

    from . import analyses as A
    from .html import save_html_page
    from .interventions import ablate_bands
    from .spec import RotaryBands
    from .vis import ablation_view

    torch.set_grad_enabled(False)
    out.mkdir(parents=True, exist_ok=True)
    spec = RotaryBands.from_model(model)
    if cfg.max_tokens:
        tokens = tokens[:, : cfg.max_tokens]
    n_tok = int(tokens.shape[1])
    kw = dict(layers=cfg.layers, window=cfg.window, progress=cfg.progress)
    sections: list[tuple[str | None, Any]] = []
    summary: dict[str, Any] = {"model": spec.model_name, "tokens": n_tok, "source": source}
    started = time.time()

    def table(name: str, result: Any) -> Any:
        df = result.to_dataframe()
        df.to_csv(out / f"{name}.csv", index=False)
        return df

    def bands() -> None:
        df = spec.to_dataframe(0, context_length=n_tok)
        df.to_csv(out / "bands.csv")
        sections.append(("Rotary bands", _p(spec.describe())))
        sections.append((None, df.style.format("{:.4g}")))

    def usage() -> None:
        res = A.frequency_usage(model, tokens, **kw)
        table("usage", res)
        ratio = res.low_high_ratio("q")
        summary["usage_low_high_ratio_q"] = [round(float(r), 3) for r in ratio]
        sections.append(
            (
                "Frequency usage (Barbero et al.)",
                _p(
                    "Mean band norm of queries, keys and (control) values per layer and band, averaged over heads. "
                    "Values are not rotated by RoPE: a band pattern in q/k that v lacks is RoPE's doing."
                ),
            )
        )
        sections.append((None, _close(res.plot())))

    def heads() -> None:
        res = A.positional_heads(model, tokens, causal_windows=1, **kw)
        df = table("positional_heads", res)
        summary["positional_heads"] = [list(map(float, f)) for f in res.found()][:20]
        sections.append(
            (
                "Positional heads",
                _p(
                    "Diagonal (offset 0) and previous-token (offset 1) heads: mean attention on that offset, the share "
                    "of the score margin built by the highest- vs lowest-frequency bands (exact decomposition), and how "
                    "much of the pattern survives zeroing the top-k highest vs bottom-k lowest bands in that head."
                ),
            )
        )
        sections.append((None, _close(res.plot())))
        sections.append((None, df.sort_values("score", ascending=False).head(15)))

    def sinks() -> None:
        res = A.sink_channels(model, tokens, **kw)
        df = table("sinks", res)
        sections.append(
            (
                "Sink / semantic channels",
                _p(
                    "Per head, the low-frequency bands whose score term separates the first (BOS) key from the others; "
                    "observed terms against the Cauchy-Schwarz bound |q_i||k_i|/scale."
                ),
            )
        )
        sections.append((None, _close(res.plot())))
        sep = (df.bos_term - df.other_term).abs()
        sections.append((None, df.assign(separation=sep).sort_values("separation", ascending=False).head(15)))

    def offsets() -> None:
        L = min(2048, spec.n_ctx)
        res = A.offset_features(model, tokens, context_length=L, **kw)
        table("offsets", res)
        sections.append(
            (
                "Rotary offset features (Jonasson)",
                _p(
                    "Bands where q and k have large, consistent mean vectors. Our derivation: band i keeps one sign of "
                    "its contribution for every causal offset only if theta_i (L-1) < pi, and then only for q-k angles "
                    f"inside an interval of width pi - theta_i (L-1). Predicted bands (here L = {L}) are compared with the "
                    "observed ones, per band over all analysed layers and heads."
                ),
            )
        )
        sections.append((None, _close(res.plot())))
        sections.append((None, res.table()))

    def massive() -> None:
        found = A.massive_values(model, tokens, **kw)
        table("massive", found)
        sections.append(
            (
                "Massive values (Jin et al.)",
                _p(
                    "M[h, d] = L2 norm over the sequence of post-RoPE q/k; massive if M > 5 mean(M). Then the loss with "
                    "those dims mean-ablated against matched controls of as many non-massive dims."
                ),
            )
        )
        sections.append((None, _close(found.plot())))
        abl = A.massive_ablation(model, tokens, found, window=cfg.window, progress=cfg.progress)
        table("massive_ablation", abl)
        sections.append((None, _close(abl.plot())))
        sections.append((None, abl.to_dataframe()))

    def spectra() -> None:
        sections.append(
            (
                "Spectra (Ruscio et al.)",
                _p(
                    "Power spectra over positions of band trajectories, attention rows (energy in the low/mid/high "
                    "thirds of Nyquist; positional vs spectral entropy) and MLP activations (harmonics at integer "
                    "multiples of band frequencies); phase alignment of q and k per band against attention sharpness."
                ),
            )
        )
        n = spec.n_layers
        spectra_kw = dict(kw, layers=cfg.spectra_layers or cfg.layers or sorted({0, n // 2, n - 1}))
        for name, fn in (
            ("band_spectra", A.band_spectra),
            ("attention_spectra", A.attention_spectra),
            ("mlp_spectra", A.mlp_spectra),
            ("phase_alignment", A.phase_alignment),
        ):
            res = fn(model, tokens, **spectra_kw)
            if hasattr(res, "to_dataframe"):
                table(name, res)
            sections.append((None, _close(res.plot())))

    def views() -> None:
        nb = min(cfg.n_view_bands, spec.n_bands // 2)
        top, bottom = list(range(nb)), list(range(spec.n_bands - nb, spec.n_bands))
        layer = _view_layer(summary, spec.n_layers, cfg.layers)
        view_tokens = tokens[:, : cfg.view_tokens]
        sections.append(
            (
                "Interactive attention: top-band vs bottom-band ablation",
                _p(
                    f"Layer {layer}: clean attention, the pattern with the {nb} highest-frequency bands (left) or the "
                    f"{nb} lowest (right) removed from this layer's scores, and the full model under a q/k zero-ablation "
                    "of those bands in every layer; blue = more attention than clean, red = less."
                ),
            )
        )
        for label, bset in (("highest", top), ("lowest", bottom)):
            hooks = ablate_bands(model, bset, target="qk", mode="zero")
            v = ablation_view(
                model, view_tokens, layer, bset, hooks=hooks, hooks_label=f"all layers, {label} bands zeroed"
            )
            sections.append((f"Layer {layer}, {nb} {label}-frequency bands removed", v))

    steps: dict[str, Callable[[], None]] = dict(
        bands=bands,
        usage=usage,
        heads=heads,
        sinks=sinks,
        offsets=offsets,
        massive=massive,
        spectra=spectra,
        views=views,
    )
    bar = tqdm([s for s in SECTIONS if s in cfg.sections], desc="report", disable=not cfg.progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.time()
        steps[name]()
        summary.setdefault("seconds", {})[name] = round(time.time() - t0, 1)
    summary["total_seconds"] = round(time.time() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    header = _p(
        f"Model {spec.model_name or '?'} ({spec.n_layers} layers, {spec.n_heads} heads, {spec.n_kv_heads} kv "
        f"heads, {spec.n_bands} bands); {n_tok} tokens of {source or 'text'}; "
        f"built in {summary['total_seconds']:.0f} s by rope_interp."
    )
    return save_html_page(out / "report.html", [(None, header), *sections], title="rope_interp report")


def _view_layer(summary: dict, n_layers: int, layers: list[int] | None) -> int:
    """The layer of the strongest positional head found, else layer 1 (or the first analysed)."""
    found = summary.get("positional_heads") or []
    if found:
        return int(max(found, key=lambda f: f[-1])[0])
    if layers:
        return layers[0]
    return min(1, n_layers - 1)


# ---- CLI ---------------------------------------------------------------------------------------------
def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        parents=parents,
        help="the full HTML report (the main job)",
        description="Run every analysis and write one offline HTML report (embedded SmolLM2 + bundled corpus "
        "by default). Example: rope-interp report --out report/",
    )
    p.add_argument("--layers", type=int, nargs="*", default=None, help="layers to analyse (default: all)")
    p.add_argument("--window", type=int, default=512, help="tokens per analysis window (default %(default)s)")
    p.add_argument(
        "--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS, help="sections to include"
    )
    p.add_argument("--quick", action="store_true", help="a fast smoke run: 256 tokens, 4 layers")
    p.add_argument(
        "--spectra-layers",
        type=int,
        nargs="*",
        default=None,
        help="layers for the spectral section (default: first, middle, last)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .cli import load_from_args, out_dir, tokens_from_args

    model = load_from_args(args)
    tokens = tokens_from_args(model, args)
    cfg = ReportConfig(
        window=args.window,
        layers=args.layers,
        sections=tuple(args.sections),
        progress=not args.no_progress,
        quick=args.quick,
        spectra_layers=args.spectra_layers,
    )
    if args.max_tokens:
        cfg.max_tokens = args.max_tokens
    if args.quick:
        cfg.max_tokens = args.max_tokens or 256
        cfg.window = min(cfg.window, 256)
        cfg.layers = cfg.layers or [0, 1, model.cfg.n_layers // 2, model.cfg.n_layers - 1]
        cfg.view_tokens = 48
    path = build_report(model, tokens, out_dir(args, "report"), cfg, source=args.text or "the bundled corpus")
    print(f"wrote {path}")
    return 0
