"""The main job: one offline HTML report of every registered analysis on a model and a text.

``rope-interp report --out DIR`` (embedded SmolLM2-135M and the bundled corpus by
default) writes ``DIR/report.html``, the raw tables as CSV and ``summary.json``.
By default it reads the first 2,048 tokens (``--max-tokens`` for more) so that it
finishes in minutes on a 2-core CPU. Every analysis of :mod:`rope_interp.analyses.registry`
runs in one shared streaming pass (:mod:`rope_interp.analyses.stream`), then its extra runs.

The page: the model and text, a **Findings** block (the key numbers in sentences), a
table of contents, the band table, one section per analysis (in registry order) and
interactive circuitsvis views of a top-band vs bottom-band ablation.

``summary.json`` holds named records (see :data:`SUMMARY_DOC` and each analysis'
``summary_doc``); :func:`validate_summary` checks a file against them.
"""

from __future__ import annotations

import contextlib
import html
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model import adapter
from ..model.kind import Model
from .registry import Analysis, Block, analyses

FIXED_SECTIONS = ("bands", "views")
"""Report sections that are not analyses: the band table (first) and the interactive views (last)."""

SUMMARY_DOC = {
    "schema": "format tag, 'rope_interp.report/1'",
    "model": "model name",
    "tokens": "tokens analysed",
    "source": "where the text came from",
    "layers": "analysed layers (null: all)",
    "seconds": "records: step ('shared pass', an analysis' extra runs, a fixed section), seconds",
    "total_seconds": "wall time of the whole report",
    "processes": "processes that shared the analyses' passes (torchrun ranks; 1 for a single process)",
    "findings": "the Findings block's sentences",
    "analyses": "per analysis name: its summary (documented by the analysis' summary_doc)",
    "skipped": "per skipped section name: why it could not run on this input",
}


@dataclass
class ReportConfig:
    """What the report analyses. ``options`` overrides analysis options, e.g. ``{"heads": {"ablate_k": 2}}``."""

    window: int | None = None  # None: min(512, the model's n_ctx)
    max_tokens: int | None = 2048
    layers: list[int] | None = None
    spectra_layers: list[int] | None = None
    view_tokens: int = 96
    n_view_bands: int = 8
    sections: tuple[str, ...] | None = None  # None: every registered analysis and fixed section
    progress: bool = True
    options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"heads": {"causal_windows": 1}, "massive": {"ablation_windows": 2}}
    )

    def wants(self, name: str) -> bool:
        return self.sections is None or name in self.sections


@dataclass
class ReportRun:
    """What the section builders read: the inputs and the analyses' results."""

    model: Model
    tokens: torch.Tensor
    spec: Any
    cfg: ReportConfig
    source: str
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    processes: int = 1


def _close(fig: Any) -> Any:
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


@contextlib.contextmanager
def preserved_state(model: Model) -> Iterator[None]:
    """Run a block with gradients off and restore grad mode, default dtype and the model's train/eval mode."""
    grad, dtype, training = torch.is_grad_enabled(), torch.get_default_dtype(), model.training
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        model.train(training)


# ---- sections -------------------------------------------------------------------------------------------
def header_block(run: ReportRun, total_seconds: float) -> Block:
    from ..view.html import paragraph

    s = run.spec
    return (
        None,
        paragraph(
            f"Model {s.model_name or '?'} ({s.n_layers} layers, {s.n_heads} heads, {s.n_kv_heads} kv heads, "
            f"{s.n_bands} bands); {run.tokens.shape[1]} tokens of {run.source or 'text'}; built in "
            f"{total_seconds:.0f} s by rope_interp"
            + (f" with {run.processes} processes (torchrun)." if run.processes > 1 else ".")
        ),
    )


def findings(run: ReportRun, chosen: list[Analysis]) -> list[str]:
    """The key numbers of every analysis, as sentences."""
    return [s for a in chosen for s in a.findings(run.results[a.name])]


def findings_block(sentences: list[str]) -> Block:
    from ..view.html import bullet_list

    return ("Findings", f'<div class="findings">{bullet_list(sentences)}</div>')


