"""CLI subcommands ``sweep`` (intervene on each band of each layer, any mode) and ``patch``
(clean→corrupted band patching), registered in :func:`rope_interp.cli.all_commands`.

Both build a :class:`~rope_interp.sweep.spec.SweepSpec` (or read one with ``--spec FILE``), run it,
and write ``<name>.csv`` (one row per condition), ``<name>.png`` (heatmap) and
``<name>.spec.json`` (the spec and the result, so a figure can be traced to what was done)
to ``--out``, then print the conditions with the largest effect. Choices for ``--mode``,
``--target`` and ``--method`` come from the Literals in :mod:`rope_interp.intervene.modes`.

    rope-interp sweep --max-tokens 64 --layers 0 5 10 --method exact
    rope-interp sweep --mode no_rotation --method refine
    rope-interp sweep --mode shift --delta 5            # keys as if 5 positions later
    rope-interp patch --clean "The capital of France is" --corrupted "The capital of Italy is" \\
        --answer " Paris" --wrong " Rome"
    rope-interp sweep --spec out/sweep.spec.json         # rerun exactly what was done
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..intervene.modes import METHODS, MODES, TARGETS
from ..model.kind import Model
from .commands import Command, Parents, _parser

PER = {
    "layer-band": ("layer", "band"),
    "layer-head-band": ("layer", "head", "band"),
    "layer-band-pos": ("layer", "band", "pos"),
}


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default=None, help="run this JSON SweepSpec (written by an earlier run) instead")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="layers to sweep (default: all)")
    p.add_argument("--bands", type=int, nargs="*", default=None, help="bands to sweep (default: all)")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help="change queries, keys or both (default: qk; k for --mode shift)",
    )
    p.add_argument(
        "--per", choices=sorted(PER), default=None, help="grid of conditions (default: layer-band)"
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="exact: prefix reuse + batching; naive: one forward per condition; attribution: gradient "
        "estimate; qk_attribution: exact pattern change × gradient (AtP*); refine: estimates with the "
        "top cells exact (default: exact)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="conditions per forward (exact, refine)")
    p.add_argument(
        "--refine-top", type=int, default=None, help="cells the refine tier makes exact (default: 20)"
    )
    p.add_argument("--top", type=int, default=10, help="print this many strongest conditions")


class SweepCommand(Command):
    """``rope-interp sweep``: intervene on each band of each layer (any mode) and measure the loss change.

    >>> from rope_interp.cli.common import common_parser
    >>> parser = argparse.ArgumentParser()
    >>> SweepCommand().add_to(parser.add_subparsers(dest="command"), [common_parser()])
    >>> args = parser.parse_args(["sweep", "--layers", "0", "3", "--per", "layer-head-band", "--mode", "no_rotation"])
    >>> _check_args(args)  # fills in the defaults (None until then: a flag beside --spec is refused)
    >>> args.layers, PER[args.per], args.method, args.mode, args.command_obj.out_for(args)
    ([0, 3], ('layer', 'head', 'band'), 'exact', 'no_rotation', 'rope-interp-sweep')
    """

    name = "sweep"
    default_out = "rope-interp-sweep"

    def add_to(self, sub: Any, parents: Parents) -> None:
        p = _parser(
            sub,
            parents,
            self,
            "intervene on each band of each layer (zero, mean, no_rotation, shift, scale_freq); loss change",
            "Intervene on one RoPE band at a time (per layer, optionally per head / position) and measure the "
            "change of next-token loss on the text. Writes sweep.csv, sweep.png and sweep.spec.json.",
        )
        p.add_argument("--mode", choices=MODES, default=None, help="what each cell gets (default: zero)")
        p.add_argument("--delta", type=float, default=None, help="shift: positions")
        p.add_argument("--phase", type=float, default=None, help="shift: radians")
        p.add_argument(
            "--factor", type=float, default=None, help="scale_freq: the band turns at factor × theta"
        )
        _selection_options(p)

    def run(self, args: argparse.Namespace) -> int:
        return _cmd_sweep(args)


class PatchCommand(Command):
    """``rope-interp patch``: patch each band from a clean prompt into a corrupted one (logit difference)."""

    name = "patch"
    default_out = "rope-interp-patch"

    def add_to(self, sub: Any, parents: Parents) -> None:
        p = _parser(
            sub,
            parents,
            self,
            "patch bands from a clean prompt into a corrupted one",
            "Band activation patching: copy each band of hook_rot_q/rot_k from the clean run into the "
            "corrupted run and measure logit(answer) - logit(wrong) at the last position. "
            "The prompts must have the same number of tokens. Writes patch.csv, patch.png and patch.spec.json.",
        )
        p.add_argument("--clean", default=None, help="clean prompt (required unless --spec)")
        p.add_argument("--corrupted", default=None, help="corrupted prompt (same token count)")
        p.add_argument("--answer", default=None, help="the clean answer token, e.g. ' Paris'")
        p.add_argument("--wrong", default=None, help="the corrupted answer token, e.g. ' Rome'")
        _selection_options(p)

    def run(self, args: argparse.Namespace) -> int:
        return _cmd_patch(args)


DEFAULTS = {"per": "layer-band", "method": "exact", "refine_top": 20, "mode": "zero"}
"""The selection flags' defaults, filled in by :func:`_check_args` (they parse as None)."""

