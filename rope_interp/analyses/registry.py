"""The analysis registry: one :class:`Analysis` record per analysis, looked up by the CLI and the report.

A record says everything the command line and the report need: the name and help,
typed options (:class:`Option`, with choices taken from the API's ``Literal`` types),
``start`` (the accumulators it feeds during the shared pass, see
:mod:`rope_interp.analyses.stream`), ``finish`` (extra runs afterwards — causal checks,
ablations — and the result object), ``summary`` (named records for ``summary.json``),
``findings`` (key numbers in sentences), ``tables`` (CSV files) and ``section`` (the
report's blocks).

Adding an analysis is one module defining ``ANALYSIS = Analysis(...)`` plus one line in
``rope_interp/analyses/__init__.py``, which registers the built-ins (this module imports no analysis); :func:`register` adds one at run time (a plug-in or a
test) and it appears in ``rope-interp --help`` and in the report.

>>> import torch
>>> from rope_interp.model.testing import tiny_model
>>> [a.name for a in analyses()][:6]  # the built-ins, in report order
['usage', 'heads', 'sinks', 'offsets', 'massive', 'spectrum']
>>> res = run(tiny_model(), torch.randint(0, 50, (1, 24)), {"usage": {}, "massive": {"ablation": False}},
...           progress=False)
>>> sorted(res), res["usage"].n_tokens
(['massive', 'usage'], 24)
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import ParameterError, RopeInterpError
from ..model.kind import Model
from .inputs import text_tokens
from .stream import Accumulator, run_pass

Block = tuple[str | None, Any]
"""One report block: an optional sub-heading and an item (HTML string, Figure or DataFrame)."""


def literal_choices(tp: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type (the API's own), for CLI choices and validation.

    >>> from typing import Literal
    >>> literal_choices(Literal["a", "b"])
    ('a', 'b')
    """
    if typing.get_origin(tp) is not typing.Literal:
        raise TypeError(f"{tp!r} is not a Literal type")
    return typing.get_args(tp)


@dataclass(frozen=True)
class Option:
    """One typed option of an analysis: a keyword of its API function and a ``--flag`` of its command.

    ``type`` is ``int``, ``float``, ``bool`` (a switch) or ``str``; ``many=True`` takes a list;
    ``choices`` restricts the values (use :func:`literal_choices` on the API's ``Literal``);
    ``minimum`` bounds numbers from below.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    many: bool = False
    minimum: float | None = None

    @property
    def flag(self) -> str:
        if self.type is bool and self.default is True:
            return "--no-" + self.name.replace("_", "-")
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser: Any) -> None:
        """Add this option to an argparse parser (dest = ``name``)."""
        if self.type is bool:
            action = "store_false" if self.default is True else "store_true"
            parser.add_argument(self.flag, dest=self.name, action=action, help=self.help)
            return
        kw: dict[str, Any] = dict(dest=self.name, type=self.type, default=self.default)
        if self.choices:
            kw["choices"] = self.choices
        if self.many:
            kw["nargs"] = "*"
        default = self.default if not self.many else " ".join(map(str, self.default or []))
        parser.add_argument(self.flag, help=f"{self.help} (default: {default})", **kw)

    def check(self, value: Any) -> Any:
        """Validate one value; raises :class:`ParameterError` saying what is allowed."""
        from ..validate import finite

        values = list(value) if self.many and value is not None else [value]
        for v in values:
            if v is None and self.default is None:
                continue
            if self.type is bool:
                if not isinstance(v, bool):
                    raise ParameterError(f"{self.name} must be True or False, got {v!r}")
                continue
            if self.type in (int, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ParameterError(f"{self.name} must be a number, got {v!r}")
                if self.type is int and not isinstance(v, int):
                    raise ParameterError(f"{self.name} must be an integer, got {v!r}")
                finite(self.name, v)
                if self.minimum is not None and v < self.minimum:
                    raise ParameterError(f"{self.name} must be >= {self.minimum}, got {v!r}")
            if self.choices and v not in self.choices:
                raise ParameterError(f"{self.name} must be one of {list(self.choices)}, got {v!r}")
        return value


@dataclass
class RunContext:
    """What every analysis of one run shares: the model, the data, the layers and window."""

    model: Model
    data: Any
    layers: list[int] | None = None
    window: int | None = None
    progress: bool = True


def _no_start(ctx: RunContext, opts: dict[str, Any]) -> list[Accumulator]:
    return []


@dataclass(frozen=True)
class Analysis:
    """One registered analysis (see the module docstring for what each field is for)."""

    name: str
    title: str
    help: str
    description: str
    finish: Callable[[RunContext, dict[str, Any], list[Accumulator]], Any]
    start: Callable[[RunContext, dict[str, Any]], list[Accumulator]] = _no_start
    options: tuple[Option, ...] = ()
    summary: Callable[[Any], dict[str, Any]] = lambda r: {}
    summary_doc: Mapping[str, str] = field(default_factory=dict)
    findings: Callable[[Any], list[str]] = lambda r: []
    tables: Callable[[Any], dict[str, Any]] = lambda r: {}
    section: Callable[[Any], list[Block]] = lambda r: []
    min_tokens: int = 2  # the shortest window (tokens) it can say anything about; the report skips it below

    def options_with(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``given``, each checked; unknown names are an error."""
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ParameterError(
                f"analysis {self.name!r} has no option(s) {unknown}; its options: {sorted(known) or 'none'}"
            )
        return {n: o.check(given.get(n, o.default)) for n, o in known.items()}


