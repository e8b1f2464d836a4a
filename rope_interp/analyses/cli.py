"""CLI subcommands of the analyses: ``rope-interp usage|heads|sinks|offsets|massive|spectrum``.

Each writes a JSON summary, CSV table(s) and PNG figure(s) into ``--out``
(default ``rope_interp_out/<command>``) and prints a short summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTIONS = {
    "usage": "Frequency usage (Barbero et al.): mean |q_i|, |k_i| and (control) |v_i| per layer, head and band.",
    "heads": "Positional heads: diagonal / previous-token scores, the bands building them, ablation check.",
    "sinks": "Sink channels: per head, the bands separating the BOS key, observed vs Cauchy-Schwarz bound.",
    "offsets": "Rotary offset features (Jonasson) against the bound theta*(L-1) < pi (our derivation).",
    "massive": "Massive values (Jin et al.): M > lambda*mean(M) in post-RoPE q/k, and mean-ablation vs control.",
    "spectrum": "Spectra (Ruscio et al.): band trajectories, attention rows, MLP activations, phase alignment.",
}


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    for name, desc in DESCRIPTIONS.items():
        p = sub.add_parser(name, parents=parents, help=desc.split(":")[0].lower(), description=desc)
        p.add_argument("--layers", type=int, nargs="*", default=None, help="layers to analyse (default: all)")
        p.add_argument("--window", type=int, default=512, help="tokens per window (default %(default)s)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if name == "heads":
            p.add_argument(
                "--threshold",
                type=float,
                default=0.5,
                help="positional score threshold (default %(default)s)",
            )
            p.add_argument(
                "--ablate-k", type=int, default=4, help="bands zeroed in the causal check (0 = skip)"
            )
            p.add_argument("--causal-windows", type=int, default=2, help="windows used by the causal check")
        if name == "offsets":
            p.add_argument(
                "--context", type=int, default=None, help="context length L of the bound (default n_ctx)"
            )
            p.add_argument("--min-consistency", type=float, default=0.9)
            p.add_argument("--spike", type=float, default=10.0, help="strength over the head's median band")
        if name == "massive":
            p.add_argument(
                "--lam", type=float, default=5.0, help="lambda of the M > lambda*mean(M) criterion"
            )
            p.add_argument("--n-control", type=int, default=2, help="random matched controls")
            p.add_argument("--no-ablation", action="store_true", help="skip the loss experiment")
        if name == "spectrum":
            p.add_argument(
                "--parts",
                nargs="*",
                default=["bands", "attention", "mlp", "phase"],
                choices=["bands", "attention", "mlp", "phase"],
            )
        p.set_defaults(func=_run, analysis=name)


def _save(out: Path, stem: str, result: Any, summary: dict, fig_kwargs: dict | None = None) -> list[str]:
    written = []
    if hasattr(result, "to_dataframe"):
        path = out / f"{stem}.csv"
        result.to_dataframe().to_csv(path, index=False)
        written.append(str(path))
    fig = result.plot(**(fig_kwargs or {}))
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    written.append(str(path))
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=float))
    written.append(str(out / f"{stem}.json"))
    return written


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import load_from_args, out_dir, tokens_from_args

    torch.set_grad_enabled(False)
    model = load_from_args(args)
    tokens = tokens_from_args(model, args)
    out = out_dir(args, f"rope_interp_out/{args.analysis}")
    kw = dict(layers=args.layers, window=args.window, progress=not args.no_progress)
    written = RUNNERS[args.analysis](model, tokens, args, kw, out)
    print(f"{tokens.shape[1]} tokens analysed; wrote " + ", ".join(written))
    return 0


def _usage(model, tokens, args, kw, out) -> list[str]:
    from .usage import frequency_usage

    r = frequency_usage(model, tokens, **kw)
    summary = {
        "n_tokens": r.n_tokens,
        "layers": r.layers,
        "argmax_band_q": r.per_layer("q").argmax(-1).tolist(),
        "argmax_band_k": r.per_layer("k").argmax(-1).tolist(),
        "low_high_quarter_ratio": {s: r.low_high_ratio(s).tolist() for s in ("q", "k", "v")},
    }
    print(
        "lowest/highest-quarter norm ratio (q):",
        [round(x, 2) for x in summary["low_high_quarter_ratio"]["q"]],
    )
    return _save(out, "usage", r, summary)


def _heads(model, tokens, args, kw, out) -> list[str]:
    from .heads import positional_heads

    r = positional_heads(
        model,
        tokens,
        threshold=args.threshold,
        ablate_k=args.ablate_k or None,
        causal_windows=args.causal_windows,
        **kw,
    )
    found = r.found()
    for layer, h, o, s in found:
        print(f"layer {layer} head {h}: offset {o} score {s:.3f}")
    summary = {"n_tokens": r.n_tokens, "threshold": r.threshold, "found": found, "causal": r.causal}
    return _save(out, "heads", r, summary)


def _sinks(model, tokens, args, kw, out) -> list[str]:
    from .sinks import sink_channels

    r = sink_channels(model, tokens, **kw)
    ch = r.channels(top=1)
    ch.to_csv(out / "sink_channels.csv", index=False)
    top = ch.sort_values("bos_attention", ascending=False).head(10)
    print(top.to_string(index=False))
    summary = {"n_tokens": r.n_tokens, "top_sink_heads": top.to_dict(orient="records")}
    return _save(out, "sinks", r, summary) + [str(out / "sink_channels.csv")]


def _offsets(model, tokens, args, kw, out) -> list[str]:
    from .offsets import offset_features

    r = offset_features(
        model,
        tokens,
        context_length=args.context,
        min_consistency=args.min_consistency,
        spike=args.spike,
        **kw,
    )
    t = r.table()
    t.to_csv(out / "offsets_table.csv")
    print(t.to_string())
    summary = {
        "n_tokens": r.n_tokens,
        "context_length": r.context_length,
        "predicted_bands": r.predicted[0].nonzero().flatten().tolist(),
        "table": t.reset_index().to_dict(orient="records"),
    }
    return _save(out, "offsets", r, summary) + [str(out / "offsets_table.csv")]


def _massive(model, tokens, args, kw, out) -> list[str]:
    from .massive import massive_ablation, massive_values

    r = massive_values(model, tokens, lam=args.lam, **kw)
    summary: dict[str, Any] = {
        "n_tokens": r.n_tokens,
        "lam": r.lam,
        "n_massive": {s: int(r.massive(s).sum()) for s in ("q", "k")},
        "band_counts": {s: r.band_counts(s).tolist() for s in ("q", "k")},
    }
    print(f"massive entries: q {summary['n_massive']['q']}, k {summary['n_massive']['k']}")
    written = _save(out, "massive", r, summary)
    if not args.no_ablation and (summary["n_massive"]["q"] or summary["n_massive"]["k"]):
        kw_ab = {k: v for k, v in kw.items() if k != "layers"}
        ab = massive_ablation(model, tokens, r, n_control=args.n_control, **kw_ab)
        print(ab.to_dataframe().to_string(index=False))
        summary["ablation"] = ab.to_dataframe().to_dict(orient="records")
        written += _save(out, "massive_ablation", ab, summary)
    return written


def _spectrum(model, tokens, args, kw, out) -> list[str]:
    from . import spectral

    funcs = {
        "bands": spectral.band_spectra,
        "attention": spectral.attention_spectra,
        "mlp": spectral.mlp_spectra,
        "phase": spectral.phase_alignment,
    }
    written: list[str] = []
    summary: dict[str, Any] = {}
    for part in args.parts:
        r = funcs[part](model, tokens, **kw)
        if part == "attention":
            summary["attention_energy_by_layer"] = r.energy.mean(1).tolist()
            summary["rho_across_heads"] = r.rho_across_heads().tolist()
        if part == "mlp":
            h = r.harmonic_table()
            summary["mlp_harmonic_peaks"] = int(h["peak"].sum()) if len(h) else 0
        written += _save(out, f"spectrum_{part}", r, {"part": part, **summary})
    return written


RUNNERS = {
    "usage": _usage,
    "heads": _heads,
    "sinks": _sinks,
    "offsets": _offsets,
    "massive": _massive,
    "spectrum": _spectrum,
}
