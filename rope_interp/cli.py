"""The ``rope-interp`` command line.

Subcommands register themselves through :data:`COMMANDS`: each entry is a module
exposing ``add_parser(subparsers, parents) -> None`` which sets ``func=`` on its
parser; ``func(args)`` returns an exit code. Shared options (``--model``,
``--text``, ``--device``, ``--dtype``, ``--out``) live in :func:`common_parser`
and :func:`load_from_args` loads what they name. Errors print one line, not a
traceback (``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  rope-interp bands                           # band table of the embedded SmolLM2-135M
  rope-interp summary --layers 0 5 29         # per-band share of attention scores
  rope-interp bands --model path/to/model.gguf --csv bands.csv
"""

# modules providing add_parser(subparsers, parents); optional ones may not exist yet
COMMANDS: list[str] = [
    "rope_interp.cli",  # bands, summary (below)
    "rope_interp.analyses.cli",
    "rope_interp.sweeps_cli",
    "rope_interp.report",
]


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and input")
    g.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded name, .gguf path, HF directory or TransformerLens name (default: %(default)s)",
    )
    g.add_argument(
        "--text",
        default=None,
        help="a text file to analyse, or a bundled text name (default: the bundled corpus)",
    )
    g.add_argument("--max-tokens", type=int, default=None, help="truncate the text to this many tokens")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--out", default=None, help="output directory for JSON/CSV/PNG files")
    g.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    return p


def load_from_args(args: argparse.Namespace) -> Any:
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def text_from_args(args: argparse.Namespace) -> str:
    from .data import available_texts, load_text

    if args.text is None:
        return load_text()
    path = Path(args.text)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if args.text in available_texts():
        return load_text(args.text)
    raise FileNotFoundError(f"--text {args.text!r} is neither a file nor a bundled text {available_texts()}")


def tokens_from_args(model: Any, args: argparse.Namespace):
    text = text_from_args(args)
    if not text.strip():
        raise ValueError("the input text is empty")
    tokens = model.to_tokens(text)
    if args.max_tokens is not None:
        tokens = tokens[:, : args.max_tokens]
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        tokens = tokens[:, :n_ctx]
        print(f"note: text truncated to the model's context of {n_ctx} tokens", file=sys.stderr)
    return tokens


def out_dir(args: argparse.Namespace, default: str) -> Path:
    path = Path(args.out or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- built-in subcommands ------------------------------------------------------------------------------
def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bands",
        parents=parents,
        help="table of the model's rotary bands",
        description="Print each band's dims, frequency, wavelength and cycles over a context.",
    )
    p.add_argument("--layer", type=int, default=0, help="layer whose frequencies to show (default 0)")
    p.add_argument("--context", type=int, default=None, help="context length for the cycles column")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=_cmd_bands)

    p = sub.add_parser(
        "summary",
        parents=parents,
        help="per-band share of each layer's attention scores",
        description="Exact per-band decomposition of attention scores on a text, summarised per layer.",
    )
    p.add_argument("--layers", type=int, nargs="*", default=None, help="layers (default: 0, middle, last)")
    p.set_defaults(func=_cmd_summary)


def _cmd_bands(args: argparse.Namespace) -> int:
    import pandas as pd

    from .spec import RotaryBands

    spec = RotaryBands.from_model(load_from_args(args))
    print(spec.describe())
    df = spec.to_dataframe(args.layer, args.context)
    with pd.option_context(
        "display.max_rows", None, "display.width", 200, "display.float_format", "{:.6g}".format
    ):
        print(df)
    if args.csv:
        df.to_csv(args.csv)
        print(f"wrote {args.csv}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from .decompose import band_scores
    from .spec import RotaryBands

    model = load_from_args(args)
    tokens = tokens_from_args(model, args)
    spec = RotaryBands.from_model(model)
    layers = args.layers or sorted({0, spec.n_layers // 2, spec.n_layers - 1})
    print(spec.describe())
    print(f"{tokens.shape[1]} tokens; share of mean |score term| per band (bands 0 = highest frequency)")
    result = {}
    for layer in layers:
        bs = band_scores(model, tokens, layer)
        share = bs.mean_abs().mean(0)
        share = share / share.sum()
        top = torch.argsort(share, descending=True)[:5].tolist()
        q = spec.n_bands // 4
        high_freq, low_freq = share[:q].sum().item(), share[-q:].sum().item()
        print(
            f"layer {layer:3d}: top bands {top}  highest-quarter share {high_freq:.2f}  lowest-quarter share {low_freq:.2f}"
        )
        result[layer] = share.tolist()
    if args.out:
        path = out_dir(args, args.out) / "summary.json"
        path.write_text(json.dumps({"tokens": tokens.shape[1], "band_share": result}, indent=1))
        print(f"wrote {path}")
    return 0


# ---- entry point ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rope-interp",
        description="See and change what a rotary TransformerLens model does with each RoPE band.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [common_parser()]
    for name in COMMANDS:
        try:
            module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # optional command module not built yet
            raise
        module.add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for users; --traceback for developers
        if getattr(args, "traceback", False):
            raise
        print(f"rope-interp {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
