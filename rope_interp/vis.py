"""Interactive attention and band views (circuitsvis), saved as offline HTML.

circuitsvis draws React components. Its ``RenderedHTML`` prints the CDN version
(``str()`` imports the bundle from unpkg.com) and its ``_repr_html_`` pings
google.com on every display. The views here keep the component props instead and
render them with circuitsvis' own JavaScript bundle (``dist/cdn/iife.js``, ~1.3 MB)
inlined once per page: a saved file opens with no network, and ``_repr_html_``
does no I/O beyond reading that file once per process. ``View.rendered()`` still
gives circuitsvis' own objects.

Colours: circuitsvis colours a value ``v`` blue (``v > 0``, full at ``maxValue``)
or red (``v < 0``, full at ``minValue``), white at 0. Patterns use ``[0, 1]``;
signed quantities (differences, band score terms) use a symmetric scale
``±max|v|`` — a diverging red/white/blue map — with the scale printed in the
panel title.

Long sequences are cropped to ``max_tokens`` positions (a visible notice in the
page and a :class:`CroppedViewWarning`); a 256-token pattern is ~0.3 MB of JSON.
"""

from __future__ import annotations

import base64
import functools
import html as html_lib
import io
import json
import math
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import adapter
from .decompose import BandScores, band_scores
from .errors import RopeInterpError, check_index
from .hooking import HookSet
from .hooks import attn_hook, is_key_site

MAX_TOKENS = 256
"""Default number of positions in an attention view (patterns grow as tokens²)."""

MAX_TOKENS_TEXT = 1024
"""Default number of positions in a coloured-token view."""


class CroppedViewWarning(UserWarning):
    """A view shows only part of the sequence (the page says so too)."""


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


