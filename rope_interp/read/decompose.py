"""Exact decomposition of attention scores into per-band terms.

For query position ``m``, key position ``n`` and head ``h`` (reading kv head ``g``)::

    scores[b, h, m, n] = sum_i <q_i(m), k_i(n)> / attn_scale  +  <q_pass(m), k_pass(n)> / attn_scale

where ``q_i`` is band ``i`` of ``hook_rot_q`` (2 numbers) and ``q_pass`` the
non-rotary dims. This equals ``hook_attn_scores`` before the soft-cap (Gemma-2)
and the causal mask, to float rounding. Everything accumulates in float32 (or
float64 if asked) whatever the model's dtype.

Pure maths: :func:`band_score_terms`. On a model: :func:`band_scores` and the
memory-bounded :func:`iter_band_scores`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LayerError
from ..model import adapter
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import positive_int
from .capture import BandCapture
from .masks import causal_mask, masked_scores


def band_score_terms(
    q_bands: Float[Tensor, "batch q_pos head band 2"],
    k_bands: Float[Tensor, "batch k_pos kv_head band 2"],
    attn_scale: float,
    q_pass: Float[Tensor, "batch q_pos head n_pass"] | None = None,
    k_pass: Float[Tensor, "batch k_pos kv_head n_pass"] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Float[Tensor, "batch head band q_pos k_pos"], Float[Tensor, "batch head q_pos k_pos"]]:
    """Per-band score terms and the pass-through remainder, from rotated q/k band views.

    Under GQA (``head = kv_head * group``) query head ``h`` is paired with kv head
    ``h // group``, as TransformerLens' ``repeat_interleave`` does.

    >>> import torch
    >>> q, k = torch.randn(1, 3, 2, 4, 2), torch.randn(1, 5, 1, 4, 2)
    >>> terms, rest = band_score_terms(q, k, attn_scale=2.0)
    >>> terms.shape, rest.shape
    (torch.Size([1, 2, 4, 3, 5]), torch.Size([1, 2, 3, 5]))
    >>> full = torch.einsum("bmhd,bnd->bhmn", q.flatten(-2), k[:, :, 0].flatten(-2)) / 2
    >>> torch.allclose(terms.sum(2), full, atol=1e-6)
    True
    """
    b, m, h, nb, _ = q_bands.shape
    g = k_bands.shape[2]
    if h % g:
        raise ValueError(f"query heads ({h}) must be a multiple of key heads ({g})")
    r = h // g
    q = q_bands.to(dtype).reshape(b, m, g, r, nb, 2)
    k = k_bands.to(dtype)
    terms = torch.einsum("bmgric,bngic->bgrimn", q, k).reshape(b, h, nb, m, k.shape[1]) / attn_scale
    if q_pass is not None and q_pass.shape[-1] > 0:
        if k_pass is None:
            raise ValueError("q_pass given without k_pass")
        qp = q_pass.to(dtype).reshape(b, m, g, r, -1)
        rest = torch.einsum("bmgrd,bngd->bgrmn", qp, k_pass.to(dtype)).reshape(b, h, m, -1) / attn_scale
    else:
        rest = terms.new_zeros(b, h, m, k.shape[1])
    return terms, rest


@dataclass
class BandScores:
    """Per-band attention-score terms of one layer.

    Attributes:
        per_band: ``[batch, head, band, q_pos, k_pos]`` — band ``bands[j]``'s term in slot ``j``.
        remainder: ``[batch, head, q_pos, k_pos]`` — the pass-through dims plus every band
            not selected, so that ``per_band.sum(2) + remainder`` is always the full pre-softcap score.
        layer, heads, bands: what was selected (query-head and band indices).
        q_start: absolute position of ``q_pos`` 0 (non-zero for chunks).
        softcap: the model's score soft-cap (None for most models).
    """

    per_band: Float[Tensor, "batch head band q_pos k_pos"]
    remainder: Float[Tensor, "batch head q_pos k_pos"]
    layer: int
    heads: list[int]
    bands: list[int]
    q_start: int = 0
    softcap: float | None = None
    window: int | None = None
    freqs: Tensor | None = field(default=None, repr=False)

    def total(self) -> Float[Tensor, "batch head q_pos k_pos"]:
        """The pre-softcap, unmasked scores: sum of all terms."""
        return self.per_band.sum(2) + self.remainder

    def causal_mask(self) -> Tensor:
        """Bool ``[q_pos, k_pos]``: True where the model lets the query see the key
        (key <= query, and within the sliding window of a local-attention layer)."""
        m, n = self.per_band.shape[-2:]
        return causal_mask(m, n, self.window, self.q_start, self.per_band.device)

    def scores(self, drop: Sequence[int] = (), keep_only: Sequence[int] | None = None) -> Tensor:
        """Scores as the model would compute them (soft-cap, then causal mask = -inf),
        optionally without the terms of the selected bands listed in ``drop``
        (positions in ``self.bands``) or with only ``keep_only`` of them (plus the remainder).
        """
        if keep_only is not None:
            s = self.per_band[:, :, list(keep_only)].sum(2) + self.remainder
        else:
            s = self.total()
            if len(drop):
                s = s - self.per_band[:, :, list(drop)].sum(2)
        return masked_scores(s, self.softcap, self.window, self.q_start)

    def pattern(self, drop: Sequence[int] = (), keep_only: Sequence[int] | None = None) -> Tensor:
        """Softmax of :meth:`scores` over keys: ``[batch, head, q_pos, k_pos]``."""
        return torch.softmax(self.scores(drop, keep_only), dim=-1)

    def mean_abs(self) -> Float[Tensor, "head band"]:
        """Mean ``|term|`` over batch and causal (query, key) pairs, per head and band."""
        mask = self.causal_mask().to(self.per_band.dtype)
        tot = (self.per_band.abs() * mask).sum(dim=(0, 3, 4))
        return tot / (mask.sum() * self.per_band.shape[0])

    def mean(self) -> Float[Tensor, "head band"]:
        """Signed mean term over batch and causal pairs, per head and band."""
        mask = self.causal_mask().to(self.per_band.dtype)
        return (self.per_band * mask).sum(dim=(0, 3, 4)) / (mask.sum() * self.per_band.shape[0])

    def to_dataframe(self):
        """One row per (head, band): mean and mean-absolute contribution over causal pairs."""
        import pandas as pd

        ma, mu = self.mean_abs(), self.mean()
        rows = [
            {
                "layer": self.layer,
                "head": h,
                "band": b,
                "mean": float(mu[i, j]),
                "mean_abs": float(ma[i, j]),
                "share_abs": float(ma[i, j] / ma[i].sum().clamp_min(1e-30)),
            }
            for i, h in enumerate(self.heads)
            for j, b in enumerate(self.bands)
        ]
        return pd.DataFrame(rows)


def _selection(model: Model, layer: int, heads, bands) -> tuple[RotaryBands, int, list[int], list[int]]:
    adapter.check_decomposable(model)
    spec = RotaryBands.from_model(model)
    if not isinstance(layer, int) and getattr(layer, "ndim", 1) != 0:
        raise LayerError(
            f"band_scores takes a single layer (an int), got {layer!r}; loop over layers for several"
        )
    layer = adapter.layers(model, layer)[0]
    heads = adapter.heads(model, heads)
    bands = spec.bands(bands)
    return spec, layer, heads, bands


QK = tuple[Tensor, Tensor, Tensor, Tensor]  # rot_q bands, rot_k bands, q pass, k pass


def _capture_qk(model: Model, tokens: Tensor, layer: int) -> QK:
    cap = BandCapture(model, layers=[layer], sites=("rot_q", "rot_k"), keep_passthrough=True)
    with torch.no_grad(), cap:
        model(tokens, stop_at_layer=layer + 1)
    return (
        cap[layer, "rot_q"],
        cap[layer, "rot_k"],
        cap.passthrough(layer, "rot_q"),
        cap.passthrough(layer, "rot_k"),
    )


def _terms(
    spec: RotaryBands,
    qk: QK,
    layer: int,
    heads: list[int],
    bands: list[int],
    q_slice: slice,
    softcap: float | None,
    window: int | None,
    dtype: torch.dtype,
) -> BandScores:
    """Terms for queries ``q_slice`` against keys ``0 .. q_slice.stop`` (the causal prefix)."""
    q, k, qp, kp = qk
    q, qp = q[:, q_slice], qp[:, q_slice]
    k, kp = k[:, : q_slice.stop], kp[:, : q_slice.stop]
    if heads != list(range(spec.n_heads)):
        # pair each selected query head with its own kv head (groups of one)
        kv = spec.kv_map[heads].to(k.device)
        q, qp = q[:, :, heads], qp[:, :, heads]
        k, kp = k[:, :, kv], kp[:, :, kv]
    scale = float(spec.attn_scale[layer])
    all_terms, rest = band_score_terms(q, k, scale, qp, kp, dtype=dtype)
    if bands != list(range(spec.n_bands)):
        chosen = set(bands)
        unselected = [i for i in range(spec.n_bands) if i not in chosen]
        if unselected:
            rest = rest + all_terms[:, :, unselected].sum(2)
        all_terms = all_terms[:, :, bands]
    return BandScores(
        per_band=all_terms,
        remainder=rest,
        layer=layer,
        heads=heads,
        bands=bands,
        q_start=q_slice.start or 0,
        softcap=softcap,
        window=window,
        freqs=spec.freqs[layer, bands],
    )


def estimate_bytes(
    batch: int, n_heads: int, n_bands: int, q_len: int, k_len: int, dtype=torch.float32
) -> int:
    """Bytes of the ``per_band`` tensor for these sizes (the working set is about 2x)."""
    return batch * n_heads * n_bands * q_len * k_len * torch.empty((), dtype=dtype).element_size()


def band_scores(
    model: Model,
    tokens: Any,
    layer: int,
    *,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    max_bytes: int = 2 * 1024**3,
) -> BandScores:
    """Contribution of every band to every head's attention scores at ``layer``.

    Returns a :class:`BandScores` whose ``per_band`` is ``[batch, head, band, q_pos, k_pos]``
    and whose ``scores()`` equals ``hook_attn_scores`` (``total()`` is the same before
    soft-cap and causal mask).
    Runs the model only up to ``layer``. Raises a clear error instead of allocating
    more than ``max_bytes``: select ``heads``/``bands`` or use :func:`iter_band_scores`.

    >>> from rope_interp.model.testing import tiny_model
    >>> bs = band_scores(tiny_model(), torch.tensor([[1, 2, 3, 4]]), layer=1)
    >>> bs.per_band.shape
    torch.Size([1, 4, 8, 4, 4])
    """
    spec, layer, heads, bands = _selection(model, layer, heads, bands)
    tokens = adapter.to_tokens(model, tokens)
    b, n = tokens.shape
    need = estimate_bytes(b, len(heads), len(bands), n, n, dtype)
    if need > max_bytes:
        raise MemoryError(
            f"band_scores would allocate {need / 1024**3:.1f} GiB for [{b}, {len(heads)}, {len(bands)}, {n}, {n}]"
            f" (max_bytes={max_bytes / 1024**3:.1f} GiB): pass heads=/bands= to select fewer, "
            "or use iter_band_scores(..., chunk_size=...) to stream query chunks"
        )
    qk = _capture_qk(model, tokens, layer)
    return _terms(
        spec,
        qk,
        layer,
        heads,
        bands,
        slice(0, n),
        adapter.softcap(model),
        adapter.local_window(model, layer),
        dtype,
    )


def iter_band_scores(
    model: Model,
    tokens: Any,
    layer: int,
    *,
    chunk_size: int = 256,
    heads: Sequence[int] | None = None,
    bands: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[BandScores]:
    """Stream :class:`BandScores` over chunks of ``chunk_size`` query positions.

    One forward pass (up to ``layer``); each chunk holds
    ``[batch, head, band, chunk_size, k_len]`` with ``k_len`` cropped to the causal
    prefix (keys after the chunk's last query are masked anyway), so peak memory
    is that of one chunk. ``chunk.q_start`` gives the absolute query offset.

    >>> from rope_interp.model.testing import tiny_model
    >>> chunks = list(iter_band_scores(tiny_model(), torch.arange(10)[None], 0, chunk_size=4))
    >>> [(c.q_start, tuple(c.per_band.shape[-2:])) for c in chunks]
    [(0, (4, 4)), (4, (4, 8)), (8, (2, 10))]
    """
    positive_int("chunk_size", chunk_size)
    spec, layer, heads, bands = _selection(model, layer, heads, bands)
    tokens = adapter.to_tokens(model, tokens)
    n = tokens.shape[1]
    qk = _capture_qk(model, tokens, layer)
    softcap, window = adapter.softcap(model), adapter.local_window(model, layer)
    for start in range(0, n, chunk_size):
        q_slice = slice(start, min(n, start + chunk_size))
        yield _terms(spec, qk, layer, heads, bands, q_slice, softcap, window, dtype)
