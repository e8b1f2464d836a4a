"""The subcommands as objects: ``bands``, ``summary``, one per registered analysis and ``report``; the
``sweep`` and ``patch`` commands are in :mod:`rope_interp.cli.sweeps`.

A :class:`Command` adds its parser (``add_to``) and runs (``run(args) -> exit code``);
``default_out`` is the folder it writes into when ``--out`` is not given (None: it
writes files only with ``--out``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..analyses.registry import Analysis
from ..model.kind import Model
from .common import (
    check_layers,
    layer_index,
    load_from_args,
    out_dir,
    positive_int,
    tokens_from_args,
    window_size,
)

Parents = list[argparse.ArgumentParser]


class Command:
    """One ``rope-interp`` subcommand."""

    name: str = ""
    default_out: str | None = None

    def add_to(self, sub: Any, parents: Parents) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    def out_for(self, args: argparse.Namespace) -> str | None:
        """Where this run writes: ``--out``, else :attr:`default_out` (None: nowhere)."""
        return args.out or self.default_out


def _parser(sub: Any, parents: Parents, cmd: Command, help: str, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: `patch --mode shift` must not be read as --model
    p = sub.add_parser(cmd.name, parents=parents, help=help, description=description, allow_abbrev=False)
    p.set_defaults(command_obj=cmd)
    return p


# ---- bands ------------------------------------------------------------------------------------------------
class BandsCommand(Command):
    name = "bands"

    def add_to(self, sub: Any, parents: Parents) -> None:
        p = _parser(
            sub,
            parents,
            self,
            "Table of the model's rotary bands",
            "Print each band's dims, frequency, wavelength and cycles over a context.",
        )
        p.add_argument(
            "--layer", type=layer_index, default=0, help="layer whose frequencies to show (default 0)"
        )
        p.add_argument(
            "--context", type=positive_int, default=None, help="context length for the cycles column"
        )
        p.add_argument("--csv", default=None, help="also write the table to this CSV file")

    def run(self, args: argparse.Namespace) -> int:
        import pandas as pd

        from ..model.layout import RotaryBands

        spec = RotaryBands.from_model(load_from_args(args))
        check_layers(spec.n_layers, [args.layer])
        print(spec.describe())
        df = spec.to_dataframe(args.layer, args.context)
        # every column, whatever the terminal width (a pipe has none: pandas would elide columns to "...")
        with pd.option_context(
            "display.max_rows",
            None,
            "display.max_columns",
            None,
            "display.width",
            None,
            "display.float_format",
            "{:.6g}".format,
        ):
            print(df.to_string())
        if args.csv:
            df.to_csv(args.csv)
            print(f"wrote {args.csv}")
        return 0


# ---- summary ----
def band_share(model: Model, tokens: Any, layer: int, window: int | None = 512, chunk_size: int = 128):
    """Share of each band in the mean ``|score term|`` of ``layer`` over causal pairs, streamed over
    windows of ``window`` tokens and chunks of ``chunk_size`` queries: ``[band]``, sums to 1.

    Memory is one chunk, ``[batch, head, band, chunk_size, window]``, whatever the text length.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = band_share(tiny_model(), torch.randint(0, 50, (1, 40)), 0, window=16, chunk_size=4)
    >>> tuple(s.shape), round(float(s.sum()), 6)
    ((8,), 1.0)
    """
    from ..analyses.inputs import iter_windows
    from ..read.decompose import iter_band_scores

    total = None
    for w in iter_windows(model, tokens, window):
        for bs in iter_band_scores(model, w, layer, chunk_size=chunk_size):
            weight = float(bs.causal_mask().sum()) * bs.per_band.shape[0]
            part = bs.mean_abs().mean(0).double().cpu() * weight
            total = part if total is None else total + part
    assert total is not None
    return total / total.sum()


class SummaryCommand(Command):
    """Per-band share of attention scores, streamed: windows of text, chunks of queries (bounded memory)."""

    name = "summary"

    def add_to(self, sub: Any, parents: Parents) -> None:
        p = _parser(
            sub,
            parents,
            self,
            "Per-band share of each layer's attention scores",
            "Exact per-band decomposition of attention scores on a text, summarised per layer. Streams over "
            "windows of --window tokens and chunks of --chunk-size queries, so memory does not grow with the text.",
        )
        p.add_argument(
            "--layers", type=layer_index, nargs="*", default=None, help="layers (default: 0, middle, last)"
        )
        p.add_argument(
            "--window", type=window_size, default=None, help="tokens per window (default: min(512, n_ctx))"
        )
        p.add_argument(
            "--chunk-size", type=positive_int, default=128, help="queries per chunk (default %(default)s)"
        )

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from ..model.layout import RotaryBands

        model = load_from_args(args)
        spec = RotaryBands.from_model(model)
        layers = check_layers(model.cfg.n_layers, args.layers) or sorted(
            {0, spec.n_layers // 2, spec.n_layers - 1}
        )
        tokens = tokens_from_args(model, args, windowed=True)
        print(spec.describe())
        print(f"{tokens.shape[1]} tokens; share of mean |score term| per band (bands 0 = highest frequency)")
        result = {}
        for layer in layers:
            share = band_share(
                model, tokens, layer, args.window or min(512, model.cfg.n_ctx), args.chunk_size
            )
            top = torch.argsort(share, descending=True)[:5].tolist()
            q = spec.n_bands // 4
            high_freq, low_freq = share[:q].sum().item(), share[-q:].sum().item()
            print(
                f"layer {layer:3d}: top bands {top}  highest-quarter share {high_freq:.2f}  "
                f"lowest-quarter share {low_freq:.2f}"
            )
            result[layer] = share.tolist()
        if args.out:
            path = out_dir(args, args.out) / "summary.json"
            records = [{"layer": layer, "band_share": s} for layer, s in result.items()]
            path.write_text(json.dumps({"tokens": int(tokens.shape[1]), "layers": records}, indent=1))
            print(f"wrote {args.out}/summary.json")
        return 0


# ---- one command per registered analysis -----------------------------------------------------------------
class AnalysisCommand(Command):
    """``rope-interp <analysis>``: run one registered analysis, write its tables, figure and JSON summary."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.name = analysis.name
        self.default_out = f"rope_interp_out/{analysis.name}"

    def add_to(self, sub: Any, parents: Parents) -> None:
        a = self.analysis
        p = _parser(sub, parents, self, a.help, a.description)
        p.add_argument(
            "--layers", type=layer_index, nargs="*", default=None, help="layers to analyse (default: all)"
        )
        p.add_argument(
            "--window", type=window_size, default=None, help="tokens per window (default: min(512, n_ctx))"
        )
        g = p.add_argument_group(f"{a.name} options")
        for opt in a.options:
            opt.add_to(g)

    def run(self, args: argparse.Namespace) -> int:
        from ..analyses.registry import run

        a = self.analysis
        opts = a.options_with({o.name: getattr(args, o.name) for o in a.options})
        model = load_from_args(args)
        layers = check_layers(model.cfg.n_layers, args.layers)
        tokens = tokens_from_args(model, args, windowed=True)
        result = run(
            model,
            tokens,
            {a.name: opts},
            layers=layers,
            window=args.window or min(512, model.cfg.n_ctx),
            progress=not args.no_progress,
        )[a.name]
        out = out_dir(args, self.default_out)
        written = write_tables(a, result, out)
        for i, (_, item) in enumerate(b for b in a.section(result) if hasattr(b[1], "savefig")):
            path = out / (f"{a.name}.png" if i == 0 else f"{a.name}_{i}.png")
            item.savefig(path, dpi=110, bbox_inches="tight")
            _close(item)
            written.append(path.name)
        (out / f"{a.name}.json").write_text(json.dumps(a.summary(result), indent=1, default=float))
        written.append(f"{a.name}.json")
        for sentence in a.findings(result):
            print(sentence)
        print(f"{tokens.shape[1]} tokens analysed; wrote {', '.join(written)} into {self.out_for(args)}")
        return 0