SELECTION = (
    "layers", "bands", "target", "per", "method", "batch_size", "refine_top", "mode", "delta", "phase",
    "factor", "clean", "corrupted", "answer", "wrong", "text", "max_tokens",
)  # fmt: skip
"""Flags that say what to run: a ``--spec`` says that itself, so they are refused beside it."""


def _check_args(args: argparse.Namespace) -> None:
    """Validate options before any model is loaded or file written; fill in the defaults."""
    from ..errors import ParameterError
    from ..validate import finite, positive_int

    if args.spec is not None:
        given = ["--" + k.replace("_", "-") for k in SELECTION if getattr(args, k, None) not in (None, False)]
        if given:
            raise ParameterError(
                f"--spec says what to run; {', '.join(given)} cannot change it: leave them out, or drop --spec "
                "and give the whole sweep as flags"
            )
        from pathlib import Path

        if not Path(args.spec).is_file():
            raise ParameterError(f"--spec {args.spec!r} is not a file")
    for k, v in DEFAULTS.items():
        if hasattr(args, k) and getattr(args, k) is None:
            setattr(args, k, v)
    for name in ("batch_size", "refine_top", "top"):
        positive_int("--" + name.replace("_", "-"), getattr(args, name), allow_none=True)
    for name in ("delta", "phase", "factor"):
        v = getattr(args, name, None)
        if v is not None:
            finite("--" + name, v)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.batch_size is not None and args.method in ("exact", "refine"):
        opts["batch_size"] = args.batch_size
    if args.method == "refine":
        opts["top"] = args.refine_top
    return opts


def _load_spec(args: argparse.Namespace):
    from ..sweep.spec import SweepSpec

    return SweepSpec.from_file(args.spec)


def _write(result: Any, args: argparse.Namespace, name: str, title: str) -> None:
    from ..sweep.spec import write_result
    from .common import out_dir

    folder = out_dir(args, f"rope-interp-{name}")  # the command's default_out
    df = result.to_dataframe()
    df.to_csv(folder / f"{name}.csv", index=False)
    write_result(result, folder / f"{name}.spec.json")
    fig = result.plot(title=title)
    fig.savefig(folder / f"{name}.png", dpi=120)
    order = df["effect"].abs().sort_values(ascending=False).index[: args.top]
    print(f"base metric {result.base:.4f}; strongest {len(order)} conditions ({result.method}):")
    print(df.loc[order].to_string(index=False, float_format="{:.4f}".format))
    final = Path(
        args.command_obj.out_for(args)
    )  # where the files are after the commit, not the staging folder
    print(f"wrote {final / (name + '.csv')}, {name}.png and {name}.spec.json")


def _run(args: argparse.Namespace, check: Callable[[], None], build: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The spec (``--spec FILE``, else ``check()`` before the model loads and ``build(model)`` after) and
    its result."""
    from .common import load_from_args

    _check_args(args)
    spec = _load_spec(args) if args.spec is not None else None  # validated before the model loads
    if spec is None:
        check()
    model = load_from_args(args)
    spec = build(model) if spec is None else spec
    return spec, spec.run(model, progress=not args.no_progress)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..intervene.modes import row
    from ..model.fingerprint import fingerprint
    from ..sweep.spec import SweepSpec
    from .common import tokens_from_args

    params = {k: getattr(args, k) for k in ("delta", "phase", "factor") if getattr(args, k) is not None}

    def check() -> None:
        mode = row(args.mode)
        mode.check_params(params, mode.resolve_target(args.target), symmetric_qk=args.per != "layer-band-pos")

    def build(model: Model) -> SweepSpec:
        return SweepSpec(
            tokens=tokens_from_args(model, args).tolist(),
            metric={"name": "loss"},
            per=list(PER[args.per]),
            method=args.method,
            mode=args.mode,
            params=params,
            target=args.target,
            layers=args.layers,
            bands=args.bands,
            options=_options(args),
            model=fingerprint(model),
        )

    spec, result = _run(args, check, build)
    what = "patched clean→corrupted" if spec.kind == "patch" else f"{spec.mode or 'zero'} on one band"
    _write(result, args, "sweep", f"metric change, {what} ({result.extra.get('target')})")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from ..errors import ParameterError
    from ..model.fingerprint import fingerprint
    from ..sweep.spec import SweepSpec

    def check() -> None:
        missing = [f"--{k}" for k in ("clean", "corrupted", "answer", "wrong") if getattr(args, k) is None]
        if missing:
            raise ParameterError(f"patch needs {', '.join(missing)} (or --spec FILE)")

    def build(model: Model) -> SweepSpec:
        answer, wrong = model.to_single_token(args.answer), model.to_single_token(args.wrong)
        return SweepSpec(
            tokens=model.to_tokens(args.corrupted).tolist(),
            clean_tokens=model.to_tokens(args.clean).tolist(),
            metric={"name": "logit_diff", "answer": int(answer), "wrong": int(wrong)},
            per=list(PER[args.per]),
            method=args.method,
            target=args.target,
            layers=args.layers,
            bands=args.bands,
            options=_options(args),
            model=fingerprint(model),
        )

    _, result = _run(args, check, build)
    _write(result, args, "patch", f"logit diff after patching one band clean→corrupted ({result.method})")
    return 0
