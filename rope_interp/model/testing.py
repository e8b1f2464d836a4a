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
    TransformerLens 4 has no HookedTransformer: there this raises ModelNotAvailableError (use :func:`tiny_bridge`).
    """
    from .compat import hooked_classes

    HookedTransformer, HookedTransformerConfig = hooked_classes()

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
    tokenizer: bool = True,
    **overrides: Any,
):
    """Save a tiny random HuggingFace model with a word-level tokenizer to ``path``; return the path.

    Offline (the tokenizer is built here from :data:`TINY_WORDS`, lower-cased; other words and
    punctuation map to ``<unk>``); 4 heads (2 kv heads) of ``d_model / 4`` dims,
    so ``load_model(str(path))`` and the CLI's ``--model`` can be tested end to end.
    ``model_type`` is a family of :data:`HF_FAMILIES` (``overrides`` go to its config), or ``"gpt2"``
    for a non-rotary GPT-2; ``tokenizer=False`` saves the model without tokenizer files.

    >>> import tempfile
    >>> from rope_interp import load_model
    >>> d = tiny_hf_dir(tempfile.mkdtemp() + "/tiny")
    >>> model = load_model(str(d))
    >>> model.to_tokens("the capital of france is paris").tolist()
    [[1, 4, 30, 6, 31, 10, 32]]
    """
    from pathlib import Path

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = Path(path)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(TINY_WORDS))}
    ids: dict[str, Any] = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        torch.manual_seed(seed)
        cfg = GPT2Config(
            n_layer=n_layers, n_embd=32, n_head=2, vocab_size=len(vocab), n_positions=n_ctx, **ids
        )
        hf = GPT2LMHeadModel(cfg)
    else:
        size = dict(n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, seed=seed, vocab_size=len(vocab))
        hf = tiny_hf_model(model_type, **size, **{**ids, **overrides})
    hf.eval().save_pretrained(path)
    if tokenizer:
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
        ).save_pretrained(path)
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


# Tiny HF configs per family: (transformers config class, its extra kwargs). Sizes (d_model 32, 2 layers,
# 4 heads, 128 positions) are added by :func:`tiny_hf_model`; GPT-J and CodeGen name them differently.
_LONGROPE = dict(
    rope_type="longrope",
    rope_theta=10000.0,
    short_factor=[1.0, 1.1, 1.2, 1.3],
    long_factor=[2.0, 2.5, 3.0, 3.5],
)
HF_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "llama3": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "llama_linear": (
        "LlamaConfig",
        dict(num_key_value_heads=2, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0)),
    ),
    "llama_yarn": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_parameters=dict(
                rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32
            ),
        ),
    ),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=8)),
    "gemma": ("GemmaConfig", dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "gemma3": ("Gemma3TextConfig", dict(num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2)),
    "phi": ("PhiConfig", dict(partial_rotary_factor=0.5)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2, pad_token_id=0)),
    "phi3_longrope": (
        "Phi3Config",
        dict(
            num_key_value_heads=2,
            pad_token_id=0,
            original_max_position_embeddings=32,
            rope_parameters=_LONGROPE,
        ),
    ),
    "neox": ("GPTNeoXConfig", dict(rotary_pct=0.5)),
    "gptj": ("GPTJConfig", dict(rotary_dim=4)),
    "codegen": ("CodeGenConfig", dict(rotary_dim=4)),
    "stablelm": ("StableLmConfig", dict(num_key_value_heads=2, partial_rotary_factor=0.5)),
    "smollm3": (
        "SmolLM3Config",
        dict(num_key_value_heads=2, pad_token_id=0, no_rope_layers=[1, 0]),
    ),  # layer 1: NoPE
}


def tiny_hf_model(
    family: str = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    vocab_size: int = 64,
    n_ctx: int = 128,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """A small random HF causal LM of ``family`` (a key of :data:`HF_FAMILIES`), float32, eval mode, offline.

    4 attention heads; ``overrides`` go to the HF config.

    >>> tiny_hf_model("llama_linear").config.rope_parameters["factor"]
    4.0
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if family not in HF_FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {sorted(HF_FAMILIES)}")
    cls_name, extra = HF_FAMILIES[family]
    if family in ("gptj", "codegen"):
        size: dict[str, Any] = dict(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=n_ctx)
    else:
        size = dict(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=n_ctx,
        )
    kwargs = {**size, "vocab_size": vocab_size, **extra, **overrides}
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(getattr(transformers, cls_name)(**kwargs)).eval()


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
    vocab = int(overrides.pop("vocab_size", 64))
    hf = tiny_hf_model(arch, seed=seed, vocab_size=vocab, **overrides)
    return boot(hf, tiny_tokenizer(vocab), f"tiny-{arch}", dtype=dtype)
