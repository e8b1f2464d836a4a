"""``TransformerBridge`` support: what :class:`~.adapter.BridgeAdapter` needs to read a bridge.

A bridge wraps a HuggingFace model instead of re-implementing it, so some facts
``HookedTransformer`` keeps in its config live in the HF modules instead:

* the rotary tables come from the HF rotary embedding (``rotary_emb``, per layer
  type for Gemma-3), called exactly as the model calls it, so every HF
  ``rope_type`` (linear, dynamic, YaRN with its attention factor, Llama-3 ...) is
  included by construction; the bridge config's ``rotary_dim``/``rotary_base`` are
  often unset or defaults and are never used;
* the score scale is the HF attention's ``scaling`` (``q·k * scaling``), the soft-cap
  its ``attn_logit_softcapping``, the local window its ``sliding_window``.

The bridge fires ``hook_rot_q``/``hook_rot_k`` only where it re-implements rotary
attention itself (``PositionEmbeddingsAttentionBridge``: Llama, Mistral, Qwen,
Gemma, Phi, OLMo, ...). For GPT-NeoX/Pythia, GPT-J and CodeGen the hook points
exist but never fire, so rope_interp raises :class:`BridgeRotaryHooksError`
instead of silently recording nothing.

KV cache: the bridge caches keys *after* rotation (``hook_rot_k`` sees only the new
keys of a decoding step), HookedTransformer *before* (``hook_rot_k`` sees all keys).

>>> from rope_interp.model.testing import tiny_bridge
>>> bridge = tiny_bridge("llama")
>>> is_bridge(bridge), rotary_dim(bridge), round(attn_scale(bridge, 0) ** 2, 6)
(True, 8, 8.0)
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import RopeInterpError
from .kind import Model

WORKAROUND = (
    "load the model as a HookedTransformer instead (rope_interp.load_model(name, bridge=False) or "
    "transformer_lens.HookedTransformer.from_pretrained(name)), which fires hook_rot_q/hook_rot_k "
    "for every rotary architecture"
)
WORKAROUND_TL4 = (  # TransformerLens 4 has no HookedTransformer
    "TransformerLens 4 has no HookedTransformer, which fires hook_rot_q/hook_rot_k for every rotary "
    "architecture: install the TransformerLens 3 set (bash scripts/bootstrap.sh, requirements.lock) and "
    "load the model with rope_interp.load_model(name, bridge=False)"
)


def workaround() -> str:
    """What to do about a bridge rope_interp cannot read, for the installed TransformerLens."""
    from .compat import has_hooked_transformer

    return WORKAROUND if has_hooked_transformer() else WORKAROUND_TL4


class BridgeRotaryHooksError(RopeInterpError, NotImplementedError):
    """A TransformerBridge whose attention never fires ``hook_rot_q``/``hook_rot_k``."""


def is_bridge(model: Model) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (False for HookedTransformer and others)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # a TransformerLens without the bridge
        return False
    return isinstance(model, TransformerBridge)


def hf_model(model: Model) -> Any:
    """The HF model a bridge wraps (``original_model``; typed ``Any``: nn.Module attributes are untyped)."""
    return getattr(model, "original_model")  # noqa: B009


def hf_config(model: Model) -> Any:
    """The wrapped HF model's (text) config."""
    cfg = hf_model(model).config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def hf_attention(model: Model, layer: int) -> Any:
    """The HF attention module the bridge wraps in block ``layer``."""
    return model.blocks[layer].attn.original_component


