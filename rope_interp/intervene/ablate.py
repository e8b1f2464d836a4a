"""Band interventions: zero, mean-replace, un-rotate, shift or re-time chosen RoPE bands.

Two layers, as everywhere in rope_interp:

* pure functions on a band view ``[..., pos, head, band, 2]`` (:func:`zero_bands`,
  :func:`mean_bands`, :func:`unrotate_bands`, :func:`shift_bands`,
  :func:`scale_freq_bands`) that know nothing about TransformerLens, and
  :func:`positions_from_angles` (integer positions from wrapped rotary angles);
* :class:`BandIntervention`, a :class:`~rope_interp.model.hooks.HookSet` that applies one of
  them at ``hook_rot_q`` / ``hook_rot_k`` of chosen layers, heads and bands. The public
  entry points are :func:`ablate_bands` and :func:`prope`.

Where the modes act (all after rotation, at ``hook_rot_q`` / ``hook_rot_k``):

* ``zero`` — the band is 0 (the same before or after rotation, since rotation keeps norms).
* ``mean`` — the band is replaced by its mean over positions of the post-rotation
  values (Jin et al.'s massive-value ablation), or by a fixed ``reference``
  (a tensor, or a :class:`~rope_interp.read.capture.BandStats` ``mean_vector``).
* ``no_rotation`` — the band is not rotated: ``rotate(x, -theta_i * m)`` turns the
  post-rotation band back to ``amplitude * pre`` (NoPE for that band).
* ``shift`` — an extra rotation by ``phase`` radians, or ``delta`` positions
  (``theta_i * delta``). Default ``target="k"``: as if the keys sat ``delta`` positions
  later; ``target="q"``: as if the queries did. ``target="qk"`` raises
  :class:`~rope_interp.errors.UselessInterventionError` (the same angle on both cancels in q·k).
* ``scale_freq`` — the band turns at ``factor * theta_i``: an extra ``(factor - 1) theta_i m``.

The modes are rows of :data:`rope_interp.intervene.modes.MODE_TABLE` (parameters, validation, the
function on the band view); parameters must be finite, and an intervention that provably
changes nothing (shift on q and k alike, ``delta=0``, ``factor=1``) raises
:class:`~rope_interp.errors.UselessInterventionError`. An empty band (or head) list is a
documented identity: no hooks at all, so the model runs unchanged.

Positions and the KV cache. HookedTransformer: keys are always rotated at positions
``0 .. n_k - 1`` (it caches keys *before* rotation and re-rotates all of them every
step). Queries sit at ``n_k - n_q .. n_k - 1``; the offset ``n_k - n_q`` is known only
when ``hook_rot_k`` fires, so the position-dependent query modes (``no_rotation``,
``scale_freq``) are written into the query tensor in place at ``hook_rot_k`` of the same
layer, right before TransformerLens computes the scores. TransformerBridge: it fires
``hook_rot_k`` *before* its cache update, on the new keys only (cached keys keep the
intervention they got when computed), so the offset is not in the shapes; instead the
layer's ``hook_cos``/``hook_sin`` (the rotary tables at the true positions, fired just
before) are read and :func:`positions_from_angles` turns their angles back into integer
positions, per batch row, on the device. That is exact for positions below the longest
wavelength of the layer's rotating bands (checked against ``n_ctx`` when the
intervention is built). Consequences: generation with
the cache gives the same tokens as without it for every mode except ``mean`` over
positions on queries (with the cache a step sees only its new query, whose mean is
itself — pass a ``reference`` for cache-consistent mean ablation; on keys the mean is
over all keys so far, as without the cache). A hook of yours at ``hook_rot_q`` that
reads q sees it before those two modes; one that *replaces* the tensor would hide
them. Mean over positions is non-causal: earlier positions see a mean that includes
later tokens. Left-padded batches (an ``attention_mask`` with leading zeros) shift
positions per row and are not supported by the position-dependent modes on
HookedTransformer (on a bridge they use whatever positions its tables carry).

Heads under grouped-query attention: ``heads`` are query heads. Keys are shared by a
group of query heads, so for ``target`` ``"k"``/``"qk"`` the key heads are
``kv_map[heads]`` — and the selection must then contain *whole groups* (every query
head reading those kv heads), otherwise an error says which heads would also be
affected. To act on kv heads regardless, pass ``kv_heads=[...]`` explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import band_view
from ..errors import RopeInterpError
from ..model import adapter
from ..model import bridge as _bridge
from ..model.hooks import FwdHooks, HookSet, attn_hook, rotary_table_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import finite
from .modes import (  # noqa: F401  (the pure functions are re-exported here, where users found them)
    MODE_TABLE,
    MODES,
    TARGETS,
    Mode,
    ResolvedMode,
    Target,
    mean_bands,
    position_angles,
    resolve_mode,
    scale_freq_bands,
    shift_bands,
    unrotate_bands,
    zero_bands,
)

ANGLE_TOL = 0.05
"""Angle error (radians) that :func:`positions_from_angles` tolerates; bf16 tables have ~0.004."""


# ---- positions from rotary angles ----------------------------------------------------------------------
def _unwrap_chain(freqs: Sequence[float], tol: float) -> list[tuple[int, float]]:
    """Bands to unwrap through, slowest first: each next band is the fastest one whose turns
    the current position estimate (error ``tol / f``) still pins to the right cycle."""
    order = sorted((f, i) for i, f in enumerate(freqs) if f > 0)
    if not order:
        raise RopeInterpError("no band rotates, so positions cannot be read from the rotary angles")
    chain = [order[0]]
    for k, (f, i) in enumerate(order[1:], 1):
        last = k == len(order) - 1
        if last or order[k + 1][0] * tol > chain[-1][0]:  # the next band would be too fast to unwrap
            if f > chain[-1][0]:
                chain.append((f, i))
    return [(i, f) for f, i in chain]


def _unwrap(angles: Tensor, chain: list[tuple[int, float]]) -> Tensor:
    two_pi = 2 * math.pi
    i, f = chain[0]
    pos = torch.remainder(angles[..., i], two_pi) / f  # 0 <= theta_min * m < 2 pi
    for i, f in chain[1:]:
        phi = angles[..., i]
        pos = (phi + two_pi * torch.round((f * pos - phi) / two_pi)) / f
    return torch.round(pos)


def positions_from_angles(
    angles: Float[Tensor, "*batch pos band"], freqs: Float[Tensor, " band"], tol: float = ANGLE_TOL
) -> Float[Tensor, "*batch pos"]:
    """Integer positions ``m`` from wrapped angles ``theta_i * m`` (mod ``2 pi``) of every band.

    Unwraps from the slowest band (assumed within its first turn) up to the fastest, each
    step fixing the turn count of a faster band; exact for ``0 <= m < 2 pi / min(theta)``
    and angle errors below ``tol`` radians (bf16 tables: ~0.004). Bands with
    ``theta <= 0`` are ignored. ``freqs`` is read on the host once; the rest stays on
    ``angles``' device.

    >>> f = torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64)
    >>> m = torch.tensor([0.0, 7.0, 1234.0, 6000.0], dtype=torch.float64)
    >>> ang = torch.atan2(torch.sin(m[:, None] * f), torch.cos(m[:, None] * f))
    >>> positions_from_angles(ang, f).tolist()
    [0.0, 7.0, 1234.0, 6000.0]
    """
    return _unwrap(angles, _unwrap_chain(freqs.tolist(), tol))


# ---- the hook set ----------------------------------------------------------------------------------------
class BandIntervention(HookSet):
    """One intervention: a :class:`~rope_interp.intervene.modes.ResolvedMode` applied at ``hook_rot_q`` /
    ``hook_rot_k`` of its layers, heads and bands.

    Build it with :func:`ablate_bands` (or :func:`prope`), or from a recipe of
    :func:`~rope_interp.intervene.modes.resolve_mode`; ``BandIntervention(model, bands, layers, ...)``
    takes the arguments of :func:`ablate_bands`. See the module docstring for where each mode acts,
    the KV-cache behaviour and the GQA head rule. All constants live on the model's device; hooks
    never synchronise with the host.
    """

    def __init__(self, model: Model, recipe: ResolvedMode | Any, *args: Any, **kwargs: Any):
        if not isinstance(recipe, ResolvedMode):  # the arguments of ablate_bands
            recipe = ablate_bands(model, recipe, *args, **kwargs).recipe
        elif args or kwargs:
            raise RopeInterpError("BandIntervention(model, recipe) takes no further arguments")
        super().__init__(model)
        adapter.check_decomposable(model)
        self.recipe = recipe
        self.row, self.spec, self.target, self.params = recipe.row, recipe.spec, recipe.target, recipe.params
        self.mode, self.layers, self.bands = recipe.mode, recipe.layers, recipe.bands
        self.q_heads, self.k_heads = recipe.q_heads, recipe.k_heads
        self._dev = dev = adapter.device(model)
        self._band_idx = torch.tensor(self.bands, dtype=torch.long, device=dev)
        self._head_idx = {
            side: None if h is None else torch.tensor(h, dtype=torch.long, device=dev)
            for side, h in (("q", self.q_heads), ("k", self.k_heads))
        }
        self._pending: dict[int, Tensor] = {}
        self._adt = recipe.angle_dtype
        self._positional = recipe.position_dependent
        # bridge: positions read from hook_cos/hook_sin (see the module docstring)
        self._from_tables = self._positional and adapter.of(model).positions_from_tables
        self._positions: dict[int, Tensor] = {}
        self._cos: dict[int, Tensor] = {}
        if self._from_tables:
            self._init_unwrap()

    # ---- setup -------------------------------------------------------------------------------------------
    def _init_unwrap(self) -> None:
        spec = self.spec
        self._chain = {L: _unwrap_chain(spec.freqs[L].tolist(), ANGLE_TOL) for L in self.layers}
        for L, chain in self._chain.items():
            reach = 2 * math.pi / chain[0][1]
            if reach < spec.n_ctx:
                raise RopeInterpError(
                    f"mode {self.mode!r} on a TransformerBridge reads positions from layer {L}'s rotary tables, "
                    f"which repeat every {reach:.0f} tokens (< n_ctx={spec.n_ctx}); load the model as a "
                    "HookedTransformer for this intervention"
                )

    # ---- application ----------------------------------------------------------------------------------------
    @property
    def _q_deferred(self) -> bool:
        return self._positional and not self._from_tables

    def _select(self, v: Tensor, side: str) -> Tensor:
        h, b = self._head_idx[side], self._band_idx.to(v.device)  # no-op unless the model spans devices
        if h is None:
            return v[..., b, :]
        return v[:, :, h.to(v.device)[:, None], b[None, :]]

    def _write(self, v: Tensor, side: str, new: Tensor) -> None:
        h, b = self._head_idx[side], self._band_idx.to(v.device)
        if h is None:
            v[..., b, :] = new
        else:
            v[:, :, h.to(v.device)[:, None], b[None, :]] = new

    def _apply(self, act: Tensor, layer: int, side: str, start: int = 0, pos: Tensor | None = None) -> None:
        """``pos``: positions ``[pos]`` or ``[batch, pos]``; default ``start .. start + n - 1``."""
        if pos is None and self._positional:
            pos = self.recipe.positions(act.shape[1], act.device, start)
        v = band_view(act, self.spec.rotary_dim, self.spec.adjacent_pairs)
        self._write(v, side, self.recipe.apply(self._select(v, side), layer, side, pos))

    def _table_positions(self, layer: int, last: bool) -> Tensor:
        pos = self._positions.pop(layer, None) if last else self._positions.get(layer)
        if pos is None:
            raise RopeInterpError(
                f"hook_cos/hook_sin of layer {layer} did not fire before its rot hooks in this forward, so mode "
                f"{self.mode!r} cannot find the positions on this bridge; load the model as a HookedTransformer"
            )
        return pos

    def _hook_cos(self, act: Tensor, hook: Any, layer: int) -> Tensor:
        self._cos[layer] = act
        return act

    def _hook_sin(self, act: Tensor, hook: Any, layer: int) -> Tensor:
        cos = self._cos.pop(layer)
        ang = _bridge.table_angles(cos, act, self.spec.n_bands, self._adt)
        self._positions[layer] = _unwrap(ang, self._chain[layer])  # [batch or 1, pos], on the device
        return act

    def _hook_q(self, act: Tensor, hook: Any, layer: int) -> Tensor:
        if self._q_deferred:
            self._pending[layer] = act  # written at hook_rot_k, once the cache offset is known
        elif self._from_tables:
            self._apply(act, layer, "q", pos=self._table_positions(layer, last="k" not in self.target))
        else:
            self._apply(act, layer, "q")
        return act

    def _hook_k(self, act: Tensor, hook: Any, layer: int) -> Tensor:
        q = self._pending.pop(layer, None)
        if q is not None:
            self._apply(q, layer, "q", act.shape[1] - q.shape[1])
        if "k" in self.target:
            pos = self._table_positions(layer, last=True) if self._from_tables else None
            self._apply(act, layer, "k", pos=pos)
        return act

    def fwd_hooks(self) -> FwdHooks:
        if self.recipe.is_identity:
            return []
        hooks: FwdHooks = []
        for L in self.layers:
            if self._from_tables:
                hooks.append((rotary_table_hook(L, "cos"), lambda a, hook, L=L: self._hook_cos(a, hook, L)))
                hooks.append((rotary_table_hook(L, "sin"), lambda a, hook, L=L: self._hook_sin(a, hook, L)))
            if "q" in self.target:
                hooks.append((attn_hook(L, "rot_q"), lambda a, hook, L=L: self._hook_q(a, hook, L)))
            if "k" in self.target or ("q" in self.target and self._q_deferred):
                hooks.append((attn_hook(L, "rot_k"), lambda a, hook, L=L: self._hook_k(a, hook, L)))
        return hooks

    def __exit__(self, *exc: Any) -> None:
        self._pending.clear()
        self._positions.clear()
        self._cos.clear()
        super().__exit__(*exc)

    def __repr__(self) -> str:
        return (
            f"BandIntervention(mode={self.mode!r}, target={self.target!r}, layers={self.layers}, "
            f"heads={self.q_heads}, kv_heads={self.k_heads}, bands={self.bands})"
        )


def ablate_bands(
    model: Model,
    bands: int | Sequence[int] | None,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    target: Target | None = None,
    mode: Mode = "zero",
    **params: Any,
) -> BandIntervention:
    """Intervene on RoPE ``bands`` (None = all) of ``layers`` × ``heads`` (None = all) on q, k or both.

    ``mode``: ``"zero"``; ``"mean"`` (``reference=`` tensor ``[n_layers, heads, n_bands, 2]``,
    dict ``{"q": ..., "k": ...}`` or a ``BandStats`` tracking ``rot_q``/``rot_k``; default:
    mean over positions); ``"no_rotation"``; ``"shift"`` (``phase=`` radians or ``delta=``
    positions; default target ``"k"``: keys as if ``delta`` positions later); ``"scale_freq"``
    (``factor=``). ``target`` None means the mode's default (``"qk"``, or ``"k"`` for shift).
    Non-finite parameters raise :class:`~rope_interp.errors.ParameterError`; a provable
    no-op raises :class:`~rope_interp.errors.UselessInterventionError`. ``kv_heads=`` selects key heads explicitly
    under GQA. Returns a :class:`BandIntervention`: a context manager (model restored in
    ``finally``) with ``.fwd_hooks()`` for ``model.run_with_hooks``; compose with ``+``.

    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> toks = torch.tensor([[1, 2, 3, 4, 5]])
    >>> base = model(toks)
    >>> with ablate_bands(model, bands=[0, 1], layers=0, mode="zero"):
    ...     zeroed = model(toks)
    >>> bool((zeroed - base).abs().max() > 0), torch.equal(model(toks), base)
    (True, True)
    >>> both = ablate_bands(model, [2], mode="shift", delta=3) + ablate_bands(model, [3], mode="no_rotation")
    >>> torch.allclose(both.run(toks), base)
    False
    >>> ablate_bands(model, [2], mode="shift", delta=3, target="qk")
    Traceback (most recent call last):
    ...
    rope_interp.errors.UselessInterventionError: mode 'shift' with target='qk' changes nothing: the same extra angle on q and k cancels in every q·k. Use target='k' (keys as if delta positions later, the default for shift) or target='q'
    """
    adapter.check_decomposable(model)
    kv_heads = params.pop("kv_heads", None)
    recipe = resolve_mode(
        model, mode, target, params, layers=layers, bands=bands, heads=heads, kv_heads=kv_heads
    )
    return BandIntervention(model, recipe)


def prope(model: Model, p: float, layers: int | Sequence[int] | None = None) -> BandIntervention:
    """p-RoPE (Barbero et al.): keep the highest fraction ``p`` of frequencies, the rest unrotated.

    Bands ``round(p * n_bands) .. n_bands - 1`` (the lowest frequencies) get ``no_rotation``
    on q and k; the kept bands keep their original frequencies. ``p=1`` is RoPE, ``p=0`` NoPE.

    >>> from rope_interp.model.testing import tiny_model
    >>> prope(tiny_model(), 0.75).bands      # 8 bands: the lowest 2 stop rotating
    [6, 7]
    """
    finite("p", p)
    if not 0.0 <= float(p) <= 1.0:
        raise RopeInterpError(f"p must be in [0, 1] (fraction of frequencies kept), got {p}")
    spec = RotaryBands.from_model(model)
    n = spec.n_bands
    keep = list(range(round(float(p) * n), n))
    return BandIntervention(
        model, resolve_mode(model, "no_rotation", "qk", layers=layers, bands=keep, spec=spec)
    )
