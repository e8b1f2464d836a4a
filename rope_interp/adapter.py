"""Thin adapter over TransformerLens models: the one place that reads model internals.

Analyses and interventions never touch ``model.blocks[...]`` or ``model.cfg``
directly; they ask this module. Two model classes are supported:
``HookedTransformer`` and ``TransformerBridge`` (whose HF-side facts are read by
:mod:`rope_interp.bridge`); supporting another means teaching these functions,
not every caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import bridge as _bridge
from .errors import ContextLengthError, NotRotaryError, check_index


def config(model: Any) -> Any:
    """The model's ``HookedTransformerConfig`` (or bridge config)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(
            f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__} (no .cfg)"
        )
    return cfg


def check_rotary(model: Any) -> Any:
    """Return the config, or raise :class:`NotRotaryError` for a non-rotary model
    (and :class:`~rope_interp.bridge.BridgeRotaryHooksError` for a bridge that never
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
    return check_index("layer", layers, n)


def heads(model: Any, heads: int | Sequence[int] | None) -> list[int]:
    n = n_heads(model)
    if heads is None:
        return list(range(n))
    return check_index("head", heads, n)


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


def to_tokens(model: Any, tokens: Any) -> Tensor:
    """Accept a string, list of strings, or LongTensor [pos] / [batch, pos]; return [batch, pos].

    Raises :class:`ContextLengthError` for sequences longer than the model's context.
    """
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)
    ):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("model has no tokenizer: pass token ids instead of text")
        tokens = model.to_tokens(tokens)
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos] or [pos], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError("tokens are empty (0 positions)")
    n_ctx = int(config(model).n_ctx)
    if tokens.shape[1] > n_ctx:
        raise ContextLengthError(
            f"{tokens.shape[1]} tokens exceed the model's context of n_ctx={n_ctx}; "
            "truncate the input or split it into windows"
        )
    return tokens.to(device(model))


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
