"""Shared plumbing of the analyses: input windows, progress bars, prefix means, figures.

Every analysis accepts the same kinds of input and turns them into a stream of
``[batch, pos]`` token windows with :func:`iter_windows`, so memory depends on
the window size, never on the length of the text:

* a string (tokenised with the model's tokenizer; with ``window`` set, a long
  text is cut into windows, each starting with the BOS token when the model
  prepends one);
* a LongTensor ``[pos]`` or ``[batch, pos]`` (cut along positions when ``window`` is set);
* an iterable (list, generator...) of any of those.

>>> import torch
>>> from rope_interp.model.testing import tiny_model
>>> model = tiny_model()
>>> [tuple(w.shape) for w in iter_windows(model, torch.arange(40) % 50, window=16)]
[(1, 16), (1, 16), (1, 8)]
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ContextLengthError, LayerError, RopeInterpError, TokenError
from ..model import adapter
from ..model.hooks import FwdHooks, attn_hook
from ..model.kind import Model
from ..progress import progress_bar
from ..read.capture import band_hooks
from ..validate import positive_int


class EmptyInputError(RopeInterpError):
    """The text or token input holds nothing to analyse."""


def _check_window(model: Model, window: int | None) -> int | None:
    if window is None:
        return None
    n_ctx = int(adapter.config(model).n_ctx)
    positive_int("window", window, minimum=2)
    if window > n_ctx:
        raise ContextLengthError(f"window of {window} tokens exceeds the model's context of n_ctx={n_ctx}")
    return int(window)


def _text_windows(model: Model, text: str, window: int | None) -> Iterator[Tensor]:
    if not text.strip():
        raise EmptyInputError("the text is empty: nothing to analyse")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TokenError("model has no tokenizer: pass token ids instead of text")
    if window is None:  # truncate=False: a too-long text is an error, not silently cut
        yield adapter.to_tokens(model, model.to_tokens(text, truncate=False))
        return
    bos = bool(getattr(adapter.config(model), "default_prepend_bos", True))
    body = model.to_tokens(text, prepend_bos=False, truncate=False)[0]
    bos_id = tokenizer.bos_token_id if bos else None
    step = window - 1 if bos_id is not None else window
    for start in range(0, body.shape[0], step):
        chunk = body[start : start + step]
        if bos_id is not None:
            chunk = torch.cat([chunk.new_tensor([bos_id]), chunk])
        yield adapter.to_tokens(model, chunk)


def _token_windows(model: Model, tokens: Any, window: int | None) -> Iterator[Tensor]:
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.numel() == 0:
        raise EmptyInputError("the tokens are empty: nothing to analyse")
    if window is None:
        yield adapter.to_tokens(model, tokens)
        return
    for start in range(0, tokens.shape[-1], window):
        yield adapter.to_tokens(model, tokens[..., start : start + window])


def _is_id(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _token_list(data: Sequence[Any]) -> Tensor:
    """A list of ints ``[pos]`` or of equal-length lists of ints ``[batch, pos]`` as a tensor; else TokenError."""
    if all(_is_id(x) for x in data):
        return torch.tensor(list(data))
    if all(isinstance(x, (list, tuple)) and x and all(_is_id(y) for y in x) for x in data):
        lengths = sorted({len(x) for x in data})
        if len(lengths) > 1:
            raise TokenError(
                f"a list of token-id lists is read as one [batch, pos] batch, but its rows have lengths "
                f"{lengths}; pad them (and pass a mask) or pass the sequences as separate tensors"
            )
        return torch.tensor([list(x) for x in data])
    kinds = sorted({type(x).__name__ for x in data})
    raise TokenError(
        f"a list of token ids must hold only ints (or equal-length lists of ints), got items of type {kinds}; "
        "pass text, a LongTensor, or a list of texts/tensors"
    )


def iter_windows(model: Model, data: Any, window: int | None = None) -> Iterator[Tensor]:
    """Token windows ``[batch, pos]`` on the model's device from text, tokens or an iterable of them.

    Raises :class:`EmptyInputError` for empty input and :class:`ContextLengthError` for a
    window (or, without ``window``, an input) longer than the model's context.
    """
    window = _check_window(model, window)
    if data is None or isinstance(data, (bool, numbers.Number)):
        raise TokenError(
            f"data must be text, token ids or an iterable of them, got {data!r} ({type(data).__name__})"
        )
    if isinstance(data, (list, tuple)) and data and not all(isinstance(x, (str, Tensor)) for x in data):
        data = _token_list(data)
    if isinstance(data, str):
        yield from _text_windows(model, data, window)
        return
    if isinstance(data, Tensor):
        yield from _token_windows(model, data, window)
        return
    n = 0
    for item in data:
        for w in iter_windows(model, item, window):
            n += 1
            yield w
    if n == 0:
        raise EmptyInputError("no batches given: nothing to analyse")


def count_windows(model: Model, data: Any, window: int | None) -> int | None:
    """Number of windows :func:`iter_windows` will yield, when cheap to know (else None)."""
    if isinstance(data, Tensor) and data.numel():
        n = data.shape[-1]
        return 1 if window is None else -(-n // window)
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], (str, int)):
        return None if window is not None else len(data)
    return None


def windows(
    model: Model, data: Any, window: int | None, progress: bool, desc: str, limit: int | None = None
) -> Iterator[Tensor]:
    """:func:`iter_windows` wrapped in a tqdm progress bar (``progress=False`` hides it); ``limit``: only
    the first that many windows (the bar counts to the limit)."""
    import itertools

    window = _check_window(model, window)  # before count_windows divides by it
    it = itertools.islice(iter_windows(model, data, window), limit)
    total = count_windows(model, data, window)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    yield from progress_bar(it, desc=desc, enabled=progress, total=total)


def prefix_mean(
    x: Float[Tensor, "batch pos ..."], start: int = 0, exclude_self: bool = False
) -> Float[Tensor, "batch pos ..."]:
    """Mean of ``x[:, start .. m]`` (inclusive) at every position ``m``, along axis 1.

    With ``exclude_self`` the mean runs over ``start .. m-1``. Positions with an
    empty range get 0. Used to average score terms over causal keys in O(pos)
    (a score term is linear in the key).

    >>> import torch
    >>> prefix_mean(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), start=1).tolist()
    [[0.0, 2.0, 2.5, 3.0]]
    """
    y = x.clone()
    y[:, :start] = 0
    c = y.cumsum(1)
    n = torch.arange(x.shape[1], device=x.device) - start + 1
    if exclude_self:
        c = c - y
        n = n - 1
    shape = (1, -1) + (1,) * (x.ndim - 2)
    keep = (n > 0).view(shape)
    return torch.where(keep, c / n.clamp_min(1).to(c.real.dtype).view(shape), torch.zeros_like(c))


def heatmap(ax: Any, values: Tensor, title: str, xlabel: str, ylabel: str, cmap: str = "viridis", **kw: Any):
    """Draw ``values [rows, cols]`` on ``ax`` with a colourbar, title and axis labels."""
    im = ax.imshow(values.detach().cpu().float().numpy(), aspect="auto", origin="lower", cmap=cmap, **kw)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(im, ax=ax)
    return im


def figure(n_axes: int = 1, width: float = 6.0, height: float = 4.0):
    """A matplotlib Figure with ``n_axes`` side-by-side axes, detached from pyplot.

    The user's backend is left alone (library code never calls ``matplotlib.use``). The figure is made by
    pyplot, so a notebook's inline backend knows how to show it, then closed at once: pyplot keeps no
    reference (no leak over a loop, no second copy drawn at the end of a notebook cell). It shows when it
    is a cell's value (``image/png``) and saves with ``fig.savefig``; ``plt.show()`` does not see it.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_axes, figsize=(width * n_axes, height), squeeze=False)
    plt.close(fig)
    return fig, list(axes[0])


