"""The package's layering: no import cycle, no import that goes up the layer order, lazy imports included.

The order is written once here and once in the README's "Architecture" section (a test checks they agree).
A module may import its own folder and the layers below it; within a folder, no cycle. Only ``model/`` imports
TransformerLens or transformers. Imports inside functions count (``ast.walk`` sees every import statement), and
so do imports under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "rope_interp"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("validate",),
    ("bands", "data"),
    ("distributed",),
    ("progress",),
    ("model",),
    ("read",),
    ("intervene",),
    ("sweep",),
    ("view",),
    ("analyses",),
    ("cli",),
]
"""Lowest first. The facade ``rope_interp/__init__.py`` sits above every layer and nothing inside imports it."""

FRAMEWORKS = ("transformer_lens", "transformers")
"""Imported only inside ``model/``."""


def _module_name(path: pathlib.Path) -> tuple[str, list[str]]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), parts[:-1]
    return ".".join(parts), parts[:-1]


MODULES = {_module_name(p)[0] for p in PKG.rglob("*.py")}


def _imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    """(rope_interp modules imported, third-party top-level packages imported) by every import statement.

    ``from pkg import name`` depends on ``pkg.name`` where that is a module, else on ``pkg`` itself.
    """
    _, pkg = _module_name(path)
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "rope_interp":
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    inside.add(sub if sub in MODULES else mod)
            else:
                outside.add(mod.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                (inside if a.name.split(".")[0] == "rope_interp" else outside).add(
                    a.name if a.name.startswith("rope_interp") else a.name.split(".")[0]
                )
    return inside, outside


def import_graph() -> dict[str, set[str]]:
    """Edges between rope_interp modules (``from x import name`` adds ``x`` and, where it is a module, ``x.name``)."""
    files = {_module_name(p)[0]: p for p in PKG.rglob("*.py")}
    assert set(files) == MODULES
    graph = {name: _imports(path)[0] for name, path in files.items()}
    return {k: {e for e in v if e in graph and e != k} for k, v in graph.items()}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of a module (None: the facade)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS (and to the README)")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(graph[nxt]))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
    return out


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_no_import_goes_up_the_layer_order():
    upward = []
    for module, targets in import_graph().items():
        here = layer_of(module)
        if here is None:
            continue
        for t in sorted(targets):
            there = layer_of(t)
            if there is None or there > here:
                upward.append(f"{module} -> {t}")
    assert upward == []


def test_only_the_model_layer_imports_the_frameworks():
    offenders = []
    for path in PKG.rglob("*.py"):
        name, _ = _module_name(path)
        if name.startswith("rope_interp.model"):
            continue
        used = _imports(path)[1] & set(FRAMEWORKS)
        if used:
            offenders.append(f"{name}: {sorted(used)}")
    assert offenders == []


def test_the_graph_sees_lazy_imports_and_the_checks_can_fail():
    graph = import_graph()
    # a lazy import inside a function: modes imports BandStats only when a mean reference is computed
    assert "rope_interp.read.capture" in graph["rope_interp.intervene.modes"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("rope_interp.sweep.tiers") > layer_of("rope_interp.intervene.modes")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("rope_interp.nowhere")


def test_the_registry_imports_no_analysis():
    graph = import_graph()
    registry = "rope_interp.analyses.registry"
    reach, todo = set(), [registry]
    while todo:
        for t in graph[todo.pop()]:
            if t not in reach:
                reach.add(t)
                todo.append(t)
    analyses = {m for m in graph if m.startswith("rope_interp.analyses.")} - {
        registry,
        "rope_interp.analyses.stream",
        "rope_interp.analyses.inputs",
    }
    assert reach & analyses == set()


def test_readme_states_the_same_layer_order():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- layers -->\n```text\n(.*?)```", text, re.S)
    assert m, "README lacks the layer diagram (<!-- layers --> then a ```text block)"
    listed = re.findall(r"^\s*\d+\.\s+(.+?)\s+—", m.group(1), re.M)
    want = [" ".join(f"{n}/" if (PKG / n).is_dir() else f"{n}.py" for n in names) for names in LAYERS]
    assert listed == want
