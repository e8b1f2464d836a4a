"""Self-contained offline HTML: circuitsvis components with the JS bundle inlined, and report pages.

circuitsvis' ``RenderedHTML`` prints the CDN version (``str()`` imports the
bundle from unpkg.com) and its ``_repr_html_`` pings google.com on every display.
:class:`View` keeps the component props instead and renders them with
circuitsvis' own bundle (``dist/cdn/iife.js``, ~1.3 MB) inlined once per page, so
a saved file opens with no network and ``_repr_html_`` does no I/O beyond reading
that file once per process. :func:`html_page` / :func:`save_html_page` assemble
views, matplotlib figures (as PNG) and DataFrames into one offline page.
"""

from __future__ import annotations

import base64
import functools
import html as html_lib
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import RopeInterpError

# ---------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """circuitsvis' browser bundle (defines the global ``CircuitsVis``), safe to inline in ``<script>``."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise RopeInterpError(f"circuitsvis JavaScript bundle not found at {path}: reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    js = js.replace("//# sourceMappingURL=iife.js.map", "")  # no relative fetch when devtools open
    return js.replace("</script", "<\\/script")  # same string in JS, cannot close the tag


def props_json(props: dict[str, Any]) -> str:
    """Props as a JSON object literal safe inside ``<script>`` (``<`` escaped, no NaN).

    >>> import torch
    >>> props_json({"tokens": ["</script>"], "values": torch.tensor([0.5, -1.0])})
    '{"tokens": ["\\\\u003c/script>"], "values": [0.5, -1.0]}'
    """
    try:
        plain = {k: v.detach().cpu().tolist() if isinstance(v, Tensor) else v for k, v in props.items()}
        text = json.dumps({k: v for k, v in plain.items() if v is not None}, allow_nan=False)
    except ValueError:
        raise RopeInterpError("view data contains NaN or infinite values: nothing sensible to draw") from None
    return text.replace("<", "\\u003c")


@dataclass
class Panel:
    """One circuitsvis component: React ``component`` name and its (camelCase) props."""

    component: str
    props: dict[str, Any]
    title: str = ""

    def rendered(self) -> Any:
        """circuitsvis' own ``RenderedHTML`` for this panel (its ``str()`` is the CDN version)."""
        from circuitsvis.utils.render import render

        return render(self.component, **self.props)

    def fragment(self) -> str:
        """A ``<div>`` and the script that mounts the component (needs the bundle loaded first)."""
        uid = "rope-vis-" + uuid.uuid4().hex[:12]
        title = f'<div class="rv-title">{html_lib.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="rv-panel">{title}<div id="{uid}" class="rv-mount"></div>\n<script>\n'
            f"try {{ CircuitsVis.render({json.dumps(uid)}, CircuitsVis.{self.component}, "
            f"{props_json(self.props)}); }}\n"
            f'catch (e) {{ document.getElementById({json.dumps(uid)}).textContent = "render failed: " + e; }}\n'
            "</script></div>"
        )


_VIEW_CSS = """
.rv-view { margin: 1em 0 2em 0; }
.rv-notice { background: #fff3cd; border: 1px solid #e0c36a; padding: 6px 10px; margin: 6px 0; }
.rv-caption { color: #444; margin: 4px 0 8px 0; }
.rv-grid { display: grid; gap: 12px; overflow-x: auto; }
.rv-panel { min-width: 220px; }
.rv-title { font-weight: 600; font-size: 0.9em; margin-bottom: 4px; }
"""
_PAGE_CSS = (
    _VIEW_CSS
    + """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
nav.toc ol { columns: 2; }
.findings { background: #f6f8fa; border-left: 4px solid #4a7; padding: 0.5em 1em; }
"""
)


def _bundle_script() -> str:
    return f"<script>\n{circuitsvis_bundle()}\n</script>"


