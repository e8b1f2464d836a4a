"""The ``rope-interp`` command line.

Subcommands are :class:`~rope_interp.cli.commands.Command` objects (:func:`all_commands`):
``bands``, ``summary``, one per registered analysis (:mod:`rope_interp.registry`;
an analysis registered at run time gets its command too), ``report``, and ``sweep`` /
``patch`` from :mod:`rope_interp.sweeps_cli`. Shared options (``--model``, ``--text``,
``--max-tokens``, ``--device``, ``--dtype``, ``--out``) live in
:func:`~rope_interp.cli.common.common_parser` and are validated before any work.
Files go to a staging folder moved into ``--out`` only when the command succeeds
(:mod:`rope_interp.cli.output`). Errors print one line, not a traceback
(``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import AnalysisCommand, BandsCommand, Command, ParserCommands, ReportCommand, SummaryCommand
from .common import common_parser, load_from_args, out_dir, text_from_args, tokens_from_args
from .output import StagedOutput

EXAMPLES = """examples:
  rope-interp bands                           # band table of the embedded SmolLM2-135M
  rope-interp summary --layers 0 15 29        # per-band share of attention scores
  rope-interp report --out report             # every analysis, one offline HTML page
  rope-interp bands --model path/to/model.gguf --csv bands.csv
"""


def all_commands() -> list[Command]:
    """Every subcommand, in ``--help`` order (the registry is read now, so late registrations count)."""
    from .. import sweeps_cli
    from ..registry import analyses

    return [
        BandsCommand(),
        SummaryCommand(),
        *(AnalysisCommand(a) for a in analyses()),
        ParserCommands(sweeps_cli.add_parser, {"sweep": "rope-interp-sweep", "patch": "rope-interp-patch"}),
        ReportCommand(),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rope-interp",
        description="See and change what a rotary TransformerLens model does with each RoPE band.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [common_parser()]
    for cmd in all_commands():
        cmd.add_to(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .common import check_common

    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command | None = getattr(args, "command_obj", None)
    if cmd is None:
        parser.print_help()
        return 0
    try:
        check_common(args)
        dest = cmd.out_for(args)
        if dest is None:
            return int(cmd.run(args) or 0)
        with StagedOutput(dest):
            return int(cmd.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for users; --traceback for developers
        if getattr(args, "traceback", False):
            raise
        print(f"rope-interp {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


__all__ = [
    "EXAMPLES",
    "build_parser",
    "all_commands",
    "common_parser",
    "load_from_args",
    "main",
    "out_dir",
    "text_from_args",
    "tokens_from_args",
]

if __name__ == "__main__":
    sys.exit(main())