def bands_section(run: ReportRun) -> list[Block]:
    from ..view.html import paragraph, table_html

    df = run.spec.to_dataframe(0, context_length=int(run.tokens.shape[1])).reset_index()
    return [("Rotary bands", paragraph(run.spec.describe())), (None, table_html(df, digits=4))]


def analysis_section(a: Analysis, result: Any) -> list[Block]:
    blocks = a.section(result)
    return [(a.title, "")] + [(t, _close(item) if hasattr(item, "savefig") else item) for t, item in blocks]


def view_layer(heads: Any, layers: list[int] | None, n_layers: int) -> int:
    """The layer of the strongest positional head found, else the first analysed layer (else layer 1)."""
    found = heads.found() if heads is not None else []
    if found:
        return int(found[0][0])
    if layers:
        return layers[0]
    return min(1, n_layers - 1)


def views_section(run: ReportRun) -> list[Block]:
    from ..intervene.ablate import ablate_bands
    from ..view.html import paragraph
    from ..view.panels import ablation_view

    spec, cfg = run.spec, run.cfg
    nb = min(cfg.n_view_bands, spec.n_bands // 2)
    top, bottom = list(range(nb)), list(range(spec.n_bands - nb, spec.n_bands))
    layer = view_layer(run.results.get("heads"), cfg.layers, spec.n_layers)
    tokens = run.tokens[:, : min(cfg.view_tokens, spec.n_ctx)]
    blocks: list[Block] = [
        (
            "Interactive attention: top-band vs bottom-band ablation",
            paragraph(
                f"Layer {layer}: clean attention, the pattern with the {nb} highest-frequency bands (left) or the "
                f"{nb} lowest (right) removed from this layer's scores, and the full model under a q/k "
                "zero-ablation of those bands in every layer; blue = more attention than clean, red = less."
            ),
        )
    ]
    for label, bset in (("highest", top), ("lowest", bottom)):
        hooks = ablate_bands(run.model, bset, target="qk", mode="zero")
        v = ablation_view(
            run.model, tokens, layer, bset, hooks=hooks, hooks_label=f"all layers, {label} bands zeroed"
        )
        blocks.append((f"Layer {layer}, {nb} {label}-frequency bands removed", v))
    return blocks


# ---- summary.json ---------------------------------------------------------------------------------------
def build_summary(
    run: ReportRun, chosen: list[Analysis], sentences: list[str], total: float, skipped: dict[str, str]
) -> dict[str, Any]:
    return {
        "schema": "rope_interp.report/1",
        "model": run.spec.model_name,
        "tokens": int(run.tokens.shape[1]),
        "source": run.source,
        "layers": run.cfg.layers,
        "seconds": [{"step": k, "seconds": round(v, 2)} for k, v in run.seconds.items()],
        "total_seconds": round(total, 1),
        "processes": run.processes,
        "findings": sentences,
        "analyses": {a.name: a.summary(run.results[a.name]) for a in chosen},
        "skipped": skipped,
    }


def validate_summary(summary: dict[str, Any]) -> None:
    """Check a ``summary.json`` against :data:`SUMMARY_DOC` and the registered analyses' ``summary_doc``.

    Raises ``ValueError`` listing every undocumented or missing key and every record list
    that is not a list of objects.
    """
    problems = []
    if set(summary) != set(SUMMARY_DOC):
        problems.append(f"top-level keys {sorted(summary)} != documented {sorted(SUMMARY_DOC)}")
    registry = {a.name: a for a in analyses()}
    for name, part in summary.get("analyses", {}).items():
        a = registry.get(name)
        if a is None:
            problems.append(f"unknown analysis {name!r}")
            continue
        extra = set(part) - set(a.summary_doc)  # documented keys may be absent (e.g. a part not run)
        if extra:
            problems.append(f"{name}: undocumented keys {sorted(extra)}")
        for key, value in part.items():
            if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
                if not all(isinstance(r, dict) and all(isinstance(k, str) for k in r) for r in value):
                    problems.append(f"{name}.{key}: a list of records must hold objects with named fields")
    for rec in summary.get("seconds", []):
        if set(rec) != {"step", "seconds"}:
            problems.append(f"seconds record {rec} is not {{step, seconds}}")
    if problems:
        raise ValueError("summary.json does not match its documentation: " + "; ".join(problems))


# ---- the report -----------------------------------------------------------------------------------------
def _selected(cfg: ReportConfig) -> list[Analysis]:
    return [a for a in analyses() if cfg.wants(a.name)]


def _options(a: Analysis, cfg: ReportConfig) -> dict[str, Any]:
    opts = dict(cfg.options.get(a.name, {}))
    if a.name == "spectrum" and cfg.spectra_layers:
        opts["spectra_layers"] = cfg.spectra_layers
    return {k: v for k, v in opts.items() if any(o.name == k for o in a.options)}


def build_report(
    model: Model, tokens: torch.Tensor, out: Path, cfg: ReportConfig | None = None, source: str = ""
) -> Path:
    """Run the analyses and write ``out/report.html`` (+ CSV tables, ``summary.json``). Returns the HTML path.

    Grad mode, default dtype, the model's train/eval mode and its hooks are as before on return.
    Files go to a staging folder moved into ``out`` at the end (:mod:`rope_interp.view.output`).
    """
    from ..model.layout import RotaryBands
    from ..view.output import StagedOutput, current_stage

    cfg = cfg or ReportConfig()
    out = Path(out)
    stage = current_stage()
    if stage is not None and stage.is_staging(out):
        return _write_report(model, tokens, out, cfg, source, RotaryBands.from_model(model))
    with StagedOutput(out) as st:
        path = _write_report(model, tokens, st.folder(), cfg, source, RotaryBands.from_model(model))
    return out / path.name


def _write_report(
    model: Model, tokens: torch.Tensor, out: Path, cfg: ReportConfig, source: str, spec: Any
) -> Path:
    from .. import distributed
    from ..view.html import TOC, save_html_page
    from . import registry

    started = time.perf_counter()
    if cfg.max_tokens:
        tokens = tokens[:, : cfg.max_tokens]
    run = ReportRun(model, tokens, spec, cfg, source)
    window = cfg.window or min(512, int(adapter.config(model).n_ctx))
    n_window = min(window, int(tokens.shape[1]))
    chosen, skipped = [], {}
    for a in _selected(cfg):  # each section's need is checked before any work: a short text skips, not kills
        if n_window < a.min_tokens:
            skipped[a.name] = f"needs windows of at least {a.min_tokens} tokens; this run has {n_window}"
        else:
            chosen.append(a)
    with preserved_state(model):
        timings: dict[str, float] = {}
        failed: dict[str, str] = {}
        run.results = registry.run(
            model,
            tokens,
            {a.name: _options(a, cfg) for a in chosen},
            layers=cfg.layers,
            window=window,
            progress=cfg.progress,
            timings=timings,
            failures=failed,
        )
        for name, why in failed.items():  # a section its input cannot support: a note, the others kept
            skipped[name] = f"could not run on this input ({why})"
        chosen = [a for a in chosen if a.name not in failed]
        run.seconds = {("shared pass" if k == "pass" else f"{k} (extra runs)"): v for k, v in timings.items()}
        world = distributed.world()
        run.processes = 1 if world is None else world.size
        if not distributed.is_root():  # under torchrun, rank 0 alone writes the report
            return out / "report.html"
        body: list[Block] = []
        with distributed.local():  # rank 0 only from here: no collective may run
            if cfg.wants("bands"):
                body += bands_section(run)
                run.spec.to_dataframe(0, context_length=int(tokens.shape[1])).to_csv(out / "bands.csv")
            for name, why in skipped.items():
                body += [(f"{name}: skipped", f"<p><b>Section skipped</b>: {html.escape(why)}.</p>")]
            for a in chosen:
                for name, df in a.tables(run.results[a.name]).items():
                    df.to_csv(out / f"{name}.csv", index=False)
                body += analysis_section(a, run.results[a.name])
            if cfg.wants("views"):
                t0 = time.perf_counter()
                body += views_section(run)
                run.seconds["views"] = time.perf_counter() - t0
    sentences = findings(run, chosen)
    total = time.perf_counter() - started
    summary = build_summary(run, chosen, sentences, total, skipped)
    validate_summary(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    page = [header_block(run, total), findings_block(sentences), (None, TOC), *body]
    return save_html_page(out / "report.html", page, title="rope_interp report")
