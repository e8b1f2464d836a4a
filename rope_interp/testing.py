"""Builders of tiny random rotary models, for tests, doctests and examples.

Kept in the package (not in ``tests/``) so doctests and user code can use them.

>>> m = tiny_model(layout="gptj", d_head=8, rotary_dim=4)
>>> m.cfg.rotary_adjacent_pairs, m.cfg.rotary_dim
(True, 4)
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Layout = Literal["neox", "gptj"]

# One entry per layout family the acceptance tests must cover.
LAYOUTS: dict[str, dict[str, Any]] = {
    "neox": dict(layout="neox"),
    "gptj": dict(layout="gptj"),
    "partial": dict(layout="neox", d_head=16, rotary_dim=8),
    "partial_gptj": dict(layout="gptj", d_head=16, rotary_dim=10),
    "gqa": dict(n_heads=6, n_key_value_heads=2),
    "mha": dict(n_key_value_heads=None),
    "ntk_by_parts": dict(
        use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=8.0,
        NTK_by_parts_low_freq_factor=1.0,
        NTK_by_parts_high_freq_factor=4.0,
        NTK_original_ctx_len=32,
        rotary_base=500000,
    ),
    "linear_scaled": dict(rotary_scaling_factor=4.0),
    "local_global": dict(
        use_local_attn=True,
        attn_types=["local", "global"],
        window_size=8,
        rotary_base_local=10000,
        rotary_base=1000000,
    ),
    "yarn": dict(
        use_yarn_rope=True,
        yarn_factor=4.0,
        yarn_original_max_position_embeddings=32,
        yarn_attention_factor=1.2,
    ),
}


def tiny_model(
    layout: Layout = "neox",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_key_value_heads: int | None = 2,
    d_head: int = 16,
    rotary_dim: int | None = None,
    n_ctx: int = 64,
    d_vocab: int = 50,
    seed: int = 0,
    init_range: float = 0.2,
    **cfg_kwargs: Any,
):
    """A small random rotary ``HookedTransformer`` (float32, CPU, eval mode).

    ``cfg_kwargs`` go straight to ``HookedTransformerConfig`` (e.g. scaling options).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_key_value_heads=n_key_value_heads,
        d_head=d_head,
        d_mlp=2 * d_model,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim if rotary_dim is not None else d_head,
        rotary_adjacent_pairs=(layout == "gptj"),
        seed=seed,
        initializer_range=init_range,
        device="cpu",
        **cfg_kwargs,
    )
    torch.manual_seed(seed)
    model = HookedTransformer(cfg)
    model.eval()
    return model


def tiny_layout_model(name: str, **overrides: Any):
    """``tiny_model`` for a named entry of :data:`LAYOUTS`."""
    kwargs = dict(LAYOUTS[name])
    kwargs.update(overrides)
    return tiny_model(**kwargs)