def write_tables(a: Analysis, result: Any, out: Any) -> list[str]:
    """Write the analysis' tables as CSV files into ``out``; returns the file names."""
    names = []
    for name, df in a.tables(result).items():
        df.to_csv(out / f"{name}.csv", index=False)
        names.append(f"{name}.csv")
    return names


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---- report -----------------------------------------------------------------------------------------------
class ReportCommand(Command):
    name = "report"
    default_out = "report"

    def add_to(self, sub: Any, parents: Parents) -> None:
        from ..analyses.registry import analyses
        from ..analyses.report import FIXED_SECTIONS

        choices = [FIXED_SECTIONS[0], *(a.name for a in analyses()), *FIXED_SECTIONS[1:]]
        p = _parser(
            sub,
            parents,
            self,
            "The full HTML report (the main job)",
            "Run every analysis in one shared pass and write one offline HTML report (embedded SmolLM2 + bundled "
            "corpus by default; the first 2,048 tokens unless --max-tokens). Example: rope-interp report --out report/",
        )
        p.add_argument(
            "--layers", type=layer_index, nargs="*", default=None, help="layers to analyse (default: all)"
        )
        p.add_argument(
            "--window", type=window_size, default=None, help="tokens per window (default: min(512, n_ctx))"
        )
        p.add_argument("--sections", nargs="*", default=choices, choices=choices, help="sections to include")
        p.add_argument("--quick", action="store_true", help="a fast smoke run: 256 tokens, 4 layers")
        p.add_argument(
            "--spectra-layers",
            type=layer_index,
            nargs="*",
            default=None,
            help="layers for the spectral section (default: first, middle, last)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from ..analyses.report import ReportConfig, build_report

        if not args.sections:
            from ..errors import ParameterError

            raise ParameterError("--sections was given without any section: name some, or leave it out")
        model = load_from_args(args)
        layers = check_layers(model.cfg.n_layers, args.layers)
        spectra_layers = check_layers(model.cfg.n_layers, args.spectra_layers)
        cfg = ReportConfig(
            window=args.window or min(512, model.cfg.n_ctx),
            layers=layers,
            sections=tuple(args.sections),
            progress=not args.no_progress,
            spectra_layers=spectra_layers,
        )
        if args.quick:
            n = model.cfg.n_layers
            cfg.max_tokens = 256
            cfg.window = min(cfg.window or 512, 256)
            cfg.layers = cfg.layers or sorted({0, 1 % n, n // 2, n - 1})
            cfg.view_tokens = 48
        if args.max_tokens:
            cfg.max_tokens = args.max_tokens
        tokens = tokens_from_args(model, args, windowed=True)
        if cfg.max_tokens and tokens.shape[1] > cfg.max_tokens:
            from .common import note

            note(
                f"the report reads the first {cfg.max_tokens} of the text's {tokens.shape[1]} tokens "
                "(--max-tokens N for more)"
            )
        path = build_report(
            model, tokens, out_dir(args, self.default_out), cfg, source=args.text or "the bundled corpus"
        )
        print(f"wrote {self.out_for(args)}/{path.name}")
        return 0


# ---- sweep / patch (defined in rope_interp.cli.sweeps) ---------------------------------------------------