@dataclass
class View:
    """A titled grid of circuitsvis panels with notices; displays in notebooks, saves offline.

    ``_repr_html_`` inlines the bundle (no network, no I/O); :meth:`save` writes a
    self-contained page; :meth:`rendered` gives circuitsvis' ``RenderedHTML`` objects.
    """

    title: str
    panels: list[Panel]
    columns: int = 1
    notices: list[str] = field(default_factory=list)
    caption: str = ""

    def rendered(self) -> list[Any]:
        """circuitsvis ``RenderedHTML`` of each panel, in order."""
        return [p.rendered() for p in self.panels]

    def fragment(self, include_bundle: bool = True, heading: bool = True) -> str:
        """HTML for embedding: notices, caption and the panels (with the bundle unless told not to)."""
        parts = [_bundle_script()] if include_bundle else []
        parts.append('<div class="rv-view">')
        if heading:
            parts.append(f"<h3>{html_lib.escape(self.title)}</h3>")
        parts += [f'<div class="rv-notice">⚠ {html_lib.escape(n)}</div>' for n in self.notices]
        if self.caption:
            parts.append(f'<div class="rv-caption">{html_lib.escape(self.caption)}</div>')
        cols = f"repeat({self.columns}, minmax(220px, 1fr))"
        parts.append(f'<div class="rv-grid" style="grid-template-columns: {cols};">')
        parts += [p.fragment() for p in self.panels]
        parts.append("</div></div>")
        return "\n".join(parts)

    def html(self) -> str:
        """A complete, self-contained HTML document (works offline)."""
        return html_page([(None, self)], title=self.title)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`html` to ``path`` (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return f"<style>{_VIEW_CSS}</style>" + self.fragment(include_bundle=True)


# ---------------------------------------------------------------------------- pages


def _figure_html(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    alt = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    if not alt and fig.axes:
        alt = fig.axes[0].get_title()
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html_lib.escape(alt)}" style="max-width:100%" src="data:image/png;base64,{data}">'


def _item_html(item: Any, *titles: str | None) -> str:
    if isinstance(item, View):  # no heading that repeats the page's or section's title
        return item.fragment(include_bundle=False, heading=item.title not in titles)
    if isinstance(item, str):
        return item
    if hasattr(item, "savefig"):
        return _figure_html(item)
    if hasattr(item, "to_html"):  # pandas DataFrame / Styler
        return item.to_html()
    raise TypeError(
        f"cannot put a {type(item).__name__} in an HTML page: give a View, HTML str, Figure or DataFrame"
    )


class _TableOfContents:
    def __repr__(self) -> str:
        return "TOC"


TOC = _TableOfContents()
"""Put ``(None, TOC)`` among :func:`html_page` sections: a table of contents of the titled sections goes there."""


def _anchor(title: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") or "section"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}-{i}"
    used.add(name)
    return name


def html_page(sections: Sequence[tuple[str | None, Any]], title: str = "rope_interp") -> str:
    """One offline HTML document from ``(title, item)`` sections.

    Items: a :class:`View`, an HTML string (inserted as is), a matplotlib Figure
    (embedded as a base64 PNG), a DataFrame, or :data:`TOC` (a table of contents linking
    every titled section; headings then get ``id`` anchors). The circuitsvis bundle is
    inlined once, only if some section is a View.

    >>> page = html_page([("Notes", "<p>hello</p>")], title="demo")
    >>> "<h2>Notes</h2>" in page and "CircuitsVis" not in page
    True
    >>> page = html_page([(None, TOC), ("Notes", "<p>hello</p>")])
    >>> '<a href="#notes">Notes</a>' in page and '<h2 id="notes">Notes</h2>' in page
    True
    """
    toc = any(item is TOC for _, item in sections)
    used: set[str] = set()
    anchors = [_anchor(t, used) if (t and toc) else "" for t, _ in sections]
    links = "".join(
        f'<li><a href="#{a}">{html_lib.escape(t)}</a></li>'
        for (t, _), a in zip(sections, anchors, strict=True)
        if t and a
    )
    body = []
    for (sec_title, item), anchor in zip(sections, anchors, strict=True):
        if sec_title:
            attr = f' id="{anchor}"' if anchor else ""
            body.append(f"<h2{attr}>{html_lib.escape(sec_title)}</h2>")
        if item is TOC:
            body.append(f'<nav class="toc"><h2>Contents</h2><ol>{links}</ol></nav>')
        else:
            body.append(_item_html(item, sec_title, title))
    needs_js = any(isinstance(item, View) for _, item in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html_lib.escape(title)}</title>\n<style>{_PAGE_CSS}</style>\n"
        + (_bundle_script() if needs_js else "")
        + f"\n</head><body>\n<h1>{html_lib.escape(title)}</h1>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def save_html_page(
    path: str | Path,
    sections: Sequence[tuple[str | None, Any]],
    title: str = "rope_interp",
    toc: bool = False,
) -> Path:
    """Write :func:`html_page` to ``path`` atomically (a temporary name, then renamed); returns the path.

    >>> import tempfile, os
    >>> p = save_html_page(os.path.join(tempfile.mkdtemp(), "r.html"), [("A", "<p>x</p>")])
    >>> p.read_text().count("<h2>A</h2>")
    1
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(html_page(sections, title), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- report pieces


def paragraph(text: str) -> str:
    """``<p>`` with the text escaped.

    >>> paragraph("a < b")
    '<p>a &lt; b</p>'
    """
    return f"<p>{html_lib.escape(text)}</p>"


def bullet_list(items: Sequence[str]) -> str:
    """An escaped ``<ul>`` of sentences.

    >>> bullet_list(["x & y"])
    '<ul><li>x &amp; y</li></ul>'
    """
    return "<ul>" + "".join(f"<li>{html_lib.escape(s)}</li>" for s in items) + "</ul>"


def format_number(x: Any, digits: int = 3) -> str:
    """A table cell: ints as is, floats to ``digits`` significant digits, NaN/None as an em dash.

    >>> [format_number(v) for v in (3, 0.123456, 1234.5, float("nan"), None, True, "q")]
    ['3', '0.123', '1.23e+03', '—', '—', 'yes', 'q']
    """
    import math
    import numbers

    if x is None:
        return "—"
    if isinstance(x, (bool,)) or type(x).__name__ == "bool_":
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, numbers.Real):
        if math.isnan(x):
            return "—"
        return f"{x:.{digits}g}"
    return str(x)


def table_html(df: Any, digits: int = 3, max_rows: int | None = None) -> str:
    """A DataFrame as an HTML table without the pandas index, NaN shown as "—", floats rounded.

    >>> import pandas as pd
    >>> t = table_html(pd.DataFrame({"layer": [0], "share": [0.123456], "x": [float("nan")]}))
    >>> "<td>0.123</td>" in t and "<td>—</td>" in t and "<th></th>" not in t
    True
    """
    rows = df.itertuples(index=False, name=None)
    head = "".join(f"<th>{html_lib.escape(str(c))}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            break
        body.append(
            "<tr>" + "".join(f"<td>{html_lib.escape(format_number(v, digits))}</td>" for v in row) + "</tr>"
        )
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