def _to_json(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def props_json(props: dict[str, Any]) -> str:
    """Props as a JSON object literal safe inside ``<script>`` (``<`` escaped, no NaN).

    >>> props_json({"tokens": ["</script>"], "values": torch.tensor([0.5, -1.0])})
    '{"tokens": ["\\\\u003c/script>"], "values": [0.5, -1.0]}'
    """
    try:
        text = json.dumps(_to_json(props), allow_nan=False)
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
    """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
"""
    + _VIEW_CSS
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


def html_page(sections: Sequence[tuple[str | None, Any]], title: str = "rope_interp") -> str:
    """One offline HTML document from ``(title, item)`` sections.

    Items: a :class:`View`, an HTML string (inserted as is), a matplotlib Figure
    (embedded as a base64 PNG) or a DataFrame. The circuitsvis bundle is inlined
    once, only if some section is a View.

    >>> page = html_page([("Notes", "<p>hello</p>")], title="demo")
    >>> "<h2>Notes</h2>" in page and "CircuitsVis" not in page
    True
    """
    body = []
    for sec_title, item in sections:
        if sec_title:
            body.append(f"<h2>{html_lib.escape(sec_title)}</h2>")
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
    path: str | Path, sections: Sequence[tuple[str | None, Any]], title: str = "rope_interp"
) -> Path:
    """Write :func:`html_page` to ``path``; returns the path.

    >>> import tempfile, os
    >>> p = save_html_page(os.path.join(tempfile.mkdtemp(), "r.html"), [("A", "<p>x</p>")])
    >>> p.read_text().count("<h2>A</h2>")
    1
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(sections, title), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- helpers


def _window(n: int, max_tokens: int, start: int) -> tuple[slice, str | None]:
    """Positions to show, and a notice if that is not all of them (also warned)."""
    if max_tokens < 1:
        raise RopeInterpError(f"max_tokens must be >= 1, got {max_tokens}")
    if not 0 <= start < n:
        raise RopeInterpError(f"start={start} is outside the sequence (0..{n - 1})")
    stop = min(n, start + max_tokens)
    if start == 0 and stop == n:
        return slice(0, n), None
    notice = (
        f"Showing positions {start}..{stop - 1} of {n} ({n - (stop - start)} not shown; "
        f"max_tokens={max_tokens}, start={start})."
    )
    if start > 0:
        notice += f" Attention to keys before position {start} is not drawn."
    warnings.warn(notice, CroppedViewWarning, stacklevel=3)
    return slice(start, stop), notice


def _rounded(x: Tensor, digits: int = 4) -> Tensor:
    """float64 rounded to ``digits`` significant digits of ``max|x|`` (short JSON, exact enough)."""
    x = x.detach().cpu().double()
    if not torch.isfinite(x).all():
        raise RopeInterpError("view data contains NaN or infinite values: nothing sensible to draw")
    scale = float(x.abs().max()) if x.numel() else 0.0
    if scale == 0.0:
        return x
    decimals = min(15, max(0, digits - 1 - math.floor(math.log10(scale))))
    return torch.round(x, decimals=decimals)


def _heads_first(pattern: Tensor, batch: int, name: str) -> Tensor:
    if pattern.ndim == 4:
        pattern = pattern[batch]
    if pattern.ndim != 3 or pattern.shape[-1] != pattern.shape[-2]:
        raise RopeInterpError(
            f"{name} must be [head, pos, pos] or [batch, head, pos, pos], got {tuple(pattern.shape)}"
        )
    return pattern


def _check_tokens(tokens_str: Sequence[str], n: int, what: str) -> list[str]:
    tokens = [str(t) for t in tokens_str]
    if len(tokens) != n:
        raise RopeInterpError(f"{len(tokens)} token labels for {n} positions of {what}")
    return tokens


def _lower_tri(x: Tensor) -> Tensor:
    """Zero the entries above the diagonal (keys after the query), which circuitsvis greys out anyway."""
    return torch.tril(x)


def token_labels(model: Any, tokens: Any, batch: int = 0) -> list[str]:
    """String labels of one sequence: the tokenizer's pieces, or ``#id`` for models without one.

    >>> from rope_interp.testing import tiny_model
    >>> token_labels(tiny_model(), torch.tensor([[3, 1, 4]]))
    ['#3', '#1', '#4']
    """
    toks = adapter.to_tokens(model, tokens)[batch]
    if getattr(model, "tokenizer", None) is None:
        return [f"#{int(t)}" for t in toks]
    return [str(s) for s in model.to_str_tokens(toks)]


# ---------------------------------------------------------------------------- views


def attention_diff(
    tokens_str: Sequence[str],
    clean_pattern: Float[Tensor, "*batch head pos pos"],
    intervened_pattern: Float[Tensor, "*batch head pos pos"],
    heads: Sequence[int] | None = None,
    *,
    head_labels: Sequence[str] | None = None,
    intervened_label: str = "intervened",
    batch: int = 0,
    max_heads: int = 4,
    max_tokens: int = MAX_TOKENS,
    start: int = 0,
    title: str = "Attention: clean vs intervened",
) -> View:
    """Clean, intervened and signed difference patterns side by side, one row per head.

    ``heads`` index the head axis of the patterns; ``None`` shows every head if there
    are at most ``max_heads``, else the ``max_heads`` that changed most (mean
    ``|difference|``), with a notice. The difference (intervened − clean) uses a
    diverging scale ``±max|difference|`` shared by all rows.

    >>> p = torch.softmax(torch.randn(2, 5, 5), -1)
    >>> view = attention_diff(list("abcde"), p, p.roll(1, -1), head_labels=["L0H0", "L0H1"])
    >>> [panel.title for panel in view.panels][:3]
    ['L0H0 · clean', 'L0H0 · intervened', 'L0H0 · intervened − clean']
    """
    return _diff_grid(
        tokens_str,
        clean_pattern,
        [(intervened_label, intervened_pattern)],
        heads,
        head_labels=head_labels,
        batch=batch,
        max_heads=max_heads,
        max_tokens=max_tokens,
        start=start,
        title=title,
    )


def _diff_grid(
    tokens_str: Sequence[str],
    clean: Tensor,
    others: list[tuple[str, Tensor]],
    heads: Sequence[int] | None,
    *,
    head_labels: Sequence[str] | None,
    batch: int,
    max_heads: int,
    max_tokens: int,
    start: int,
    title: str,
    notices: Sequence[str] = (),
) -> View:
    clean = _heads_first(clean, batch, "clean_pattern")
    others = [(label, _heads_first(p, batch, f"{label} pattern")) for label, p in others]
    for label, p in others:
        if p.shape != clean.shape:
            raise RopeInterpError(f"{label} pattern {tuple(p.shape)} != clean pattern {tuple(clean.shape)}")
    n_heads, n = clean.shape[0], clean.shape[-1]
    tokens = _check_tokens(tokens_str, n, "the patterns")
    labels = list(head_labels) if head_labels is not None else [f"head {h}" for h in range(n_heads)]
    if len(labels) != n_heads:
        raise RopeInterpError(f"{len(labels)} head_labels for {n_heads} heads")
    notices = list(notices)
    window, crop_notice = _window(n, max_tokens, start)
    if crop_notice:
        notices.append(crop_notice)
    diffs = [(p - clean).detach()[:, window, window].cpu().double() for _, p in others]
    if heads is None:
        heads = list(range(n_heads))
        if n_heads > max_heads:
            change = diffs[0].abs().mean(dim=(1, 2))
            heads = sorted(torch.argsort(change, descending=True)[:max_heads].tolist())
            notices.append(
                f"Showing the {max_heads} of {n_heads} heads whose pattern changed most "
                f"(mean |{others[0][0]} − clean|): {', '.join(labels[h] for h in heads)}."
            )
    else:
        heads = check_index("head", list(heads), n_heads, "the patterns")
    toks = tokens[window]
    panels = []
    scales = [max(float(d[heads].abs().max()), 1e-12) for d in diffs]
    for h in heads:
        panels.append(_pattern_panel(toks, clean[h, window, window], 0.0, 1.0, f"{labels[h]} · clean"))
        for (label, p), d, a in zip(others, diffs, scales, strict=True):
            panels.append(_pattern_panel(toks, p[h, window, window], 0.0, 1.0, f"{labels[h]} · {label}"))
            panels.append(_pattern_panel(toks, d[h], -a, a, f"{labels[h]} · {label} − clean"))
    caption = (
        "Rows: heads; columns: clean pattern, "
        + ", ".join(
            f"{label} pattern, {label} − clean (scale ±{a:.3g})"
            for (label, _), a in zip(others, scales, strict=True)
        )
        + ". Blue = more attention than clean, red = less. Hover a cell for its value."
    )
    return View(title, panels, columns=1 + 2 * len(others), notices=notices, caption=caption)


def _pattern_panel(
    tokens: list[str], values: Tensor, lo: float, hi: float, title: str, digits: int = 4
) -> Panel:
    props = {
        "tokens": tokens,
        "attention": _rounded(_lower_tri(values), digits),
        "minValue": lo,
        "maxValue": hi,
        "maskUpperTri": True,
        "showAxisLabels": True,
    }
    return Panel("AttentionPattern", props, title)


def band_contribution_view(
    tokens_str: Sequence[str],
    band_scores: BandScores,
    band: int,
    *,
    batch: int = 0,
    max_tokens: int = MAX_TOKENS,
    start: int = 0,
) -> View:
    """One band's term in every selected head's scores, and what it does to the pattern.

    Left: the band's score term ``<q_i(m), k_i(n)> / attn_scale`` (signed); right:
    ``pattern − pattern without band i`` (what the band adds, signed; this layer only,
    analytic). Both as circuitsvis AttentionHeads (hover a head to zoom).
    ``band`` is the band number (must be among ``band_scores.bands``).

    >>> from rope_interp import band_scores
    >>> from rope_interp.testing import tiny_model
    >>> bs = band_scores(tiny_model(), torch.tensor([[1, 2, 3, 4]]), layer=0)
    >>> view = band_contribution_view(list("abcd"), bs, band=0)
    >>> [p.component for p in view.panels]
    ['AttentionHeads', 'AttentionHeads']
    """
    if band not in band_scores.bands:
        raise RopeInterpError(f"band {band} is not in these BandScores (bands {band_scores.bands})")
    per_band = band_scores.per_band
    m, n = per_band.shape[-2:]
    if band_scores.q_start != 0 or m != n:
        raise RopeInterpError(
            "band_contribution_view needs square BandScores from band_scores(), not a query chunk "
            f"(q_start={band_scores.q_start}, shape {m}x{n})"
        )
    j = band_scores.bands.index(band)
    tokens = _check_tokens(tokens_str, n, "the band scores")
    window, notice = _window(n, max_tokens, start)
    term = _lower_tri(per_band[batch, :, j][:, window, window])
    effect = (band_scores.pattern() - band_scores.pattern(drop=[j]))[batch][:, window, window]
    names = [f"L{band_scores.layer}H{h}" for h in band_scores.heads]
    a_term = max(float(term.abs().max()), 1e-12)
    a_eff = max(float(effect.abs().max()), 1e-12)

    def heads_panel(values: Tensor, a: float, title: str) -> Panel:
        props = {
            "tokens": tokens[window],
            "attention": _rounded(values),
            "attentionHeadNames": names,
            "minValue": -a,
            "maxValue": a,
            "maskUpperTri": True,
        }
        return Panel("AttentionHeads", props, title)

    caption = f"Layer {band_scores.layer}, band {band}"
    if band_scores.freqs is not None:
        theta = float(band_scores.freqs[j])
        wl = 2 * math.pi / theta if theta > 0 else math.inf
        caption += f" (θ = {theta:.4g} rad/token, wavelength {wl:.4g} tokens)"
    caption += ". Blue = positive, red = negative; each panel's colour scale is printed in its title."
    panels = [
        heads_panel(term, a_term, f"band {band} score term (scale ±{a_term:.3g})"),
        heads_panel(effect, a_eff, f"pattern − pattern without band {band} (scale ±{a_eff:.3g})"),
    ]
    return View(
        f"Band {band} in layer {band_scores.layer}",
        panels,
        columns=2,
        notices=[notice] if notice else [],
        caption=caption,
    )


def band_norm_tokens(
    tokens_str: Sequence[str],
    norms: Float[Tensor, "pos"] | Float[Tensor, "pos k"],
    labels: Sequence[str] | None = None,
    *,
    max_tokens: int = MAX_TOKENS_TEXT,
    start: int = 0,
    title: str = "Band norm per token",
) -> View:
    """Tokens coloured by a band's norm: ``[pos]`` → ColoredTokens, ``[pos, k]`` → ColoredTokensMulti.

    With ``[pos, k]`` (e.g. one column per head, or q and k) the page has a selector
    over the ``k`` columns named by ``labels``.

    >>> view = band_norm_tokens(["a", "b", "c"], torch.tensor([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]]), ["q", "k"])
    >>> view.panels[0].component
    'ColoredTokensMulti'
    """
    if norms.ndim not in (1, 2):
        raise RopeInterpError(f"norms must be [pos] or [pos, k], got {tuple(norms.shape)}")
    tokens = _check_tokens(tokens_str, norms.shape[0], "norms")
    window, notice = _window(norms.shape[0], max_tokens, start)
    values = _rounded(norms[window], 4)
    if values.ndim == 1:
        props = {"tokens": tokens[window], "values": values, "minValue": 0.0}
        props["maxValue"] = max(float(values.abs().max()), 1e-12)
        panel = Panel("ColoredTokens", props)
    else:
        labels = list(labels) if labels is not None else [str(i) for i in range(values.shape[1])]
        if len(labels) != values.shape[1]:
            raise RopeInterpError(f"{len(labels)} labels for {values.shape[1]} columns of norms")
        panel = Panel(
            "ColoredTokensMulti", {"tokens": tokens[window], "values": values, "labels": labels}, title
        )
    caption = "Darker blue = larger norm. Hover a token for its value(s)."
    return View(title, [panel], notices=[notice] if notice else [], caption=caption)


# ---------------------------------------------------------------------------- model conveniences


def layer_band_norms(
    model: Any,
    tokens: Any,
    layer: int,
    band: int,
    *,
    site: str = "rot_q",
    batch: int = 0,
    max_tokens: int = MAX_TOKENS_TEXT,
) -> View:
    """Tokens coloured by band ``band``'s norm at ``site`` of ``layer``, one selectable column per head.

    Norms are the same before and after rotation (``q``/``rot_q``); ``k``/``rot_k``
    have one column per kv head under GQA.

    >>> from rope_interp.testing import tiny_model
    >>> view = layer_band_norms(tiny_model(), torch.tensor([[1, 2, 3]]), layer=1, band=0, site="k")
    >>> view.panels[0].props["labels"]
    ['kv head 0', 'kv head 1']
    """
    from .capture import BandCapture

    toks = adapter.to_tokens(model, tokens)
    layer = adapter.layers(model, layer)[0]
    cap = BandCapture(model, layers=[layer], sites=[site], bands=[band])
    with torch.no_grad(), cap:
        model(toks[:, : min(toks.shape[1], max_tokens)], stop_at_layer=layer + 1)  # causal: prefix is exact
    norms = cap.norms(layer, site)[batch, :, :, 0]  # [pos, head]
    prefix = "kv head" if is_key_site(site) else "head"
    labels = [f"{prefix} {h}" for h in range(norms.shape[1])]
    view = band_norm_tokens(
        token_labels(model, toks[:, : norms.shape[0]], batch),
        norms,
        labels,
        title=f"Layer {layer}, band {band}: ‖{site}‖ per token",
    )
    if toks.shape[1] > max_tokens:
        notice = f"Showing positions 0..{max_tokens - 1} of {toks.shape[1]} (max_tokens={max_tokens})."
        warnings.warn(notice, CroppedViewWarning, stacklevel=2)
        view.notices.append(notice)
    return view


def layer_band_view(
    model: Any,
    tokens: Any,
    layer: int,
    band: int,
    *,
    heads: Sequence[int] | None = None,
    batch: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> View:
    """:func:`band_contribution_view` computed on a model (first ``max_tokens`` positions).

    >>> from rope_interp.testing import tiny_model
    >>> view = layer_band_view(tiny_model(), torch.tensor([[1, 2, 3, 4]]), layer=1, band=2, heads=[0, 3])
    >>> view.panels[0].props["attentionHeadNames"]
    ['L1H0', 'L1H3']
    """
    toks = adapter.to_tokens(model, tokens)
    n = toks.shape[1]
    toks = toks[:, :max_tokens]  # causal: scores of a prefix are exact
    bs = band_scores(model, toks, layer, heads=heads, bands=[band])
    view = band_contribution_view(
        token_labels(model, toks, batch), bs, band, batch=batch, max_tokens=max_tokens
    )
    if n > max_tokens:
        notice = f"Showing positions 0..{max_tokens - 1} of {n} (max_tokens={max_tokens})."
        warnings.warn(notice, CroppedViewWarning, stacklevel=2)
        view.notices.append(notice)
    return view


def ablation_view(
    model: Any,
    tokens: Any,
    layer: int,
    bands: Sequence[int],
    heads: Sequence[int] | None = None,
    *,
    hooks: HookSet | None = None,
    hooks_label: str = "full model",
    batch: int = 0,
    max_heads: int = 4,
    max_tokens: int = MAX_TOKENS,
) -> View:
    """Clean vs band-removed attention at ``layer``: analytic, and optionally through the full model.

    "bands removed" is :meth:`BandScores.pattern` with those bands' score terms dropped
    — exact for this layer alone, with everything upstream clean. If ``hooks`` (any
    :class:`~rope_interp.hooking.HookSet`, e.g. a band ablation of earlier layers too)
    is given, the pattern the model computes under those hooks is added as more columns.

    >>> from rope_interp.testing import tiny_model
    >>> view = ablation_view(tiny_model(), torch.tensor([[1, 2, 3, 4, 5]]), layer=1, bands=[0, 1])
    >>> view.columns, len(view.panels)
    (3, 12)
    """
    toks = adapter.to_tokens(model, tokens)
    n = toks.shape[1]
    toks = toks[:, :max_tokens]  # causal: patterns of a prefix are exact
    bs = band_scores(model, toks, layer, heads=heads)
    drop = [bs.bands.index(b) for b in check_index("band", list(bands), len(bs.bands))]
    clean = bs.pattern()
    band_txt = ",".join(str(bs.bands[j]) for j in drop)
    others = [(f"bands {band_txt} removed", bs.pattern(drop=drop))]
    if hooks is not None:
        store: dict[str, Tensor] = {}

        def save(pattern: Tensor, hook: Any) -> None:
            store["pattern"] = pattern.detach()

        with torch.no_grad():
            model.run_with_hooks(
                toks,
                fwd_hooks=hooks.fwd_hooks() + [(attn_hook(bs.layer, "pattern"), save)],
                stop_at_layer=bs.layer + 1,
            )
        others.append((hooks_label, store["pattern"][:, bs.heads].to(clean.dtype)))
    notices = []
    if n > max_tokens:
        notices.append(f"Showing positions 0..{max_tokens - 1} of {n} (max_tokens={max_tokens}).")
        warnings.warn(notices[-1], CroppedViewWarning, stacklevel=2)
    return _diff_grid(
        token_labels(model, toks, batch),
        clean,
        others,
        None if heads is None else list(range(len(bs.heads))),
        head_labels=[f"L{bs.layer}H{h}" for h in bs.heads],
        batch=batch,
        max_heads=max_heads,
        max_tokens=max_tokens,
        start=0,
        title=f"Layer {bs.layer}: attention with bands {band_txt} removed",
        notices=notices,
    )
