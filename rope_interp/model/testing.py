"""Builders of tiny random rotary models, for tests, doctests and examples.

Kept in the package (not in ``tests/``) so doctests and user code can use them.

>>> m = tiny_model(layout="gptj", d_head=8, rotary_dim=4)
>>> m.cfg.rotary_adjacent_pairs, m.cfg.rotary_dim
(True, 4)
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .bridge import boot

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

    ``cfg_kwargs`` go straight to ``HookedTransformerConfig`` (e.g. scaling options;
    ``positional_embedding_type="standard"`` builds a non-rotary model, for error tests).
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
        positional_embedding_type=cfg_kwargs.pop("positional_embedding_type", "rotary"),
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


TINY_WORDS = (
    "the a of to and in is was it that on for as with by at from his her they this be are or an which "
    "capital france paris italy rome city river king queen old new first last one two three four five"
).split()


def tiny_hf_dir(
    path: Any,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_ctx: int = 128,
    seed: int = 0,
    model_type: str = "llama",
):
    """Save a tiny random HuggingFace model with a word-level tokenizer to ``path``; return the path.

    Offline (the tokenizer is built here from :data:`TINY_WORDS`, lower-cased; other words and
    punctuation map to ``<unk>``); 4 heads (2 kv heads) of ``d_model / 4`` dims,
    so ``load_model(str(path))`` and the CLI's ``--model`` can be tested end to end.
    ``model_type="gpt2"`` saves a non-rotary GPT-2 instead.

    >>> import tempfile
    >>> from rope_interp import load_model
    >>> d = tiny_hf_dir(tempfile.mkdtemp() + "/tiny")
    >>> model = load_model(str(d))
    >>> model.to_tokens("the capital of france is paris").tolist()
    [[1, 4, 30, 6, 31, 10, 32]]
    """
    from pathlib import Path

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(TINY_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    ids: dict[str, Any] = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        cfg = GPT2Config(
            n_layer=n_layers, n_embd=32, n_head=2, vocab_size=len(vocab), n_positions=n_ctx, **ids
        )
        hf = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(vocab),
            max_position_embeddings=n_ctx,
            **ids,
        )
        hf = LlamaForCausalLM(cfg)
    hf.eval().save_pretrained(path)
    fast.save_pretrained(path)
    return path


def result_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every float tensor, number and list of floats a result object holds, by attribute path, as float64
    CPU tensors (to compare two runs of an analysis: one process against several, CPU against GPU).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class R:
    ...     x: torch.Tensor
    ...     n: int
    ...     parts: dict
    >>> sorted(result_tensors(R(torch.ones(2), 3, {"a": [0.5, 1.5]})))
    ['n', 'parts.a', 'x']
    """
    out: dict[str, torch.Tensor] = {}
    items = obj.items() if isinstance(obj, dict) else vars(obj).items() if hasattr(obj, "__dict__") else []
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[name] = v.detach().double().cpu()
        elif isinstance(v, list) and v and all(isinstance(x, float) for x in v):
            out[name] = torch.tensor(v, dtype=torch.float64)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = torch.tensor(float(v), dtype=torch.float64)
        elif (
            (isinstance(v, dict) or hasattr(v, "__dict__"))
            and not isinstance(v, torch.nn.Module)
            and k != "model"
        ):
            out.update(result_tensors(v, name + "."))
    return out


def tiny_tokenizer(vocab_size: int = 64) -> Any:
    """An offline word-level tokenizer over tokens ``t0 .. t{vocab_size-1}`` (t1 = BOS, t2 = EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="t1",
        eos_token="t2",
        unk_token="t0",
        pad_token="t2",
        add_bos_token=True,  # else TransformerLens re-loads the tokenizer from the hub
        name_or_path="rope-interp-tiny",
    )


_TINY = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "phi": ("PhiConfig", dict(partial_rotary_factor=0.5)),
    "neox": ("GPTNeoXConfig", dict(rotary_pct=0.5)),
    "gptj": ("GPTJConfig", dict(rotary_dim=4)),
    "codegen": ("CodeGenConfig", dict(rotary_dim=4)),
}


def tiny_bridge(
    arch: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> Any:
    """A small random HF model of architecture ``arch`` booted as a ``TransformerBridge`` (CPU, offline).

    ``arch``: one of ``llama``, ``qwen2``, ``gemma2`` (soft-cap, sliding window), ``phi``
    (partial rotary), and ``neox``, ``gptj``, ``codegen`` (whose bridges do not fire the
    rot hooks). 2 layers, 4 heads, ``d_head`` 8; ``overrides`` go to the HF config.

    >>> from rope_interp.read.decompose import band_scores
    >>> model = tiny_bridge("gemma2")
    >>> bs = band_scores(model, torch.tensor([[1, 5, 6, 7, 8, 9]]), layer=0)
    >>> tuple(bs.per_band.shape), bs.softcap, bs.window
    ((1, 4, 4, 6, 6), 50.0, 4)
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if arch not in _TINY:
        raise ValueError(f"unknown tiny bridge architecture {arch!r}; expected one of {sorted(_TINY)}")
    cls_name, extra = _TINY[arch]
    if arch in ("gptj", "codegen"):
        size = dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)
    else:
        size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        size["max_position_embeddings"] = 128
    kwargs = {**size, "vocab_size": 64, **extra, **overrides}
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(getattr(transformers, cls_name)(**kwargs)).eval()
    return boot(hf, tiny_tokenizer(kwargs["vocab_size"]), f"tiny-{arch}", dtype=dtype)
