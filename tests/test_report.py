"""The main job: `rope-interp report` writes one offline HTML page with every section."""

import re

import pytest

from rope_interp.analyses import report
from rope_interp.cli import main


def _is_colorbar(ax):
    return ax.get_label() == "<colorbar>" or hasattr(ax, "_colorbar")


@pytest.mark.slow
def test_quick_report_has_every_section_and_labelled_figures(tmp_path, monkeypatch, smol):
    figures = []
    real_close = report._close

    def keep(fig):
        figures.append(fig)
        return real_close(fig)

    monkeypatch.setattr(report, "_close", keep)
    rc = main(["report", "--quick", "--no-progress", "--out", str(tmp_path), "--layers", "0", "1"])
    assert rc == 0
    page = (tmp_path / "report.html").read_text()
    for heading in (
        "Rotary bands",
        "Frequency usage",
        "Positional heads",
        "Sink",
        "Rotary offset features",
        "Massive values",
        "Spectra",
        "Induction heads and their bands",
        "Frequency entropy of band query norms",
        "carriers outside q·k",
        "Harmonics in the FFN",
        "Phase alignment and sharpness",
        "Interactive attention",
    ):
        assert heading in page, heading
    assert "follows:" in page  # each spectral measure says which paper version it follows
    # offline: no script or stylesheet fetched from the network
    assert not re.search(r"<script[^>]+src=[\"']https?:", page)
    assert "unpkg.com" not in page
    assert page.count("data:image/png;base64,") == len(figures) >= 8
    for fig in figures:
        axes = [ax for ax in fig.axes if ax.has_data() and not _is_colorbar(ax)]
        assert axes
        for ax in axes:
            suptitle = fig._suptitle.get_text() if fig._suptitle else ""
            title = ax.get_title() or suptitle
            assert title, f"untitled axes in {fig}"
            assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes {title!r}"
    summary = (tmp_path / "summary.json").read_text()
    assert '"tokens": 256' in summary
    for csv in (
        "bands",
        "usage",
        "positional_heads",
        "offsets",
        "massive",
        "induction_heads",
        "induction_circuit",
        "frequency_entropy",
        "carrier_lines",
        "ffn_harmonics",
        "weighted_alignment",
        "causal_alignment",
    ):
        assert (tmp_path / f"{csv}.csv").stat().st_size > 0


def _tiny_report(tmp_path, **cfg):
    import torch

    from rope_interp.analyses.report import ReportConfig, build_report
    from rope_interp.model.testing import tiny_model

    model = tiny_model()
    tokens = torch.randint(0, 50, (1, 120), generator=torch.Generator().manual_seed(0))
    cfg = ReportConfig(window=64, progress=False, **cfg)
    return model, build_report(model, tokens, tmp_path / "r", cfg, source="random tokens")


def test_report_reads_like_a_report(tmp_path):
    """Findings first, a table of contents, tables without pandas indexes or NaN, summary.json as records."""
    import json

    from rope_interp.analyses.report import validate_summary

    _, path = _tiny_report(tmp_path)
    page = path.read_text()
    assert page.index("Findings") < page.index('<nav class="toc">') < page.index("Rotary bands")
    for title in (
        "Frequency usage",
        "Positional heads",
        "Sink",
        "Massive values",
        "Spectra",
        "Induction heads and their bands",
        "Frequency entropy of band query norms",
        "Harmonics in the FFN",
        "Phase alignment and sharpness",
        "Interactive attention",
    ):
        assert re.search(rf'<a href="#[\w-]+">{title}', page), title
    assert ">nan<" not in page.lower() and "<th></th>" not in page  # no NaN cells, no unnamed index column
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    validate_summary(summary)
    assert summary["tokens"] == 120 and len(summary["findings"]) >= 5
    assert summary["schema"] == "rope_interp.report/1"  # a format tag: unchanged by moving the module
    heads = summary["analyses"]["heads"]
    assert all(isinstance(r, dict) for r in heads["positional_heads"])  # named records, not float lists
    assert {r["layer"] for r in summary["analyses"]["usage"]["per_layer"]} == {0, 1}
    for name in ("induction", "frequency-entropy", "carrier", "harmonics", "alignment"):
        assert summary["analyses"][name], name
    bad = dict(summary, extra=1)
    with pytest.raises(ValueError, match="top-level keys"):
        validate_summary(bad)
    bad = json.loads(json.dumps(summary))
    bad["analyses"]["usage"]["ratios"] = [0.1]
    with pytest.raises(ValueError, match="undocumented"):
        validate_summary(bad)


@pytest.mark.parametrize("grad", [True, False])
def test_build_report_changes_no_global_state(tmp_path, grad):
    import torch

    dtype = torch.get_default_dtype()
    torch.set_grad_enabled(grad)
    try:
        from rope_interp.model.testing import tiny_model

        model = tiny_model()
        model.train()
        from rope_interp.analyses.report import ReportConfig, build_report

        tokens = torch.randint(0, 50, (1, 70), generator=torch.Generator().manual_seed(0))
        build_report(
            model,
            tokens,
            tmp_path / "r",
            ReportConfig(window=64, progress=False, sections=("bands", "usage", "heads")),
        )
        assert torch.is_grad_enabled() is grad
        assert torch.get_default_dtype() == dtype
        assert model.training
        assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())
    finally:
        torch.set_grad_enabled(True)
    if grad:  # a user's backward still works after the report
        model(tokens[:, :8], return_type="loss").backward()


def test_report_on_a_short_text_skips_what_it_cannot_compute_with_a_note(tmp_path):
    # regression (issue 22 #14/#15): a short text on a model with n_ctx < 512 died (default window 512, then the
    # spectrum section); now the window defaults to min(512, n_ctx) and sections below their need are skipped
    import json

    import torch

    from rope_interp.analyses.report import ReportConfig, build_report
    from rope_interp.model.testing import tiny_model

    model = tiny_model()
    tokens = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    path = build_report(model, tokens, tmp_path / "r", ReportConfig(progress=False), source="short")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(summary["skipped"]) == {"spectrum", "carrier"}
    assert "usage" in summary["analyses"] and "spectrum" not in summary["analyses"]
    page = path.read_text()
    assert page.count("Section skipped") == 2 and "at least 33 tokens" in page


def test_a_section_that_fails_on_its_input_is_skipped_with_a_note(tmp_path, monkeypatch):
    # regression (issue 22 #14): one analysis refusing its input (a RopeInterpError in its finish) took every
    # other section with it; now it is a visible note in the page and in summary["skipped"], the others kept
    import json

    import torch

    from rope_interp.analyses import registry
    from rope_interp.analyses.report import ReportConfig, build_report
    from rope_interp.errors import ContextLengthError
    from rope_interp.model.testing import tiny_model

    usage = registry.get("usage")

    def refuse(ctx, opts, acc):
        raise ContextLengthError("planted: too little text for usage")

    import dataclasses

    monkeypatch.setitem(registry._REGISTRY, "usage", dataclasses.replace(usage, finish=refuse))
    tokens = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))
    path = build_report(tiny_model(), tokens, tmp_path / "r", ReportConfig(progress=False), source="fail")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "planted: too little text for usage" in summary["skipped"]["usage"]
    assert "usage" not in summary["analyses"] and len(summary["analyses"]) >= 3
    assert "planted: too little text for usage" in path.read_text()
