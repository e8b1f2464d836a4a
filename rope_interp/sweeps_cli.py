"""CLI subcommands ``sweep`` (zero-ablate each band of each layer) and ``patch`` (clean→corrupted
band patching), registered through :data:`rope_interp.cli.COMMANDS`.

Both write ``<name>.csv`` (one row per condition) and ``<name>.png`` (heatmap) to ``--out``
and print the conditions with the largest effect.

    rope-interp sweep --max-tokens 64 --layers 0 5 10 --method exact
    rope-interp patch --clean "The capital of France is" --corrupted "The capital of Italy is" \\
        --answer " Paris" --wrong " Rome"
"""

from __future__ import annotations

import argparse
from typing import Any

PER = {
    "layer-band": ("layer", "band"),
    "layer-head-band": ("layer", "head", "band"),
    "layer-band-pos": ("layer", "band", "pos"),
}


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, nargs="*", default=None, help="layers to sweep (default: all)")
    p.add_argument("--bands", type=int, nargs="*", default=None, help="bands to sweep (default: all)")
    p.add_argument("--target", choices=["q", "k", "qk"], default="qk", help="change queries, keys or both")
    p.add_argument(
        "--per", choices=sorted(PER), default="layer-band", help="grid of conditions (default: %(default)s)"
    )
    p.add_argument(
        "--method",
        choices=["exact", "naive", "attribution"],
        default="exact",
        help="exact: prefix reuse + batching; naive: one forward per condition; "
        "attribution: gradient estimate (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="conditions per forward for --method exact")
    p.add_argument("--top", type=int, default=10, help="print this many strongest conditions")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``sweep`` and ``patch`` on an argparse sub-parser collection.

    >>> parser = argparse.ArgumentParser()
    >>> add_parser(parser.add_subparsers(dest="command"), [])
    >>> args = parser.parse_args(["sweep", "--layers", "0", "3", "--per", "layer-head-band"])
    >>> args.layers, PER[args.per], args.method
    ([0, 3], ('layer', 'head', 'band'), 'exact')
    """
    p = sub.add_parser(
        "sweep",
        parents=parents,
        help="zero-ablate each band of each layer; loss change on a text",
        description="Zero-ablate one RoPE band at a time (per layer, optionally per head / position) and "
        "measure the change of next-token loss on the text. Writes sweep.csv and sweep.png.",
    )
    _selection_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "patch",
        parents=parents,
        help="patch bands from a clean prompt into a corrupted one",
        description="Band activation patching: copy each band of hook_rot_q/rot_k from the clean run into the "
        "corrupted run and measure logit(answer) - logit(wrong) at the last position. "
        "The prompts must have the same number of tokens. Writes patch.csv and patch.png.",
    )
    p.add_argument("--clean", required=True, help="clean prompt")
    p.add_argument("--corrupted", required=True, help="corrupted prompt (same token count)")
    p.add_argument("--answer", required=True, help="the clean answer token, e.g. ' Paris'")
    p.add_argument("--wrong", required=True, help="the corrupted answer token, e.g. ' Rome'")
    _selection_options(p)
    p.set_defaults(func=_cmd_patch)


def _sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        layers=args.layers, bands=args.bands, target=args.target, progress=not args.no_progress
    )
    if args.method == "exact" and args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    return kw


def _write(result: Any, args: argparse.Namespace, name: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .cli import out_dir

    folder = out_dir(args, f"rope-interp-{name}")
    df = result.to_dataframe()
    df.to_csv(folder / f"{name}.csv", index=False)
    fig = result.plot(title=title)
    fig.savefig(folder / f"{name}.png", dpi=120)
    order = df["effect"].abs().sort_values(ascending=False).index[: args.top]
    print(f"base metric {result.base:.4f}; strongest {len(order)} conditions ({result.method}):")
    print(df.loc[order].to_string(index=False, float_format="{:.4f}".format))
    print(f"wrote {folder / (name + '.csv')} and {folder / (name + '.png')}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .cli import load_from_args, tokens_from_args
    from .patching import loss_metric
    from .sweeps import ablation_sweep

    model = load_from_args(args)
    tokens = tokens_from_args(model, args)
    result = ablation_sweep(
        model, tokens, loss_metric(tokens), PER[args.per], method=args.method, **_sweep_kwargs(args)
    )
    _write(
        result,
        args,
        "sweep",
        f"loss change when one band is zeroed ({args.target}, {tokens.shape[1]} tokens)",
    )
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from .cli import load_from_args
    from .patching import logit_diff, patch_sweep

    model = load_from_args(args)
    answer, wrong = model.to_single_token(args.answer), model.to_single_token(args.wrong)
    clean, corrupted = model.to_tokens(args.clean), model.to_tokens(args.corrupted)
    result = patch_sweep(
        model,
        clean,
        corrupted,
        logit_diff(answer, wrong),
        PER[args.per],
        method=args.method,
        **_sweep_kwargs(args),
    )
    _write(
        result,
        args,
        "patch",
        f"logit diff {args.answer!r}-{args.wrong!r} after patching one band clean→corrupted",
    )
    return 0
