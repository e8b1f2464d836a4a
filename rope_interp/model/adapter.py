"""Thin adapter over TransformerLens models: the one place that reads model internals.

Analyses and interventions never touch ``model.blocks[...]`` or ``model.cfg``
directly; they ask this module. Two model classes are supported:
``HookedTransformer`` and ``TransformerBridge`` (whose HF-side facts are read by
:mod:`rope_interp.model.bridge`); supporting another means teaching these functions,
not every caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import validate as _validate
from ..errors import ContextLengthError, NotAModelError, NotRotaryError, PaddingError, TokenError
from ..validate import indices
from . import bridge as _bridge


def config(model: Any) -> Any:
    """The model's ``HookedTransformerConfig`` (or bridge config)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise NotAModelError(
            f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__} (no .cfg); "
            "load one with rope_interp.load_model(...)"
        )
    return cfg


def check_rotary(model: Any) -> Any:
    """Return the config, or raise :class:`NotRotaryError` for a non-rotary model
    (and :class:`~rope_interp.model.bridge.BridgeRotaryHooksError` for a bridge that never
    fires ``hook_rot_q``/``hook_rot_k``). Read the rotary layout with
    :func:`rotary_dim` / :func:`adjacent_pairs`, not from the config."""
    cfg = config(model)
    pos = getattr(cfg, "positional_embedding_type", None)
    if pos != "rotary":
        raise NotRotaryError(
            f"model {getattr(cfg, 'model_name', '?')!r} uses positional_embedding_type={pos!r}; "
            "rope_interp needs a rotary (RoPE) model (positional_embedding_type='rotary')"
        )
    if is_bridge(model):
        _bridge.check_rot_hooks(model)
    elif getattr(cfg, "rotary_dim", None) is None:
        raise NotRotaryError("model config has positional_embedding_type='rotary' but no rotary_dim")
    return cfg


def is_bridge(model: Any) -> bool:
    """True for a ``TransformerBridge``, False for a ``HookedTransformer``."""
    return _bridge.is_bridge(model)


def rotary_dim(model: Any) -> int:
    """Number of rotated dims per head (``d_head`` unless partial rotary)."""
    cfg = check_rotary(model)
    if is_bridge(model):  # the bridge config's rotary_dim is often unset: read the applied tables
        return _bridge.rotary_dim(model)
    return int(cfg.rotary_dim)


def adjacent_pairs(model: Any) -> bool:
    """GPT-J pairing ``(2i, 2i+1)`` (True) or NeoX/Llama halves ``(i, i + rotary_dim/2)`` (False)."""
    return bool(getattr(config(model), "rotary_adjacent_pairs", False))


def n_layers(model: Any) -> int:
    return int(config(model).n_layers)


def n_heads(model: Any) -> int:
    return int(config(model).n_heads)


def n_kv_heads(model: Any) -> int:
    cfg = config(model)
    n = getattr(cfg, "n_key_value_heads", None)
    if n is None or getattr(cfg, "ungroup_grouped_query_attention", False):
        return int(cfg.n_heads)
    return int(n)


def kv_map(model: Any) -> Tensor:
    """LongTensor[n_heads]: the kv head each query head reads (``h // (n_heads // n_kv)``)."""
    h, g = n_heads(model), n_kv_heads(model)
    return torch.arange(h) // (h // g)


def layers(model: Any, layers: int | Sequence[int] | None) -> list[int]:
    """Normalise a layer selection (None = all) and check it is in range."""
    n = n_layers(model)
    if layers is None:
        return list(range(n))
    return indices("layer", layers, n)


def heads(model: Any, heads: int | Sequence[int] | None) -> list[int]:
    n = n_heads(model)
    if heads is None:
        return list(range(n))
    return indices("head", heads, n)


def attn(model: Any, layer: int) -> Any:
    """The attention module of block ``layer``."""
    return model.blocks[layer].attn


def attn_scale(model: Any, layer: int) -> float:
    """The divisor of ``q·k`` in this layer's attention scores."""
    if is_bridge(model):
        return _bridge.attn_scale(model, layer)
    return float(attn(model, layer).attn_scale)