def layer_head_band_frame(layers: Sequence[int], columns: dict[str, Tensor]):
    """Long table of ``[layer, head, band]`` tensors: one row per cell, model layer numbers in ``layer``.

    Columns come in ``columns``' order after ``layer``, ``head``, ``band``; a ``[layer, band]``
    tensor (a band frequency, a per-band flag) is repeated for every head.

    >>> df = layer_head_band_frame([3], {"x": torch.zeros(1, 2, 2), "theta": torch.tensor([[1.0, 0.5]])})
    >>> df.shape, list(df.columns), df["theta"].tolist()
    ((4, 5), ['layer', 'head', 'band', 'x', 'theta'], [1.0, 0.5, 1.0, 0.5])
    """
    import pandas as pd

    L, H, B = next(t for t in columns.values() if t.dim() == 3).shape
    idx = torch.cartesian_prod(torch.arange(L), torch.arange(H), torch.arange(B))
    data = {
        "layer": [layers[i] for i in idx[:, 0].tolist()],
        "head": idx[:, 1].tolist(),
        "band": idx[:, 2].tolist(),
    }
    per_cell = {name: (t[:, None, :].expand(L, H, B) if t.dim() == 2 else t) for name, t in columns.items()}
    return pd.DataFrame(data | {name: t.flatten().tolist() for name, t in per_cell.items()})


