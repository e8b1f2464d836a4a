"""The main job: `rope-interp report` writes one offline HTML page with every section."""

import re

import pytest

from rope_interp import report
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
        "Interactive attention",
    ):
        assert heading in page, heading
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
    for csv in ("bands", "usage", "positional_heads", "offsets", "massive"):
        assert (tmp_path / f"{csv}.csv").stat().st_size > 0