_REGISTRY: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Add an analysis to the registry (its name must be new); returns it."""
    if not isinstance(analysis, Analysis):
        raise TypeError(f"register() takes an Analysis record, got {type(analysis).__name__}")
    if analysis.name in _REGISTRY:
        raise RopeInterpError(f"an analysis named {analysis.name!r} is already registered")
    _REGISTRY[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove a registered analysis."""
    _REGISTRY.pop(name, None)


@contextmanager
def registered(analysis: Analysis) -> Iterator[Analysis]:
    """Register ``analysis`` for the duration of a ``with`` block (tests, notebooks)."""
    register(analysis)
    try:
        yield analysis
    finally:
        unregister(analysis.name)


def analyses() -> list[Analysis]:
    """Every registered analysis, in registration order."""
    return list(_REGISTRY.values())


def get(name: str) -> Analysis:
    """The analysis registered as ``name``."""
    if name not in _REGISTRY:
        raise ParameterError(f"no analysis named {name!r}; registered: {list(_REGISTRY)}")
    return _REGISTRY[name]


def run(
    model: Model,
    data: Any,
    selected: Mapping[str, Mapping[str, Any]] | Sequence[str],
    *,
    layers: list[int] | None = None,
    window: int | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    failures: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the selected analyses (``{name: options}`` or names with default options) over ``data``
    in one fused pass, then each one's extra runs; returns ``{name: result}``.

    Options are validated before any forward. ``layers=None`` analyses every layer.
    ``timings`` (a dict) receives the seconds of the shared pass (``"pass"``) and of each
    analysis' ``finish`` (its extra runs). ``failures`` (a dict): an analysis whose ``finish``
    raises a :class:`RopeInterpError` (its input cannot support it) is left out of the results and
    its error recorded there as ``{name: message}``, so the others survive; without it, the error
    propagates.
    """
    import time

    if not isinstance(selected, Mapping):
        selected = {n: {} for n in selected}
    ctx = RunContext(model, data, layers, window, progress)
    chosen = [(get(n), get(n).options_with(o)) for n, o in selected.items()]
    accs = {a.name: a.start(ctx, opts) for a, opts in chosen}
    t0 = time.perf_counter()
    run_pass(
        model,
        data,
        [x for acc in accs.values() for x in acc],
        window=window,
        progress=progress,
        desc=" + ".join(a.name for a, _ in chosen),
    )
    times = {"pass": time.perf_counter() - t0}
    results = {}
    for a, opts in chosen:
        t0 = time.perf_counter()
        try:
            results[a.name] = a.finish(ctx, opts, accs[a.name])
        except RopeInterpError as err:
            if failures is None:
                raise
            failures[a.name] = f"{type(err).__name__}: {err}"
        times[a.name] = time.perf_counter() - t0
    if timings is not None:
        timings.update(times)
    return results


def as_blocks(items: list) -> list[Block]:
    """:func:`report_section` items as report blocks; DataFrames become tables (no index, NaN as "—")."""
    from ..view.html import table_html

    return [(None, table_html(x, digits=4, max_rows=30) if hasattr(x, "to_html") else x) for x in items]


def auto_size(ctx: RunContext, value: int | None, per: int, lo: int, hi: int) -> int:
    """``value``, or (None) one unit per ``per`` tokens of the run's text, clamped to ``[lo, hi]``.

    The report's sizes scale with its text, so ``--quick`` (256 tokens) stays quick.
    """
    if value is not None:
        return value
    return max(lo, min(hi, int(text_tokens(ctx.model, ctx.data).shape[1]) // per))
