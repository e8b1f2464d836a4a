"""The one place that reads model internals: an adapter object per model kind.

Analyses and interventions never touch ``model.blocks[...]`` or ``model.cfg``
directly; they ask this module. What kind a model is gets decided once, when it
is first seen (:func:`of`, cached per model object, as einops picks a backend per
tensor type), and every question is then answered by that kind's class:

* :class:`HookedAdapter` — a TransformerLens ``HookedTransformer`` (and anything that is
  no other kind: a non-model fails in :meth:`~ModelAdapter.config` with ``NotAModelError``);
* :class:`BridgeAdapter` — a ``TransformerBridge``, whose HF-side facts are read by
  :mod:`rope_interp.model.bridge`.

Supporting another kind means writing one :class:`ModelAdapter` subclass and registering
it with :func:`register`, not teaching every caller. The module-level functions
(``rotary_dim(model)`` ...) delegate to ``of(model)``.

>>> from rope_interp.model.testing import tiny_model
>>> model = tiny_model()
>>> a = of(model)
>>> type(a).__name__, a is of(model), a.rotary_dim(), a.hooked_blocks, a.positions_from_tables
('HookedAdapter', True, 16, True, False)
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import validate as _validate
from ..errors import ContextLengthError, NotAModelError, NotRotaryError, PaddingError, TokenError
from ..validate import indices
from . import bridge as _bridge
from .kind import Model


class ModelAdapter(ABC):
    """What rope_interp asks of a model, answered for one model object of one kind.

    Subclasses answer the kind-specific questions (the abstract methods) and set the
    capability flags; :meth:`claims` says which models are of the kind. Build one with
    :func:`of` (cached per model), not directly.

    Capability flags (class attributes):
        positions_from_tables: token positions are read from the applied cos/sin tables
            (``hook_cos``/``hook_sin``), not from the hook inputs; such a model does not expose
            positions to ``start_at_layer`` runs.
        hooked_blocks: ``model.blocks[i]`` are TransformerLens' own blocks (``ln2.hook_normalized``
            fires, ``ln2``/``mlp`` can be called on a residual stream directly).
        resumes_at_layer: ``model(residual, start_at_layer=L)`` runs blocks ``L..end`` on a kept
            residual stream (what the prefix-reusing sweep tiers need).
    """

    positions_from_tables: ClassVar[bool] = False
    hooked_blocks: ClassVar[bool] = True
    resumes_at_layer: ClassVar[bool] = True

    def __init__(self, model: Model) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(model)  # the cache must not keep the model alive
        except TypeError:  # an object without weak references (never cached)
            ref = lambda: model  # noqa: E731
        self._ref = ref

    @classmethod
    @abstractmethod
    def claims(cls, model: Model) -> bool:
        """Whether ``model`` is of this kind."""

    @property
    def model(self) -> Any:
        """The model this adapter answers for."""
        model = self._ref()
        if model is None:
            raise ReferenceError("the model of this adapter no longer exists")
        return model

    # ---- shared by every kind --------------------------------------------------------------
    def config(self) -> Any:
        """The model's ``HookedTransformerConfig`` (or bridge config)."""
        cfg = getattr(self.model, "cfg", None)
        if cfg is None:
            raise NotAModelError(
                "expected a TransformerLens HookedTransformer or TransformerBridge, got "
                f"{type(self.model).__name__} (no .cfg); load one with rope_interp.load_model(...)"
            )
        return cfg

    def check_rotary(self) -> Any:
        """Return the config, or raise :class:`NotRotaryError` for a non-rotary model (and what
        the kind raises for a rotary model it cannot read, see :meth:`_check_rotary_layout`)."""
        cfg = self.config()
        pos = getattr(cfg, "positional_embedding_type", None)
        if pos != "rotary":
            raise NotRotaryError(
                f"model {getattr(cfg, 'model_name', '?')!r} uses positional_embedding_type={pos!r}; "
                "rope_interp needs a rotary (RoPE) model (positional_embedding_type='rotary')"
            )
        self._check_rotary_layout(cfg)
        return cfg

    def adjacent_pairs(self) -> bool:
        """GPT-J pairing ``(2i, 2i+1)`` (True) or NeoX/Llama halves ``(i, i + rotary_dim/2)`` (False)."""
        return bool(getattr(self.config(), "rotary_adjacent_pairs", False))

    def n_layers(self) -> int:
        return int(self.config().n_layers)

    def n_heads(self) -> int:
        return int(self.config().n_heads)

    def n_kv_heads(self) -> int:
        cfg = self.config()
        n = getattr(cfg, "n_key_value_heads", None)
        if n is None or getattr(cfg, "ungroup_grouped_query_attention", False):
            return int(cfg.n_heads)
        return int(n)

    def attn(self, layer: int) -> Any:
        """The attention module of block ``layer``."""
        return self.model.blocks[layer].attn

    def device(self) -> torch.device:
        """Where the model's weights live (inputs and results follow it)."""
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device(getattr(self.config(), "device", None) or "cpu")

    # ---- kind-specific -----------------------------------------------------------------------
    @abstractmethod
    def _check_rotary_layout(self, cfg: Any) -> None:
        """Raise when this rotary model's rotated queries/keys cannot be read."""

    @abstractmethod
    def rotary_dim(self) -> int:
        """Number of rotated dims per head (``d_head`` unless partial rotary)."""

    @abstractmethod
    def attn_scale(self, layer: int) -> float:
        """The divisor of ``q·k`` in this layer's attention scores."""

    @abstractmethod
    def softcap(self) -> float | None:
        """The attention-score soft-cap (``cap * tanh(s / cap)``), None without one."""

    @abstractmethod
    def rotary_tables(self, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
        """(sin, cos), each float64 ``[n_pos, rotary_dim]``, as this layer's attention computes them."""

    @abstractmethod
    def rotary_buffers(self, layer: int) -> tuple[Tensor, Tensor]:
        """The sin/cos tables the model actually applies (in its dtype)."""

    @abstractmethod
    def local_window(self, layer: int) -> int | None:
        """Sliding-window size of a local-attention layer (keys ``m - window < n <= m``), else None."""


_KINDS: list[type[ModelAdapter]] = []


def register(kind: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make ``kind`` one of the kinds :func:`of` chooses from.

    Kinds registered later are asked first, so a kind that refines another (a subclass
    claiming some of its models) is registered after it.
    """
    _KINDS.append(kind)
    return kind


@register
class HookedAdapter(ModelAdapter):
    """A TransformerLens ``HookedTransformer``: everything is in its config and attention modules.

    The kind of last resort (it claims every model no other kind claims), so that a
    non-model is refused by :meth:`config` with the same ``NotAModelError`` as before.
    """

    @classmethod
    def claims(cls, model: Model) -> bool:
        return True

    def _check_rotary_layout(self, cfg: Any) -> None:
        if getattr(cfg, "rotary_dim", None) is None:
            raise NotRotaryError("model config has positional_embedding_type='rotary' but no rotary_dim")

    def rotary_dim(self) -> int:
        return int(self.check_rotary().rotary_dim)

    def attn_scale(self, layer: int) -> float:
        return float(self.attn(layer).attn_scale)

    def softcap(self) -> float | None:
        cap = getattr(self.config(), "attn_scores_soft_cap", None)
        return float(cap) if cap is not None and cap > 0 else None

    def rotary_tables(self, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
        """Calls the attention module's own ``calculate_sin_cos_rotary`` (so every frequency
        scaling TransformerLens implements is included by construction) in float64, which keeps
        low frequencies exact even for fp16/bf16 models whose cached buffers are rounded. Falls
        back to the cached ``rotary_sin/rotary_cos``."""
        cfg = self.check_rotary()
        mod = self.attn(layer)
        fn = getattr(mod, "calculate_sin_cos_rotary", None)
        if fn is not None:
            base = mod._rotary_base() if hasattr(mod, "_rotary_base") else cfg.rotary_base
            sin, cos = fn(cfg.rotary_dim, n_pos, base=base, dtype=torch.float64)
            return sin.double(), cos.double()
        sin, cos = mod.rotary_sin, mod.rotary_cos
        return sin[:n_pos].double().cpu(), cos[:n_pos].double().cpu()

    def rotary_buffers(self, layer: int) -> tuple[Tensor, Tensor]:
        mod = self.attn(layer)
        return mod.rotary_sin, mod.rotary_cos

    def local_window(self, layer: int) -> int | None:
        if getattr(self.attn(layer), "attn_type", "global") == "local":
            return int(self.config().window_size)
        return None


@register
class BridgeAdapter(ModelAdapter):
    """A ``TransformerBridge`` around an HF model: tables, scale, soft-cap and window read from the
    HF modules (:mod:`rope_interp.model.bridge`); positions from ``hook_cos``/``hook_sin``.

    >>> from rope_interp.model.testing import tiny_bridge
    >>> model = tiny_bridge("llama")  # the adapter holds the model weakly: keep a reference
    >>> a = of(model)
    >>> type(a).__name__, a.rotary_dim(), a.positions_from_tables, a.hooked_blocks
    ('BridgeAdapter', 8, True, False)
    """

    positions_from_tables = True
    hooked_blocks = False
    resumes_at_layer = False  # TransformerBridge: "start_at_layer is not supported"

    @classmethod
    def claims(cls, model: Model) -> bool:
        return _bridge.is_bridge(model)

    def _check_rotary_layout(self, cfg: Any) -> None:
        _bridge.check_rot_hooks(self.model)

    def rotary_dim(self) -> int:
        self.check_rotary()  # the bridge config's rotary_dim is often unset: read the applied tables
        return _bridge.rotary_dim(self.model)

    def attn_scale(self, layer: int) -> float:
        return _bridge.attn_scale(self.model, layer)

    def softcap(self) -> float | None:
        return _bridge.softcap(self.model)

    def rotary_tables(self, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
        self.check_rotary()
        return _bridge.rotary_tables(self.model, layer, n_pos)

    def rotary_buffers(self, layer: int) -> tuple[Tensor, Tensor]:
        """A bridge has no buffers: its tables for ``n_ctx`` positions in the model's dtype."""
        sin, cos = _bridge.rotary_tables(self.model, layer, int(self.config().n_ctx))
        dt = next(self.model.parameters()).dtype
        return sin.to(dt), cos.to(dt)

    def local_window(self, layer: int) -> int | None:
        return _bridge.local_window(self.model, layer)


_SEEN: weakref.WeakKeyDictionary[Any, ModelAdapter] = weakref.WeakKeyDictionary()


def of(model: Model) -> ModelAdapter:
    """The adapter of ``model``: its kind chosen when it is first seen, then cached per model object."""
    try:
        found = _SEEN.get(model)
    except TypeError:  # unhashable or no weak references: choose every time
        found = None
    if found is not None and found._ref() is model:
        return found
    kind = next(k for k in reversed(_KINDS) if k.claims(model))
    made = kind(model)
    try:
        _SEEN[model] = made
    except TypeError:
        pass
    return made


def is_bridge(model: Model) -> bool:
    """True for a ``TransformerBridge``, False for a ``HookedTransformer``."""
    return isinstance(of(model), BridgeAdapter)


def config(model: Model) -> Any:
    """The model's ``HookedTransformerConfig`` (or bridge config)."""
    return of(model).config()


def check_rotary(model: Model) -> Any:
    """Return the config, or raise :class:`NotRotaryError` for a non-rotary model
    (and :class:`~rope_interp.model.bridge.BridgeRotaryHooksError` for a bridge that never
    fires ``hook_rot_q``/``hook_rot_k``). Read the rotary layout with
    :func:`rotary_dim` / :func:`adjacent_pairs`, not from the config."""
    return of(model).check_rotary()


def rotary_dim(model: Model) -> int:
    """Number of rotated dims per head (``d_head`` unless partial rotary)."""
    return of(model).rotary_dim()


def adjacent_pairs(model: Model) -> bool:
    """GPT-J pairing ``(2i, 2i+1)`` (True) or NeoX/Llama halves ``(i, i + rotary_dim/2)`` (False)."""
    return of(model).adjacent_pairs()


def n_layers(model: Model) -> int:
    return of(model).n_layers()


def n_heads(model: Model) -> int:
    return of(model).n_heads()


def n_kv_heads(model: Model) -> int:
    return of(model).n_kv_heads()


def kv_map(model: Model) -> Tensor:
    """LongTensor[n_heads]: the kv head each query head reads (``h // (n_heads // n_kv)``)."""
    h, g = n_heads(model), n_kv_heads(model)
    return torch.arange(h) // (h // g)


def layers(model: Model, layers: int | Sequence[int] | None) -> list[int]:
    """Normalise a layer selection (None = all) and check it is in range."""
    n = n_layers(model)
    if layers is None:
        return list(range(n))
    return indices("layer", layers, n)


def heads(model: Model, heads: int | Sequence[int] | None) -> list[int]:
    n = n_heads(model)
    if heads is None:
        return list(range(n))
    return indices("head", heads, n)


def attn(model: Model, layer: int) -> Any:
    """The attention module of block ``layer``."""
    return of(model).attn(layer)


def attn_scale(model: Model, layer: int) -> float:
    """The divisor of ``q·k`` in this layer's attention scores."""
    return of(model).attn_scale(layer)


def softcap(model: Model) -> float | None:
    """The attention-score soft-cap, None without one."""
    return of(model).softcap()


def check_decomposable(model: Model) -> None:
    """Raise when something between ``hook_rot_q`` and the scores breaks ``scores = q·k/scale``."""
    cfg = config(model)
    if getattr(cfg, "use_logn_attn", False):
        raise NotImplementedError(
            "this model rescales queries by log(n) after hook_rot_q (use_logn_attn=True); "
            "the per-band decomposition of hook_attn_scores is not implemented for it"
        )


def rotary_tables(model: Model, layer: int, n_pos: int) -> tuple[Tensor, Tensor]:
    """(sin, cos), each float64 ``[n_pos, rotary_dim]``, as this layer's attention computes them
    (see :meth:`HookedAdapter.rotary_tables`, :func:`rope_interp.model.bridge.rotary_tables`)."""
    return of(model).rotary_tables(layer, n_pos)


def rotary_buffers(model: Model, layer: int) -> tuple[Tensor, Tensor]:
    """The sin/cos tables the model actually applies (its buffers, in its dtype).

    A bridge has no buffers: its tables for ``n_ctx`` positions in the model's dtype.
    """
    return of(model).rotary_buffers(layer)


def _is_text(tokens: Any) -> bool:
    return isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and len(tokens) > 0 and all(isinstance(t, str) for t in tokens)
    )


