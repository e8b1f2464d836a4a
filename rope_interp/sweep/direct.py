"""The analytic direct effect: attention patterns with a band's score term changed, from the exact
per-band decomposition (:mod:`rope_interp.read.decompose`), for every band at once, without extra forwards.

* :func:`ablated_patterns` / :func:`direct_effect_sweep` — each band's term removed (zeroing
  the band on q or k of that layer alone), read at ``hook_pattern``.
* :func:`band_changed_patterns` — the pure maths behind them and behind the QK-fixed
  attribution tier (:func:`rope_interp.sweep.tiers.qk_attribution_sweep`): the pattern of every head
  when band ``b``'s q and/or k components are replaced, one band (and optionally one position)
  at a time. The soft-cap and the causal / local-window mask are the decomposition's own
  (:func:`rope_interp.read.masks.masked_pattern`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import pass_view
from ..errors import RopeInterpError
from ..model import adapter
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..read.capture import BandCapture
from ..read.decompose import band_score_terms
from ..read.masks import masked_pattern
from .grid import SweepResult


def _drop_each_pattern(
    terms: Float[Tensor, "batch head band q k"],
    remainder: Tensor,
    softcap: float | None,
    window: int | None = None,
) -> Float[Tensor, "batch head band q k"]:
    """Softmax patterns with each band's term removed in turn (pure maths)."""
    s = (terms.sum(2) + remainder)[:, :, None] - terms
    return masked_pattern(s, softcap, window)


def band_changed_patterns(
    q: Float[Tensor, "batch pos head band 2"],
    k: Float[Tensor, "batch pos kv_head band 2"],
    q_new: Float[Tensor, "batch pos head band 2"] | None,
    k_new: Float[Tensor, "batch pos kv_head band 2"] | None,
    rest: Float[Tensor, "batch head pos pos"],
    attn_scale: float,
    softcap: float | None = None,
    window: int | None = None,
    pos: int | None = None,
) -> tuple[Float[Tensor, "batch head pos pos"], Float[Tensor, "batch head band pos pos"]]:
    """The pattern, and the pattern with band ``b``'s q (``q_new``) and/or k (``k_new``) replaced, for every ``b``.

    ``rest``: the pass-through score term. ``pos``: replace only position ``pos`` (the query
    row of q and the key column of k), else every position. Slot ``b`` of the result is
    exactly ``hook_pattern`` of a run where only band ``b`` of this layer changed.

    >>> q, k = torch.randn(1, 4, 2, 3, 2), torch.randn(1, 4, 1, 3, 2)
    >>> p, pb = band_changed_patterns(q, k, torch.zeros_like(q), None, torch.zeros(1, 2, 4, 4), 1.0)
    >>> terms, _ = band_score_terms(q, k, 1.0)
    >>> torch.allclose(pb, _drop_each_pattern(terms, torch.zeros(1, 2, 4, 4), None), atol=1e-6)
    True
    """
    t, _ = band_score_terms(q, k, attn_scale)
    s = t.sum(2) + rest
    qn = q if q_new is None else q_new
    kn = k if k_new is None else k_new
    if pos is None:
        t_new, _ = band_score_terms(qn, kn, attn_scale)
        d = t_new - t
    else:
        n = q.shape[1]
        row = torch.zeros(n, dtype=torch.bool, device=q.device)
        row[pos] = True
        qm = torch.where(row[None, :, None, None, None], qn, q)
        km = torch.where(row[None, :, None, None, None], kn, k)
        t_new, _ = band_score_terms(qm, km, attn_scale)
        d = t_new - t
    return masked_pattern(s, softcap, window), masked_pattern(s[:, :, None] + d, softcap, window)


