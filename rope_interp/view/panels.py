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
page and a :class:`CroppedViewWarning`): 128 by default for attention views (a
128-token, 4-head ablation view is ~2.4 MB and draws in seconds), 1024 for tokens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import RopeInterpError
from ..model import adapter
from ..model.hooks import HookSet, attn_hook, is_key_site
from ..model.kind import Model
from ..read.decompose import BandScores, band_scores
from ..validate import indices
from .html import Panel, View, circuitsvis_bundle, html_page, props_json, save_html_page  # noqa: F401

MAX_TOKENS = 128
"""Default number of positions in an attention view. Patterns grow as tokens²: at 256 tokens
an ablation view of 4 heads is 5.7 MB and a 9-head band view takes Chromium ~2 minutes to draw."""

MAX_TOKENS_TEXT = 1024
"""Default number of positions in a coloured-token view."""


class CroppedViewWarning(UserWarning):
    """A view shows only part of the sequence (the page says so too)."""


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


def _crop_tokens(model: Model, tokens: Any, max_tokens: int) -> tuple[Tensor, list[str]]:
    """The first ``max_tokens`` positions (exact for causal models) and a notice if that is not all."""
    toks = adapter.to_tokens(model, tokens)
    n = toks.shape[1]
    if n <= max_tokens:
        return toks, []
    notice = f"Showing positions 0..{max_tokens - 1} of {n} (max_tokens={max_tokens})."
    warnings.warn(notice, CroppedViewWarning, stacklevel=3)
    return toks[:, :max_tokens], [notice]


def token_labels(model: Model, tokens: Any, batch: int = 0) -> list[str]:
    """String labels of one sequence: the tokenizer's pieces, or ``#id`` for models without one.

    >>> from rope_interp.model.testing import tiny_model
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
    intervened_pattern: Float[Tensor, "*batch head pos pos"] | Sequence[tuple[str, Tensor]],
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

    ``intervened_pattern`` may also be a list of ``(label, pattern)`` for several
    interventions (two more columns each). ``heads`` index the head axis of the
    patterns; ``None`` shows every head if there are at most ``max_heads``, else the
    ``max_heads`` that changed most (mean ``|difference|`` of the first intervention),
    with a notice. Each difference (intervened − clean) uses a diverging scale
    ``±max|difference|`` shared by all rows.

    >>> p = torch.softmax(torch.randn(2, 5, 5), -1)
    >>> view = attention_diff(list("abcde"), p, p.roll(1, -1), head_labels=["L0H0", "L0H1"])
    >>> [panel.title for panel in view.panels][:3]
    ['L0H0 · clean', 'L0H0 · intervened', 'L0H0 · intervened − clean']
    """
    if isinstance(intervened_pattern, Tensor):
        intervened_pattern = [(intervened_label, intervened_pattern)]
    clean = _heads_first(clean_pattern, batch, "clean_pattern")
    others = [(label, _heads_first(p, batch, f"{label} pattern")) for label, p in intervened_pattern]
    for label, p in others:
        if p.shape != clean.shape:
            raise RopeInterpError(f"{label} pattern {tuple(p.shape)} != clean pattern {tuple(clean.shape)}")
    n_heads, n = clean.shape[0], clean.shape[-1]
    tokens = _check_tokens(tokens_str, n, "the patterns")
    labels = list(head_labels) if head_labels is not None else [f"head {h}" for h in range(n_heads)]
    if len(labels) != n_heads:
        raise RopeInterpError(f"{len(labels)} head_labels for {n_heads} heads")
    window, crop_notice = _window(n, max_tokens, start)
    notices = [crop_notice] if crop_notice else []
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
    heads = indices("head", heads, n_heads, "the patterns")
    toks, panels = tokens[window], []
    scales = [max(float(d[heads].abs().max()), 1e-12) for d in diffs]
    for h in heads:
        panels.append(_pattern_panel(toks, clean[h, window, window], 0.0, 1.0, f"{labels[h]} · clean"))
        for (label, p), d, a in zip(others, diffs, scales, strict=True):
            panels.append(_pattern_panel(toks, p[h, window, window], 0.0, 1.0, f"{labels[h]} · {label}"))
            panels.append(_pattern_panel(toks, d[h], -a, a, f"{labels[h]} · {label} − clean"))
    cols = [
        f"{label} pattern, {label} − clean (scale ±{a:.3g})"
        for (label, _), a in zip(others, scales, strict=True)
    ]
    caption = (
        f"Rows: heads; columns: clean pattern, {', '.join(cols)}."
        " Blue = more attention than clean, red = less. Hover a cell for its value."
    )
    return View(title, panels, columns=1 + 2 * len(others), notices=notices, caption=caption)