def tokens_and_mask(model: Model, tokens: Any, what: str = "tokens") -> tuple[Tensor, Tensor | None]:
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
        ids = model.to_tokens(texts, truncate=False)  # a text longer than n_ctx is refused below, never cut
        if len(texts) > 1:
            lengths = [int(model.to_tokens(t, truncate=False).shape[1]) for t in texts]
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


def padding_kwargs(model: Model, mask: Tensor | None) -> dict[str, Any]:
    """Keyword arguments for ``model(tokens, ...)`` that make a padded batch run as each row alone.

    A HookedTransformer computes the attention mask (and left padding's position offsets) from the
    tokens itself: ``{}``. A TransformerBridge does not: without ``attention_mask`` a left-padded row's
    tokens sit at shifted positions (rotated by the wrong angles) and attend to the padding, so it
    gets ``{"attention_mask": mask}`` (the bridge derives the positions from it). ``mask``: bool
    ``[batch, pos]``, True on real tokens, as :func:`tokens_and_mask` returns it; None: ``{}``.
    """
    if mask is None or not is_bridge(model):
        return {}
    return {"attention_mask": mask.long()}


def to_tokens(model: Model, tokens: Any, what: str = "tokens") -> Tensor:
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


def device(model: Model) -> torch.device:
    """Where the model's weights live (inputs and results follow it)."""
    return of(model).device()


def local_window(model: Model, layer: int) -> int | None:
    """Sliding-window size of a local-attention layer (keys ``m - window < n <= m``), else None."""
    return of(model).local_window(layer)