def softcap(model: Any) -> float | None:
    if is_bridge(model):
        return _bridge.softcap(model)
    cap = getattr(config(model), "attn_scores_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def check_decomposable(model: Any) -> None:
    """Raise when something between ``hook_rot_q`` and the scores breaks ``scores = q·k/scale``."""
    cfg = config(model)
    if getattr(cfg, "use_logn_attn", False):
        raise NotImplementedError(
            "this model rescales queries by log(n) after hook_rot_q (use_logn_attn=True); "
            "the per-band decomposition of hook_attn_scores is not implemented for it"
        )


def rotary_tables(model: Any, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
    """(sin, cos), each float64 ``[n_pos, rotary_dim]``, as this layer's attention computes them.

    Calls the attention module's own ``calculate_sin_cos_rotary`` (so every
    frequency scaling TransformerLens implements is included by construction) in
    float64, which keeps low frequencies exact even for fp16/bf16 models whose
    cached buffers are rounded. Falls back to the cached ``rotary_sin/rotary_cos``.
    """
    cfg = check_rotary(model)
    if is_bridge(model):
        return _bridge.rotary_tables(model, layer, n_pos)
    mod = attn(model, layer)
    fn = getattr(mod, "calculate_sin_cos_rotary", None)
    if fn is not None:
        base = mod._rotary_base() if hasattr(mod, "_rotary_base") else cfg.rotary_base
        sin, cos = fn(cfg.rotary_dim, n_pos, base=base, dtype=torch.float64)
        return sin.double(), cos.double()
    sin, cos = mod.rotary_sin, mod.rotary_cos
    return sin[:n_pos].double().cpu(), cos[:n_pos].double().cpu()


def rotary_buffers(model: Any, layer: int) -> tuple[Tensor, Tensor]:
    """The sin/cos tables the model actually applies (its buffers, in its dtype).

    A bridge has no buffers: its tables for ``n_ctx`` positions in the model's dtype.
    """
    if is_bridge(model):
        sin, cos = _bridge.rotary_tables(model, layer, int(config(model).n_ctx))
        dt = next(model.parameters()).dtype
        return sin.to(dt), cos.to(dt)
    mod = attn(model, layer)
    return mod.rotary_sin, mod.rotary_cos


def _is_text(tokens: Any) -> bool:
    return isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and len(tokens) > 0 and all(isinstance(t, str) for t in tokens)
    )


def tokens_and_mask(model: Any, tokens: Any, what: str = "tokens") -> tuple[Tensor, Tensor | None]:
    """Like :func:`to_tokens`, but a batch of strings of different lengths is padded (as
    ``model.to_tokens`` pads it) and returned with its mask; ``(tokens, None)`` when nothing was padded.

    The mask is bool ``[batch, pos]``, True on real tokens. It is computed from each string's own
    length (not from the pad id, which is often also a real token such as EOS), on the side the
    tokenizer pads (``tokenizer.padding_side``).

    >>> from rope_interp.model.testing import tiny_model
    >>> toks, mask = tokens_and_mask(tiny_model(), torch.tensor([[1, 2, 3]]))
    >>> toks.shape, mask
    (torch.Size([1, 3]), None)
    """
    mask = None
    if _is_text(tokens):
        if getattr(model, "tokenizer", None) is None:
            raise TokenError("model has no tokenizer: pass token ids instead of text")
        texts = [tokens] if isinstance(tokens, str) else list(tokens)
        ids = model.to_tokens(texts)
        if len(texts) > 1:
            lengths = [int(model.to_tokens(t).shape[1]) for t in texts]
            n = ids.shape[1]
            if min(lengths) != n:
                pos = torch.arange(n)[None, :]
                lens = torch.tensor(lengths)[:, None]
                if getattr(model.tokenizer, "padding_side", "right") == "left":
                    mask = pos >= n - lens
                else:
                    mask = pos < lens
        tokens = ids
    elif isinstance(tokens, (list, tuple)) and any(isinstance(t, str) for t in tokens):
        raise TokenError(
            f"{what}: a list mixing strings and other values; pass only strings or only token ids"
        )
    if not isinstance(tokens, Tensor):
        try:
            tokens = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TokenError(
                f"{what} must be a string, a list of strings or integer token ids [batch, pos], "
                f"got {type(tokens).__name__} ({err})"
            ) from None
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise TokenError(f"{what} must be [batch, pos] or [pos], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise TokenError(f"{what} are empty (shape {tuple(tokens.shape)}): pass at least one token")
    _validate.token_ids(tokens, int(config(model).d_vocab), what)
    n_ctx = int(config(model).n_ctx)
    if tokens.shape[1] > n_ctx:
        raise ContextLengthError(
            f"{tokens.shape[1]} tokens exceed the model's context of n_ctx={n_ctx}; "
            "truncate the input or split it into windows"
        )
    dev = device(model)
    return tokens.to(dev), None if mask is None else mask.to(dev)


def to_tokens(model: Any, tokens: Any, what: str = "tokens") -> Tensor:
    """Accept a string, list of strings, or integer ids [pos] / [batch, pos]; return [batch, pos].

    Raises :class:`~rope_interp.errors.TokenError` for ids outside the vocabulary, non-integer
    or empty input, :class:`ContextLengthError` for sequences longer than the model's context, and
    :class:`~rope_interp.errors.PaddingError` for a batch of strings of different lengths (its
    padding would be counted as real tokens; entry points that honour a mask, such as
    :meth:`~rope_interp.read.capture.BandStats.update`, use :func:`tokens_and_mask` instead).

    >>> from rope_interp.model.testing import tiny_model
    >>> to_tokens(tiny_model(), [1, 2, 3]).shape
    torch.Size([1, 3])
    >>> to_tokens(tiny_model(), [-1, 2])
    Traceback (most recent call last):
    ...
    rope_interp.errors.TokenError: tokens holds token id -1, outside the model's vocabulary 0..49; tokenize with the model's own tokenizer (model.to_tokens)
    """
    toks, mask = tokens_and_mask(model, tokens, what)
    if mask is not None:
        lengths = mask.sum(1).tolist()
        raise PaddingError(
            f"{what}: these {len(lengths)} strings have different lengths ({lengths} tokens), so the batch "
            "would be padded and the padding counted as real tokens; pass one string at a time, "
            "or strings of equal token length"
        )
    return toks


def device(model: Any) -> torch.device:
    """Where the model's weights live (inputs and results follow it)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(getattr(config(model), "device", None) or "cpu")


def local_window(model: Any, layer: int) -> int | None:
    """Sliding-window size of a local-attention layer (keys ``m - window < n <= m``), else None."""
    if is_bridge(model):
        return _bridge.local_window(model, layer)
    mod = attn(model, layer)
    if getattr(mod, "attn_type", "global") == "local":
        return int(config(model).window_size)
    return None