def _pattern_panel(
    tokens: list[str], values: Tensor, lo: float, hi: float, title: str, digits: int = 4
) -> Panel:
    props = {
        "tokens": tokens,
        "attention": _rounded(torch.tril(values), digits),
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
    >>> from rope_interp.model.testing import tiny_model
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
    term = torch.tril(per_band[batch, :, j][:, window, window])
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
        panel = Panel("ColoredTokensMulti", {"tokens": tokens[window], "values": values, "labels": labels})
    caption = "Darker blue = larger norm. Hover a token for its value(s)."
    return View(title, [panel], notices=[notice] if notice else [], caption=caption)


# ---------------------------------------------------------------------------- model conveniences


def layer_band_norms(
    model: Model,
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

    >>> from rope_interp.model.testing import tiny_model
    >>> view = layer_band_norms(tiny_model(), torch.tensor([[1, 2, 3]]), layer=1, band=0, site="k")
    >>> view.panels[0].props["labels"]
    ['kv head 0', 'kv head 1']
    """
    from ..read.capture import BandCapture

    toks, notices = _crop_tokens(model, tokens, max_tokens)
    layer = adapter.layers(model, layer)[0]
    cap = BandCapture(model, layers=[layer], sites=[site], bands=[band])
    with torch.no_grad(), cap:
        model(toks, stop_at_layer=layer + 1)
    norms = cap.norms(layer, site)[batch, :, :, 0]  # [pos, head]
    prefix = "kv head" if is_key_site(site) else "head"
    labels = [f"{prefix} {h}" for h in range(norms.shape[1])]
    title = f"Layer {layer}, band {band}: ‖{site}‖ per token"
    view = band_norm_tokens(token_labels(model, toks, batch), norms, labels, title=title)
    view.notices[:0] = notices
    return view


def layer_band_view(
    model: Model,
    tokens: Any,
    layer: int,
    band: int,
    *,
    heads: Sequence[int] | None = None,
    batch: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> View:
    """:func:`band_contribution_view` computed on a model (first ``max_tokens`` positions).

    >>> from rope_interp.model.testing import tiny_model
    >>> view = layer_band_view(tiny_model(), torch.tensor([[1, 2, 3, 4]]), layer=1, band=2, heads=[0, 3])
    >>> view.panels[0].props["attentionHeadNames"]
    ['L1H0', 'L1H3']
    """
    toks, notices = _crop_tokens(model, tokens, max_tokens)
    bs = band_scores(model, toks, layer, heads=heads, bands=[band])
    view = band_contribution_view(token_labels(model, toks, batch), bs, band, batch=batch)
    view.notices[:0] = notices
    return view


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0–2,5"``."""
    out: list[str] = []
    for v in sorted(values):
        if out and out[-1].split("–")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{v}"
        else:
            out.append(str(v))
    return ",".join(out)


def ablation_view(
    model: Model,
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
    :class:`~rope_interp.model.hooks.HookSet`, e.g. a band ablation of earlier layers too)
    is given, the pattern the model computes under those hooks is added as more columns.
    ``heads=None`` shows the ``max_heads`` heads the removal changes most.

    >>> from rope_interp.model.testing import tiny_model
    >>> view = ablation_view(tiny_model(), torch.tensor([[1, 2, 3, 4, 5]]), layer=1, bands=[0, 1, 2])
    >>> view.title, view.columns, len(view.panels)
    ('Layer 1: attention with bands 0–2 removed', 3, 12)
    """
    toks, notices = _crop_tokens(model, tokens, max_tokens)  # causal: patterns of a prefix are exact
    bs = band_scores(model, toks, layer, heads=heads)
    drop = indices("band", bands, len(bs.bands))  # all bands selected: position == band
    clean = bs.pattern()
    others = [(f"bands {_ranges(drop)} removed", bs.pattern(drop=drop))]
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
    view = attention_diff(
        token_labels(model, toks, batch),
        clean,
        others,
        None if heads is None else range(len(bs.heads)),
        head_labels=[f"L{bs.layer}H{h}" for h in bs.heads],
        batch=batch,
        max_heads=max_heads,
        max_tokens=max_tokens,
        title=f"Layer {bs.layer}: attention with bands {_ranges(drop)} removed",
    )
    view.notices[:0] = notices
    return view