def layer_list(model: Model, layers: Any) -> list[int]:
    """Validated, sorted, de-duplicated layers (None = all); an empty selection is refused."""
    empty_seq = isinstance(layers, (list, tuple, range)) and len(layers) == 0
    empty_array = getattr(layers, "ndim", 0) == 1 and getattr(layers, "shape", (1,))[0] == 0
    if empty_seq or empty_array:
        raise LayerError("layers=[] selects no layer: pass layer numbers, or None for every layer")
    return sorted(set(adapter.layers(model, layers)))


def pattern_hooks(layers: Sequence[int], fn: Callable[[Tensor, Any, int], Tensor]) -> FwdHooks:
    """Hooks calling ``fn(pattern, hook, i)`` at each layer's ``hook_pattern``, ``i`` the layer's index in ``layers``.

    >>> [name for name, _ in pattern_hooks([2, 5], lambda p, hook, i: p)]
    ['blocks.2.attn.hook_pattern', 'blocks.5.attn.hook_pattern']
    """
    return [
        (attn_hook(layer, "pattern"), lambda p, hook, i=i: fn(p, hook, i)) for i, layer in enumerate(layers)
    ]


def qk_pair_hooks(model: Model, layers: Sequence[int], fn: Callable[..., None]) -> FwdHooks:
    """Hooks calling ``fn(layer, q_bands, k_bands, q_pass, k_pass)`` once per layer, post-rotation.

    ``hook_rot_q`` fires before ``hook_rot_k`` in the same attention call, so the
    query of one layer is held only until its key arrives.
    """
    pending: dict[int, tuple[Tensor, Tensor]] = {}

    def on_band(a: Any) -> None:
        if a.site == "rot_q":
            pending[a.layer] = (a.bands.detach(), a.passthrough.detach())
        else:
            q, qp = pending.pop(a.layer)
            fn(a.layer, q, a.bands.detach(), qp, a.passthrough.detach())

    return band_hooks(model, on_band, list(layers), ("rot_q", "rot_k"))


def text_tokens(model: Model, data: Any, n: int | None = None) -> Tensor:
    """The first ``n`` tokens (all: None) of the first row of ``data`` (ids, a string, or a list of windows)."""
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], Tensor):
        data = torch.cat([w[:1] for w in data], -1)
    tokens = adapter.to_tokens(model, data) if not isinstance(data, Tensor) else data
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    return tokens[:1, :n] if n else tokens[:1]
