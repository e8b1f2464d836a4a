"""The ``rope-interp`` command line.

Subcommands are :class:`~rope_interp.cli.commands.Command` objects (:func:`all_commands`):
``bands``, ``summary``, one per registered analysis (:mod:`rope_interp.analyses.registry`;
an analysis registered at run time gets its command too), ``report``, and ``sweep`` /
``patch`` from :mod:`rope_interp.cli.sweeps`. Shared options (``--model``, ``--text``,
``--max-tokens``, ``--device``, ``--dtype``, ``--out``, ``--no-progress``, ``--traceback``) live in
:func:`~rope_interp.cli.common.common_parser` and are validated before any work.
Files go to a staging folder moved into ``--out`` only when the command succeeds
(:mod:`rope_interp.view.output`). Errors print one line, not a traceback
(``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager, redirect_stdout

from .. import distributed
from ..view.output import StagedOutput
from .commands import AnalysisCommand, BandsCommand, Command, ReportCommand, SummaryCommand
from .common import common_parser, load_from_args, out_dir, text_from_args, tokens_from_args
from .sweeps import PatchCommand, SweepCommand

EXAMPLES = """examples:
  rope-interp bands                           # band table of the embedded SmolLM2-135M
  rope-interp summary --layers 0 15 29        # per-band share of attention scores
  rope-interp report --out report             # every analysis, one offline HTML page
  rope-interp bands --model path/to/model.gguf --csv bands.csv
"""


def all_commands() -> list[Command]:
    """Every subcommand, in ``--help`` order (the registry is read now, so late registrations count)."""
    from ..analyses.registry import analyses

    return [
        BandsCommand(),
        SummaryCommand(),
        *(AnalysisCommand(a) for a in analyses()),
        SweepCommand(),
        PatchCommand(),
        ReportCommand(),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rope-interp",
        description="See and change what a rotary TransformerLens model does with each RoPE band.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [common_parser()]
    for cmd in all_commands():
        cmd.add_to(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rope-interp`` command; returns its exit code.

    Under ``torchrun`` the process joins the group, and when the command ends it leaves the
    group and exits at once with that code (``os._exit`` after flushing): gloo's worker threads
    can abort an interpreter that shuts down normally after a peer failed.
    """
    state: dict[str, bool] = {}
    code = _main(argv, state)
    if state.get("joined"):
        distributed.leave()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None, state: dict[str, bool]) -> int:
    from .common import check_common

    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: Command | None = getattr(args, "command_obj", None)
    if cmd is None:
        parser.print_help()
        return 0
    try:
        with _terminate_as_exit():
            check_common(args)
            state["joined"] = _join(args)  # under torchrun: one rank of a data-parallel run
            with _quiet_unless_root():
                dest = cmd.out_for(args)
                if dest is None:
                    code = int(cmd.run(args) or 0)
                    distributed.agree(None, "the command")
                    return code
                with StagedOutput(dest):  # under torchrun: every rank agrees before rank 0 commits
                    return int(cmd.run(args) or 0)
    except KeyboardInterrupt:
        print(f"interrupted{_where()}", file=sys.stderr)
        return 130
    except Exception as err:  # one line for users; --traceback for developers
        err = _tell_other_ranks(err)
        if getattr(args, "traceback", False):
            raise
        print(f"rope-interp {args.command}: error{_where()}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _join(args) -> bool:
    """Join torchrun's process group when launched by it; the device becomes this rank's own."""
    if distributed.world() is None and not distributed.launched():
        return False
    already = distributed.world() is not None
    distributed.init(device=getattr(args, "device", None))
    if hasattr(args, "device"):
        args.device = distributed.local_device(args.device)
    return not already


def _where() -> str:
    w = distributed.world()
    return "" if w is None else f" on rank {w.rank} of {w.size}"


def _tell_other_ranks(err: Exception) -> Exception:
    """Under torchrun, report ``err`` to every rank (unless they know already); returns what to print."""
    if distributed.world() is None or distributed.reported(err):
        return err
    try:
        distributed.agree(err, "the command")
    except distributed.RankFailedError as failed:
        return failed
    return err


@contextmanager
def _quiet_unless_root():
    """Standard output only from rank 0 (errors still print on every rank, on stderr)."""
    if distributed.is_root():
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        yield


@contextmanager
def _terminate_as_exit():
    """SIGTERM (torchrun stopping the other workers, a scheduler's kill) unwinds like Ctrl-C, so staging
    folders are removed; the previous handler is restored afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
