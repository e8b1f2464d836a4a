"""What every subcommand shares: the common options, their validation, model/text loading, output folders.

Options are validated by argparse types (a bad ``--max-tokens`` or ``--window`` stops
the run before anything is loaded) and by :func:`check_common` before any
computation (a device this torch lacks, a text file that is not UTF-8 text, a bare ``--layers``). Text is never truncated silently: ``--max-tokens`` cuts it with a note
on stderr, and commands that need the whole text in one forward (``sweep``) get the
first ``n_ctx`` tokens with a warning saying how to choose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import ParameterError, RopeInterpError
from ..model.kind import Model
from ..view.output import current_stage


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value}")
        return value

    parse.__name__ = what  # argparse shows it in "invalid <name> value"
    return parse


positive_int = _int_at_least(1, "positive integer")
"""argparse type: an integer >= 1."""
window_size = _int_at_least(2, "window of >= 2 tokens")
"""argparse type: a window of at least two tokens."""
layer_index = _int_at_least(0, "layer index >= 0")
"""argparse type: a layer index (checked against the model once it is loaded)."""


def common_parser() -> argparse.ArgumentParser:
    """The options every subcommand takes (``--model``, ``--text``, ``--max-tokens``, ``--out``...)."""
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
    g.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="analyse only the first N tokens of the text (a note says so)",
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument(
        "--out",
        default=None,
        help="output directory; files are written to a temporary folder and moved there at the end",
    )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    return p


def note(message: str) -> None:
    """A note for the user on stderr (never mixed into stdout tables); under torchrun from rank 0 only."""
    if distributed.is_root():
        print(f"note: {message}", file=sys.stderr)


def check_common(args: argparse.Namespace) -> None:
    """Validate the shared options that need no model (device, text source, output folder); before any work."""
    from ..validate import device

    if getattr(args, "device", None) is not None:
        try:
            device(args.device)
        except RopeInterpError as err:
            raise ParameterError(f"--device: {err}") from None
    for name in ("layers", "bands", "spectra_layers", "sections"):
        if getattr(args, name, None) == []:  # nargs="*" given bare: refused before any work
            flag = "--" + name.replace("_", "-")
            raise ParameterError(f"{flag} was given without any value: name at least one, or leave it out")
    if getattr(args, "text", None) is not None:
        kind, path = _text_source(args.text)
        if path is not None:
            _read_text_file(path)  # a binary or non-UTF-8 file is refused now, not after the model loads
    out = getattr(args, "out", None)
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ParameterError(f"--out {out!r} is a file; give a directory (it is created if missing)")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise ParameterError(f"--out {out!r}: no existing parent directory")


def load_from_args(args: argparse.Namespace) -> Any:
    """The model that ``--model``/``--device``/``--dtype`` name."""
    from ..model.load import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _text_source(text: str) -> tuple[str, Path | None]:
    from ..data import available_texts

    path = Path(text)
    if path.is_file():
        return "file", path
    if text in available_texts():
        return "bundled", None
    raise FileNotFoundError(f"--text {text!r} is neither a file nor a bundled text {available_texts()}")


def text_from_args(args: argparse.Namespace) -> str:
    """The text ``--text`` names (a file or a bundled text), the bundled corpus by default."""
    from ..data import load_text

    if args.text is None:
        return load_text()
    kind, path = _text_source(args.text)
    return _read_text_file(path) if path is not None else load_text(args.text)


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParameterError(
            f"--text {str(path)!r} is not UTF-8 text (byte {err.start} cannot be decoded): give a text file"
        ) from None
    if "\x00" in text:
        raise ParameterError(f"--text {str(path)!r} holds NUL bytes (a binary file?): give a text file")
    return text


def tokens_from_args(model: Model, args: argparse.Namespace, windowed: bool = False):
    """Token ids ``[1, pos]`` of the text, cut to ``--max-tokens`` (with a note).

    ``windowed=True`` (commands that stream over windows) keeps every token; otherwise a
    text longer than the model's context is cut to ``n_ctx`` tokens with a warning.
    """
    text = text_from_args(args)
    if not text.strip():
        raise RopeInterpError("the input text is empty: give a --text with some words in it")
    tokens = model.to_tokens(text, truncate=False)
    n_text = int(tokens.shape[1])
    max_tokens = getattr(args, "max_tokens", None)
    if max_tokens is not None and n_text > max_tokens:
        tokens = tokens[:, :max_tokens]
        note(f"analysing the first {max_tokens} of the text's {n_text} tokens (--max-tokens)")
    n_ctx = int(model.cfg.n_ctx)
    if not windowed and tokens.shape[1] > n_ctx:
        tokens = tokens[:, :n_ctx]
        if distributed.is_root():
            print(
                f"warning: the text has {n_text} tokens, more than the model's context of {n_ctx}: using the "
                f"first {n_ctx} (pass --max-tokens N to choose how many)",
                file=sys.stderr,
            )
    return tokens


def check_layers(n_layers: int, layers: list[int] | None) -> list[int] | None:
    """``--layers`` checked against a model of ``n_layers`` layers (duplicates refused), or None for all.

    >>> check_layers(4, [0, 3])
    [0, 3]
    """
    if layers is None:
        return None
    from ..validate import indices

    n = int(n_layers)
    if not layers:
        raise ParameterError("--layers was given without any layer: name at least one, or leave it out")
    try:
        return indices("layer", layers, n, duplicates=False)
    except RopeInterpError as err:
        raise ParameterError(f"--layers: {err} (the model has layers 0..{n - 1})") from None


def out_dir(args: argparse.Namespace, default: str | None) -> Path:
    """The folder to write into: the run's staging folder (moved to ``--out`` at the end), else created."""
    stage = current_stage()
    if stage is not None:
        return stage.folder()
    where = args.out or default
    if where is None:
        raise ParameterError("this command writes files: pass --out FOLDER")
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path