def pass_scores(
    q_act: Float[Tensor, "batch q_pos head d_head"],
    k_act: Float[Tensor, "batch k_pos kv_head d_head"],
    rotary_dim: int,
    attn_scale: float,
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """The score term of the pass-through dims (zeros without partial rotary), float32.

    >>> pass_scores(torch.ones(1, 2, 2, 6), torch.ones(1, 2, 1, 6), 4, 2.0)[0, 0].tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    qp, kp = pass_view(q_act, rotary_dim).float(), pass_view(k_act, rotary_dim).float()
    b, m, h, dp = qp.shape
    n, g = kp.shape[1], kp.shape[2]
    if dp == 0:
        return qp.new_zeros(b, h, m, n)
    s = torch.einsum("bmgrd,bngd->bgrmn", qp.reshape(b, m, g, h // g, dp), kp)
    return s.reshape(b, h, m, n) / attn_scale


def _layer_terms(model, cap: BandCapture, spec: RotaryBands, L: int) -> tuple[Tensor, Tensor]:
    q, k = cap[L, "rot_q"], cap[L, "rot_k"]
    qp, kp = cap.passthrough(L, "rot_q"), cap.passthrough(L, "rot_k")
    return band_score_terms(q, k, float(spec.attn_scale[L]), qp, kp)


def ablated_patterns(
    model: Model,
    tokens: Any,
    layer: int,
    *,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
) -> Float[Tensor, "batch head band q_pos k_pos"]:
    """Pattern of every head of ``layer`` with each band removed, all bands at once (one forward up to ``layer``).

    Slot ``j`` of the band axis is the pattern without band ``bands[j]``; it equals
    ``hook_pattern`` of a run that zeroes that band on q (or k) of this layer only.

    >>> from rope_interp.model.testing import tiny_model
    >>> ablated_patterns(tiny_model(), torch.tensor([[1, 2, 3]]), 0).shape
    torch.Size([1, 4, 8, 3, 3])
    """
    spec = RotaryBands.from_model(model)
    adapter.check_decomposable(model)
    L = adapter.layers(model, layer)[0]
    tokens = adapter.to_tokens(model, tokens)
    cap = BandCapture(model, layers=[L], keep_passthrough=True)
    with torch.no_grad(), cap:
        model(tokens, stop_at_layer=L + 1)
    terms, rest = _layer_terms(model, cap, spec, L)
    heads = adapter.heads(model, heads)
    bands = spec.bands(bands)
    terms, rest = terms[:, heads], rest[:, heads]
    others = [i for i in range(spec.n_bands) if i not in set(bands)]
    if others:
        rest = rest + terms[:, :, others].sum(2)
    return _drop_each_pattern(
        terms[:, :, bands], rest, adapter.softcap(model), adapter.local_window(model, L)
    )


def direct_effect_sweep(
    model: Model,
    tokens: Any,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
    distance: Literal["tv", "kl"] = "tv",
    max_bytes: int = 512 * 1024**2,
    progress: bool = True,
) -> SweepResult:
    """``values [layer, head, band]``: how far each head's pattern moves when one band is removed.

    Mean over batch and query positions of the total-variation distance (``"tv"``, in
    [0, 1]) or ``KL(full || without band)`` (``"kl"``) between pattern rows. One forward
    (up to the last layer asked) captures q/k; the rest is the exact decomposition.

    >>> from rope_interp.model.testing import tiny_model
    >>> r = direct_effect_sweep(tiny_model(), torch.tensor([[1, 2, 3, 4]]), progress=False)
    >>> r.dims, tuple(r.values.shape)
    (('layer', 'head', 'band'), (2, 4, 8))
    """
    if distance not in ("tv", "kl"):
        raise RopeInterpError(f"unknown distance {distance!r}; expected 'tv' or 'kl'")
    spec = RotaryBands.from_model(model)
    adapter.check_decomposable(model)
    tokens = adapter.to_tokens(model, tokens)
    layers, heads = adapter.layers(model, layers), adapter.heads(model, heads)
    bands = spec.bands(bands)
    cap = BandCapture(model, layers=layers, keep_passthrough=True)
    with torch.no_grad(), cap:
        model(tokens, stop_at_layer=max(layers) + 1)
    b, n = tokens.shape
    chunk = max(1, max_bytes // max(1, 4 * b * len(heads) * n * n))
    softcap, rows = adapter.softcap(model), []
    for L in progress_bar(layers, desc="direct effect", enabled=progress, leave=True):
        terms, rest = _layer_terms(model, cap, spec, L)
        terms, rest = terms[:, heads], rest[:, heads]
        window = adapter.local_window(model, L)
        full = masked_pattern(terms.sum(2) + rest, softcap, window)
        out = []
        for i in range(0, len(bands), chunk):
            sel = bands[i : i + chunk]
            others_rest = rest + terms.sum(2) - terms[:, :, sel].sum(2)
            p = _drop_each_pattern(terms[:, :, sel], others_rest, softcap, window)  # [b, h, c, q, k]
            f = full[:, :, None]
            if distance == "tv":
                d = 0.5 * (p - f).abs().sum(-1)
            else:
                d = (f * (f.clamp_min(1e-30).log() - p.clamp_min(1e-30).log())).sum(-1)
            out.append(d.mean(dim=(0, 3)))  # [h, c]
        rows.append(torch.cat(out, dim=1))
    values = torch.stack(rows)
    coords = {"layer": layers, "head": heads, "band": bands}
    return SweepResult(values.cpu(), ("layer", "head", "band"), coords, 0.0, f"direct effect ({distance})")