def fires_rot_hooks(model: Model, layer: int = 0) -> bool:
    """Whether block ``layer``'s attention bridge calls ``hook_rot_q``/``hook_rot_k`` in its forward."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    return isinstance(model.blocks[layer].attn, PositionEmbeddingsAttentionBridge)


def check_rot_hooks(model: Model) -> None:
    """Raise :class:`BridgeRotaryHooksError` unless every layer fires the rot hooks.

    >>> from rope_interp.model.testing import tiny_bridge
    >>> check_rot_hooks(tiny_bridge("llama"))  # fires: nothing to say
    >>> check_rot_hooks(tiny_bridge("gptj"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rope_interp.model.bridge.BridgeRotaryHooksError: this TransformerBridge (GPTJForCausalLM, ...) never fires ...
    """
    from .compat import warn_known_breaks

    warn_known_breaks(bridge=True)
    nope = getattr(hf_config(model), "no_rope_layers", None)
    if nope is not None and not all(nope):
        skipped = [i for i, use in enumerate(nope) if not use]
        raise BridgeRotaryHooksError(
            f"this {type(hf_model(model)).__name__} skips rotary embeddings on layers {skipped[:6]}"
            f"{'...' if len(skipped) > 6 else ''} (NoPE: no_rope_layers), which rope_interp's band tables would "
            "report as rotating; rope_interp does not support models with NoPE layers yet"
        )
    silent = [i for i in range(len(model.blocks)) if not fires_rot_hooks(model, i)]
    if silent:
        arch = getattr(model.cfg, "architecture", None) or type(hf_attention(model, silent[0])).__name__
        kind = type(model.blocks[silent[0]].attn).__name__
        raise BridgeRotaryHooksError(
            f"this TransformerBridge ({arch}, attention {kind}) never fires hook_rot_q/hook_rot_k "
            f"(layers {silent[:3]}{'...' if len(silent) > 3 else ''}), so rope_interp cannot see the "
            f"rotated queries and keys; {workaround()}"
        )


def _rotary_module(model: Model, layer: int) -> tuple[Any, dict[str, Any]]:
    """The HF rotary embedding that feeds block ``layer`` and the extra kwargs it needs."""
    attn = model.blocks[layer].attn
    mod = getattr(hf_attention(model, layer), "rotary_emb", None)  # per-layer rotary (rare)
    if mod is None:
        mod = getattr(attn, "_rotary_emb", None)
    if mod is None:
        mod = getattr(model, "rotary_emb", None)
    if mod is None:
        found = [
            m for _, m in hf_model(model).named_modules() if type(m).__name__.endswith("RotaryEmbedding")
        ]
        mod = found[0] if found else None
    if mod is None:
        raise BridgeRotaryHooksError(
            f"found no rotary embedding module for block {layer} of this bridge; {workaround()}"
        )
    mod = getattr(mod, "original_component", None) or mod  # the HF module, so no bridge hook fires
    kwargs: dict[str, Any] = {}
    if "layer_type" in inspect.signature(mod.forward).parameters:
        types = getattr(hf_config(model), "layer_types", None)
        if types is not None:
            kwargs["layer_type"] = types[layer]
    return mod, kwargs


def _hf_tables(model: Model, layer: int, n_pos: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) ``[n_pos, width]`` from the HF rotary module, as the model calls it."""
    mod, kwargs = _rotary_module(model, layer)
    dev = next(hf_model(model).parameters()).device
    x = torch.zeros(1, 1, 1, dtype=dtype, device=dev)
    pos = torch.arange(n_pos, device=dev)[None]
    with torch.no_grad():
        out = mod(x, pos, **kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise BridgeRotaryHooksError(
            f"the rotary module {type(mod).__name__} does not return (cos, sin) tables; {workaround()}"
        )
    cos, sin = out
    return cos.reshape(n_pos, -1), sin.reshape(n_pos, -1)


def _adjacent(model: Model) -> bool:
    return bool(getattr(model.cfg, "rotary_adjacent_pairs", False))


def _layout(model: Model, table: Tensor) -> Tensor:
    """Half-duplicated HF table ``[.., rotary_dim]`` in the pairing the bridge applies."""
    d_head = int(model.cfg.d_head)
    if 2 * table.shape[-1] == d_head:
        # GPT-OSS convention: un-duplicated half-width tables over the full head
        from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

        if get_rotary_pct_from_config(model.blocks[0].attn.config) == 1.0:
            table = torch.cat([table, table], dim=-1)
    if _adjacent(model):  # GLM/ERNIE: first half, each value repeated for pairs (2i, 2i+1)
        table = table[..., : table.shape[-1] // 2].repeat_interleave(2, dim=-1)
    return table


def rotary_dim(model: Model) -> int:
    """Width of the rotated part of each head: the width of the tables the bridge applies."""
    cos, _ = _hf_tables(model, 0, 1, torch.float32)
    return int(_layout(model, cos).shape[-1])


def rotary_tables(
    model: Model, layer: int, n_pos: int
) -> tuple[Float[Tensor, "pos rotary_dim"], Float[Tensor, "pos rotary_dim"]]:
    """(sin, cos), float64 ``[n_pos, rotary_dim]`` on the CPU, as block ``layer`` applies them.

    Computed by the HF rotary module itself (HF computes the angles in float32 and
    we ask for a float64 result, so they are not rounded to a half-precision
    model's dtype). Includes HF's ``attention_scaling`` (the YaRN amplitude).

    >>> from rope_interp.model.testing import tiny_bridge
    >>> sin, cos = rotary_tables(tiny_bridge("phi"), 0, 3)  # partial rotary: 4 of 8 dims
    >>> tuple(sin.shape), sin.dtype
    ((3, 4), torch.float64)
    """
    cos, sin = _hf_tables(model, layer, n_pos, torch.float64)
    return _layout(model, sin).double().cpu(), _layout(model, cos).double().cpu()


def table_angles(
    cos: Float[Tensor, "*batch pos width"],
    sin: Float[Tensor, "*batch pos width"],
    n_bands: int,
    dtype: torch.dtype,
) -> Float[Tensor, "*batch pos n_bands"]:
    """Each band's angle ``theta_i * m`` (wrapped to ``(-pi, pi]``) from the tables ``hook_cos``/``hook_sin`` carry.

    Those are the HF tables before the bridge lays them out, and their column ``i`` is band
    ``i`` in every pairing the bridge applies (half-duplicated Llama/NeoX halves, GPT-OSS
    half-width tables, GLM adjacent pairs, partial rotary). The amplitude (YaRN) cancels.

    >>> from rope_interp.model.testing import tiny_bridge
    >>> cos, sin = _hf_tables(tiny_bridge("llama"), 0, 3, torch.float64)
    >>> table_angles(cos, sin, 4, torch.float64)[:, :2].round(decimals=6).tolist()
    [[0.0, 0.0], [1.0, 0.1], [2.0, 0.2]]
    """
    return torch.atan2(sin[..., :n_bands].to(dtype), cos[..., :n_bands].to(dtype))


def attn_scale(model: Model, layer: int) -> float:
    """Divisor of ``q·k``: the bridge computes ``q·k * hf_attn.scaling`` (default ``d_head**-0.5``)."""
    attn = hf_attention(model, layer)
    scaling = getattr(attn, "scaling", None)
    if scaling is None:
        scaling = int(getattr(attn, "head_dim", model.cfg.d_head)) ** -0.5
    return 1.0 / float(scaling)


def softcap(model: Model, layer: int = 0) -> float | None:
    cap = getattr(hf_attention(model, layer), "attn_logit_softcapping", None)
    return float(cap) if cap is not None and cap > 0 else None


def local_window(model: Model, layer: int) -> int | None:
    """HF ``sliding_window`` of a local layer (keys ``m - window < n <= m``), else None."""
    window = getattr(hf_attention(model, layer), "sliding_window", None)
    return int(window) if window else None


def boot(
    hf_model: Any,
    tokenizer: Any,
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """``TransformerBridge.boot_transformers`` on an in-memory HF model, offline (no hub call).

    TransformerLens uses a given ``hf_model`` as it is, so the model is moved to ``device``
    and its floating parameters cast to ``dtype`` here; buffers keep their dtype (HF keeps
    the rotary ``inv_freq`` in float32, as ``from_pretrained`` would).
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.to(device)
    for param in hf_model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    hf_model.config.architectures = [type(hf_model).__name__]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(deprecated|compatibility mode).*")
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    return bridge.eval()
