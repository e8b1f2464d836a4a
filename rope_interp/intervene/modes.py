"""The intervention table: one row per mode, used by ``ablate_bands``, every sweep tier and the CLI.

A mode is a pure function on a band view ``[..., pos, head, band, 2]`` plus a row that says
which parameters it takes (validated here, once), whether it needs token positions, which
target it acts on by default and when it provably changes nothing. Adding a mode is one
function and one :class:`ModeRow` in :data:`MODE_TABLE`; :class:`~rope_interp.intervene.ablate.BandIntervention`,
the sweeps (:mod:`rope_interp.sweep.tiers`) and ``rope-interp sweep --mode`` pick it up.

Validate once, then apply: :func:`resolve_mode` looks the mode up, checks the target, the
selection and the parameters, and prepares the constants (frequencies, a mean reference, a
per-band phase) on the model's device, all in one :class:`ResolvedMode`; ``ablate_bands`` and
the sweep engine (:class:`~rope_interp.sweep.grid.CellOp`) apply that value and check nothing again.

=============  ==========================  ================  ==============  ===========================
mode           parameters                  position-dep.     default target  refused as a no-op when
=============  ==========================  ================  ==============  ===========================
zero           —                           no                qk              —
mean           ``reference=`` (optional)   no                qk              —
no_rotation    —                           yes               qk              —
shift          ``phase=`` or ``delta=``    no                **k**           ``target="qk"``; delta 0;
                                                                             phase ≡ 0 (mod 2π)
scale_freq     ``factor=``                 yes               qk              factor 1
=============  ==========================  ================  ==============  ===========================

Shift semantics: an extra rotation of band ``i`` by ``theta_i * delta`` (or ``phase``
radians). On keys (the default) it is *as if every key sat ``delta`` positions later*
(the query–key offset of band ``i`` shrinks by ``delta``); on queries, as if the queries
sat ``delta`` later. The same extra angle on q and k cancels in every ``q·k`` (rotations
commute and preserve the inner product), so ``target="qk"`` raises
:class:`~rope_interp.errors.UselessInterventionError` instead of silently doing nothing.
Likewise ``delta=0``, a phase that is a multiple of ``2π`` and ``scale_freq`` with
``factor=1``. An *empty* band selection (``bands=[]``) stays a documented identity (no hooks).

These Literals are declared once here and reused for validation and CLI choices:

>>> MODES, TARGETS
(('zero', 'mean', 'no_rotation', 'shift', 'scale_freq'), ('q', 'k', 'qk'))
>>> MODE_TABLE["shift"].default_target, MODE_TABLE["scale_freq"].position_dependent
('k', True)
>>> check_params("shift", {"delta": 0}, "k")
Traceback (most recent call last):
...
rope_interp.errors.UselessInterventionError: shift by delta=0 changes nothing; pass a non-zero delta
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import rotate
from ..errors import ParameterError, RopeInterpError, UselessInterventionError
from ..model import adapter
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import finite, indices

Mode = Literal["zero", "mean", "no_rotation", "shift", "scale_freq"]
Target = Literal["q", "k", "qk"]
Method = Literal["exact", "naive", "attribution", "qk_attribution", "refine"]
MODES: tuple[str, ...] = get_args(Mode)
TARGETS: tuple[str, ...] = get_args(Target)
METHODS: tuple[str, ...] = get_args(Method)


# ---- pure functions on [..., pos, head, band, 2] --------------------------------------------------------
def position_angles(
    freqs: Float[Tensor, " band"], positions: Float[Tensor, "*batch pos"]
) -> Float[Tensor, "*batch pos 1 band"]:
    """``theta_i * m`` shaped to broadcast against ``[..., pos, head, band]`` (positions per row if 2-D).

    >>> position_angles(torch.tensor([1.0, 0.5]), torch.arange(3.0))[:, 0].tolist()
    [[0.0, 0.0], [1.0, 0.5], [2.0, 1.0]]
    """
    return (positions[..., None] * freqs)[..., None, :]


def zero_bands(bands: Float[Tensor, "... band 2"]) -> Float[Tensor, "... band 2"]:
    """All zeros (zeroing before or after rotation is the same).

    >>> zero_bands(torch.ones(2, 3, 2)).abs().sum().item()
    0.0
    """
    return torch.zeros_like(bands)


def mean_bands(
    bands: Float[Tensor, "... pos head band 2"], reference: Float[Tensor, "head band 2"] | None = None
) -> Float[Tensor, "... pos head band 2"]:
    """Each band replaced by its mean over positions, or by ``reference`` (broadcast).

    >>> x = torch.arange(8.0).reshape(1, 2, 1, 2, 2)   # [batch, pos, head, band, 2]
    >>> mean_bands(x)[0, :, 0, 0].tolist()
    [[2.0, 3.0], [2.0, 3.0]]
    """
    if reference is None:
        return bands.mean(dim=-4, keepdim=True).expand_as(bands)
    return reference.to(device=bands.device, dtype=bands.dtype).expand_as(bands)


def unrotate_bands(
    bands: Float[Tensor, "... pos head band 2"],
    freqs: Float[Tensor, " band"],
    positions: Float[Tensor, " pos"],
) -> Float[Tensor, "... pos head band 2"]:
    """Undo RoPE: ``rotate(x, -theta_i * m)`` (post-rotation band -> ``amplitude * pre``).

    >>> pre, f, m = torch.randn(4, 1, 3, 2), torch.tensor([1.0, 0.1, 0.01]), torch.arange(4.0)
    >>> torch.allclose(unrotate_bands(rotate(pre, position_angles(f, m)), f, m), pre, atol=1e-6)
    True
    """
    return rotate(bands, -position_angles(freqs, positions), dtype=bands.dtype)


def shift_bands(
    bands: Float[Tensor, "... band 2"], phase: Float[Tensor, " band"] | float
) -> Float[Tensor, "... band 2"]:
    """Extra rotation by ``phase`` radians (per band). ``phase = theta * delta`` moves a token ``delta`` positions.

    >>> shift_bands(torch.tensor([[1.0, 0.0]]), torch.tensor([math.pi / 2])).round().abs().tolist()
    [[0.0, 1.0]]
    """
    return rotate(bands, torch.as_tensor(phase, dtype=torch.float64, device=bands.device), dtype=bands.dtype)


def scale_freq_bands(
    bands: Float[Tensor, "... pos head band 2"],
    freqs: Float[Tensor, " band"],
    positions: Float[Tensor, " pos"],
    factor: float,
) -> Float[Tensor, "... pos head band 2"]:
    """Re-time post-rotation bands to turn at ``factor * theta_i``: extra ``(factor - 1) theta_i m``.

    >>> pre, f, m = torch.randn(5, 1, 2, 2), torch.tensor([0.3, 0.02]), torch.arange(5.0)
    >>> post = rotate(pre, position_angles(f, m))
    >>> torch.allclose(scale_freq_bands(post, f, m, 2.0), rotate(pre, position_angles(2 * f, m)), atol=1e-6)
    True
    """
    return rotate(bands, (factor - 1.0) * position_angles(freqs, positions), dtype=bands.dtype)


# ---- the table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandContext:
    """What a mode function may read besides the band view it changes.

    ``freqs``: radians per token of the view's band axis (the model's angle dtype, on its
    device); ``positions``: ``[pos]`` or ``[batch, pos]`` absolute positions (only for
    position-dependent modes); ``reference``: ``[head, band, 2]`` aligned with the view
    (``mean`` with a fixed reference), else None.
    """

    freqs: Tensor
    positions: Tensor | None = None
    reference: Tensor | None = None


def _apply_zero(x: Tensor, ctx: BandContext, p: dict[str, Any]) -> Tensor:
    return zero_bands(x)


def _apply_mean(x: Tensor, ctx: BandContext, p: dict[str, Any]) -> Tensor:
    return mean_bands(x, ctx.reference)


def _apply_no_rotation(x: Tensor, ctx: BandContext, p: dict[str, Any]) -> Tensor:
    assert ctx.positions is not None  # .to(x.device): no-op unless the model spans devices
    return unrotate_bands(x, ctx.freqs.to(x.device), ctx.positions.to(x.device))


def _apply_shift(x: Tensor, ctx: BandContext, p: dict[str, Any]) -> Tensor:
    if "delta" in p:
        return rotate(x, ctx.freqs.to(x.device) * p["delta"], dtype=x.dtype)
    ph = torch.as_tensor(p["phase"], dtype=ctx.freqs.dtype, device=x.device)
    if ph.ndim == 1 and ph.shape[0] != x.shape[-2]:
        raise ParameterError(
            f"phase has {ph.shape[0]} values but the view has {x.shape[-2]} bands; "
            "pass a scalar or one value per selected band"
        )
    return rotate(x, ph, dtype=x.dtype)


def _apply_scale_freq(x: Tensor, ctx: BandContext, p: dict[str, Any]) -> Tensor:
    assert ctx.positions is not None
    return scale_freq_bands(x, ctx.freqs.to(x.device), ctx.positions.to(x.device), p["factor"])


def _check_none(p: dict[str, Any]) -> str | None:
    return None


def _check_mean(p: dict[str, Any]) -> str | None:
    ref = p.get("reference")
    if isinstance(ref, Tensor):
        finite("reference", ref)
    elif isinstance(ref, dict):
        for side, t in ref.items():
            if isinstance(t, Tensor):
                finite(f"reference[{side!r}]", t)
    return None


def _real(name: str, v: Any) -> float:
    if isinstance(v, Tensor) and v.ndim == 0:
        v = v.item()
    finite(name, v)
    return float(v)


def _check_shift(p: dict[str, Any]) -> str | None:
    if ("phase" in p) == ("delta" in p):
        raise ParameterError(
            "mode 'shift' needs exactly one of phase= (radians) or delta= (positions), "
            f"got {sorted(p) or 'neither'}"
        )
    if "delta" in p:
        p["delta"] = _real("delta", p["delta"])
        if p["delta"] == 0.0:
            return "shift by delta=0 changes nothing; pass a non-zero delta"
        return None
    ph = p["phase"]
    if isinstance(ph, Tensor) or (isinstance(ph, Sequence) and not isinstance(ph, str)):
        t = torch.as_tensor(ph, dtype=torch.float64)
        if t.ndim > 1:
            raise ParameterError(
                f"phase must be a scalar or a 1-d list (one per band), got shape {tuple(t.shape)}"
            )
        finite("phase", t)
        p["phase"] = t if t.ndim else float(t)
    else:
        p["phase"] = _real("phase", ph)
    t = torch.as_tensor(p["phase"], dtype=torch.float64)
    wrapped = torch.remainder(t + math.pi, 2 * math.pi) - math.pi
    if bool((wrapped.abs() < 1e-12).all()):
        return f"shift by phase={p['phase']} (a multiple of 2π) changes nothing; pass a non-zero phase"
    return None


def _check_scale_freq(p: dict[str, Any]) -> str | None:
    if "factor" not in p:
        raise ParameterError("mode 'scale_freq' needs factor=c (the band turns at c * theta)")
    p["factor"] = _real("factor", p["factor"])
    if p["factor"] == 1.0:
        return "scale_freq with factor=1 changes nothing; pass a factor other than 1"
    return None


def check_target(target: Any) -> Target:
    """``target`` if it is one of :data:`TARGETS`, else a :class:`ParameterError`."""
    if not isinstance(target, str) or target not in TARGETS:
        raise ParameterError(f"unknown target {target!r}; expected one of {TARGETS}")
    return target  # type: ignore[return-value]


@dataclass(frozen=True)
class ModeRow:
    """One intervention mode: its function on the band view and everything needed to validate a call.

    ``check(params)`` validates and normalises ``params`` in place and returns a message
    when the parameters provably change nothing (else None). ``cancels_on_qk``: the same
    change on q and k leaves every score unchanged (a pure rotation by a constant angle).
    """

    name: str
    params: tuple[str, ...]
    apply: Callable[[Tensor, BandContext, dict[str, Any]], Tensor]
    check: Callable[[dict[str, Any]], str | None]
    position_dependent: bool = False
    default_target: Target = "qk"
    cancels_on_qk: bool = False
    summary: str = ""

    def resolve_target(self, target: Any) -> Target:
        """``target`` (None = this mode's default), validated."""
        return self.default_target if target is None else check_target(target)

    def check_params(
        self, params: Mapping[str, Any], target: Target, *, symmetric_qk: bool = True
    ) -> dict[str, Any]:
        """A validated, normalised copy of ``params`` for this mode on ``target`` (see :func:`check_params`)."""
        p = dict(params)
        for name in p:
            if name not in self.params:
                allowed = ", ".join(self.params) or "no parameters"
                raise ParameterError(f"mode {self.name!r} takes {allowed}; got unexpected parameter {name!r}")
        why = self.check(p)
        if why is not None:
            raise UselessInterventionError(why)
        if self.cancels_on_qk and target == "qk" and symmetric_qk:
            raise UselessInterventionError(
                f"mode {self.name!r} with target='qk' changes nothing: the same extra angle on q and k cancels "
                "in every q·k. Use target='k' (keys as if delta positions later, the default for shift) or "
                "target='q'"
            )
        return p


MODE_TABLE: dict[str, ModeRow] = {
    r.name: r
    for r in (
        ModeRow("zero", (), _apply_zero, _check_none, summary="set the band to 0"),
        ModeRow(
            "mean",
            ("reference",),
            _apply_mean,
            _check_mean,
            summary="replace the band by its mean over positions, or by reference=",
        ),
        ModeRow(
            "no_rotation",
            (),
            _apply_no_rotation,
            _check_none,
            position_dependent=True,
            summary="undo the band's rotation (NoPE for that band)",
        ),
        ModeRow(
            "shift",
            ("phase", "delta"),
            _apply_shift,
            _check_shift,
            default_target="k",
            cancels_on_qk=True,
            summary="extra rotation by phase= radians or delta= positions (keys: as if delta later)",
        ),
        ModeRow(
            "scale_freq",
            ("factor",),
            _apply_scale_freq,
            _check_scale_freq,
            position_dependent=True,
            summary="the band turns at factor= × theta",
        ),
    )
}
assert tuple(MODE_TABLE) == MODES, "MODE_TABLE and the Mode Literal must list the same modes"


def row(mode: Any) -> ModeRow:
    """The table row of ``mode`` (a clear error for an unknown one).

    >>> row("zero").params
    ()
    """
    if not isinstance(mode, str) or mode not in MODE_TABLE:
        raise ParameterError(f"unknown intervention mode {mode!r}; expected one of {MODES}")
    return MODE_TABLE[mode]


def resolve_target(mode: str, target: Any) -> Target:
    """``target`` (None = the mode's default: ``"k"`` for shift, ``"qk"`` otherwise), validated.

    >>> resolve_target("shift", None), resolve_target("zero", None)
    ('k', 'qk')
    """
    return row(mode).resolve_target(target)


def check_params(
    mode: str, params: dict[str, Any], target: Target, *, symmetric_qk: bool = True
) -> dict[str, Any]:
    """Validate ``params`` for ``mode`` on ``target``; return a normalised copy.

    Raises :class:`~rope_interp.errors.ParameterError` for an unknown, missing or
    non-finite parameter and :class:`~rope_interp.errors.UselessInterventionError` when
    the intervention provably changes nothing. ``symmetric_qk``: the q heads changed are
    exactly the readers of the k heads changed (then a q·k-invariant change on ``"qk"`` is a no-op).

    >>> check_params("scale_freq", {"factor": 2}, "qk")
    {'factor': 2.0}
    >>> check_params("shift", {"delta": 5}, "qk")
    Traceback (most recent call last):
    ...
    rope_interp.errors.UselessInterventionError: mode 'shift' with target='qk' changes nothing: the same extra angle on q and k cancels in every q·k. Use target='k' (keys as if delta positions later, the default for shift) or target='q'
    """
    return row(mode).check_params(params, target, symmetric_qk=symmetric_qk)


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as JSON values (tensors to lists); a ``reference`` cannot be serialised.

    >>> json_params({"phase": torch.tensor([0.5, 1.0])})
    {'phase': [0.5, 1.0]}
    """
    out: dict[str, Any] = {}
    for k, v in params.items():
        if k == "reference" and v is not None:
            raise ParameterError(
                "a mean reference (tensor or BandStats) cannot be written into a spec; "
                "use the default mean over positions, or keep the reference in your own file"
            )
        if isinstance(v, Tensor):
            v = v.tolist()
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            v = float(v)
        out[k] = v
    return out


def angle_dtype(device: torch.device) -> torch.dtype:
    """The dtype angles are computed in: float64, except on MPS (no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def resolve_reference(spec: Any, ref: Any, layers: Sequence[int], side: str) -> dict[int, Tensor]:
    """A mean ``reference`` for one side (``"q"``/``"k"``) as ``{layer: [heads, n_bands, 2]}`` (all heads, all bands).

    ``ref``: a tensor ``[n_layers, heads, n_bands, 2]``, a dict ``{"q": ..., "k": ...}`` of those,
    or a :class:`~rope_interp.read.capture.BandStats` tracking ``rot_q``/``rot_k``.
    """
    from ..read.capture import BandStats

    n_h = spec.n_heads if side == "q" else spec.n_kv_heads
    if isinstance(ref, BandStats):
        site = "rot_" + side
        if site not in ref.sites:
            raise ParameterError(f"the BandStats reference did not track site {site!r} (it has {ref.sites})")
        missing = [L for L in layers if L not in ref.layers]
        if missing:
            raise ParameterError(f"the BandStats reference has no statistics for layers {missing}")
        full = finite(f"BandStats mean of {site}", ref.mean_vector(site))
        return {L: full[ref.layers.index(L)] for L in layers}
    t = ref[side] if isinstance(ref, dict) and side in ref else ref
    if not isinstance(t, Tensor):
        raise ParameterError("reference must be a tensor, a dict {'q': ..., 'k': ...} or a BandStats")
    want = (spec.n_layers, n_h, spec.n_bands, 2)
    if tuple(t.shape) != want:
        raise ParameterError(
            f"reference for {side!r} must have shape [n_layers, heads, n_bands, 2] = {want}, "
            f"got {tuple(t.shape)} (a dict {{'q': ..., 'k': ...}} gives one per side)"
        )
    finite("reference", t)
    return {L: t[L] for L in layers}


# ---- a mode resolved once: validate into a recipe, then apply ---------------------------------------------
@dataclass(frozen=True, eq=False)
class ResolvedMode:
    """One mode, validated once and prepared for one model: what :func:`resolve_mode` returns.

    ``row``: the :data:`MODE_TABLE` row; ``target``: ``"q"``, ``"k"`` or ``"qk"``; ``params``:
    checked and normalised (a per-band ``phase`` on the model's device, in the angle dtype);
    ``layers`` / ``bands``: the layers it acts at and the bands of the view it receives (its band
    axis); ``q_heads`` / ``k_heads``: the heads changed on each side (None = all); ``freqs``:
    ``{layer: [len(bands)]}`` radians per token; ``reference``: ``{(layer, side): [head, band, 2]}``
    for ``mean`` with a fixed reference. :class:`~rope_interp.intervene.ablate.BandIntervention`
    and the sweep engine (:class:`~rope_interp.sweep.grid.CellOp`) both apply it with :meth:`apply`.

    >>> from rope_interp.model.testing import tiny_model
    >>> rm = resolve_mode(tiny_model(), "shift", params={"delta": 2}, layers=[0], bands=[1, 2])
    >>> rm.mode, rm.target, rm.params, rm.freqs[0].shape
    ('shift', 'k', {'delta': 2.0}, torch.Size([2]))
    >>> rm.apply(torch.ones(1, 3, 2, 2, 2), 0, "k").shape   # [batch, pos, head, band, 2]
    torch.Size([1, 3, 2, 2, 2])
    """

    row: ModeRow
    target: Target
    params: dict[str, Any]
    spec: RotaryBands
    layers: list[int]
    bands: list[int]
    q_heads: list[int] | None
    k_heads: list[int] | None
    freqs: dict[int, Tensor]
    reference: dict[tuple[int, str], Tensor]
    angle_dtype: torch.dtype

    @property
    def mode(self) -> str:
        return self.row.name

    @property
    def position_dependent(self) -> bool:
        return self.row.position_dependent

    @property
    def is_identity(self) -> bool:
        """An empty band or head selection: a documented identity (no hooks)."""
        return not self.bands or (self.q_heads == [] and self.k_heads in ([], None))

    def positions(self, n: int, device: Any, start: int = 0) -> Tensor:
        """Positions ``start .. start + n - 1`` in the angle dtype (for the position-dependent modes)."""
        return torch.arange(start, start + n, device=device, dtype=self.angle_dtype)

    def apply(self, x: Tensor, layer: int, side: str, positions: Tensor | None = None) -> Tensor:
        """The new band view for ``x`` ``[..., pos, head, band, 2]`` of ``side`` at ``layer``.

        ``positions``: ``[pos]`` or ``[batch, pos]``; default ``0 .. pos - 1`` for the modes that need them.
        """
        if positions is None and self.row.position_dependent:
            positions = self.positions(x.shape[-4], x.device)
        ctx = BandContext(self.freqs[layer], positions, self.reference.get((layer, side)))
        return self.row.apply(x, ctx, self.params)


def _heads(
    spec: RotaryBands, heads: Any, kv_heads: Any, target: Target
) -> tuple[list[int] | None, list[int] | None]:
    """The q and k heads an intervention changes (None = all); under GQA the k side needs whole groups."""
    q = None if heads is None else indices("head", heads, spec.n_heads)
    if kv_heads is not None:
        k = indices("kv head", kv_heads, spec.n_kv_heads)
        if "k" not in target:
            raise RopeInterpError(f"kv_heads only applies to keys, but target={target!r}")
        return q, k
    if q is None or "k" not in target:
        return q, None
    kv = sorted({int(spec.kv_map[h]) for h in q})
    if spec.n_kv_heads != spec.n_heads:
        readers = [h for h in range(spec.n_heads) if int(spec.kv_map[h]) in kv]
        extra = sorted(set(readers) - set(q))
        if extra:
            raise RopeInterpError(
                f"under grouped-query attention the keys of query heads {q} are kv heads {kv}, which query "
                f"heads {extra} also read; select whole groups (heads={readers}), use target='q', or pass "
                f"kv_heads={kv} explicitly to change those keys for every head of the group"
            )
    return q, kv


def _symmetric_qk(spec: RotaryBands, target: Target, q_heads: Any, k_heads: Any) -> bool:
    """True when the q heads changed are exactly the query heads reading the k heads changed."""
    if target != "qk":
        return False
    q = set(range(spec.n_heads) if q_heads is None else q_heads)
    k = set(range(spec.n_kv_heads) if k_heads is None else k_heads)
    return q == {h for h in range(spec.n_heads) if int(spec.kv_map[h]) in k}


def _check_angles(
    name: str,
    p: Mapping[str, Any],
    spec: RotaryBands,
    layers: Sequence[int],
    bands: Sequence[int],
    adt: torch.dtype,
) -> None:
    """Refuse a ``shift`` ``delta`` or ``scale_freq`` ``factor`` whose extra angle overflows ``adt``.

    The largest extra angle is ``|delta| · max θ`` (shift) or ``|factor − 1| · max θ · (n_ctx − 1)``
    (scale_freq) over the selected layers and bands; past the dtype's largest finite value it is
    ``inf``, its cos/sin NaN, and TransformerLens would zero the NaN q/k, a sweep reporting finite
    but meaningless numbers.
    """
    if name == "shift" and "delta" in p:
        scale, what = abs(float(p["delta"])), f"delta={p['delta']!r}"
    elif name == "scale_freq":
        scale, what = abs(float(p["factor"]) - 1.0) * max(spec.n_ctx - 1, 1), f"factor={p['factor']!r}"
    else:
        return
    if not layers or not bands:
        return
    theta = float(spec.freqs[list(layers)][:, list(bands)].abs().max())
    bound = scale * theta
    if not math.isfinite(bound) or bound > torch.finfo(adt).max:
        raise ParameterError(
            f"mode {name!r} with {what}: the extra rotation angle reaches {bound:.3g} rad, beyond what "
            f"{str(adt).removeprefix('torch.')} holds (cos/sin would be NaN); pass a smaller magnitude"
        )


def resolve_mode(
    model: Model,
    mode: Any = "zero",
    target: Any = None,
    params: Mapping[str, Any] | None = None,
    *,
    layers: int | Sequence[int] | None = None,
    bands: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    kv_heads: int | Sequence[int] | None = None,
    symmetric_qk: bool | None = None,
    spec: RotaryBands | None = None,
) -> ResolvedMode:
    """Every check of one intervention, once: ``mode`` looked up in :data:`MODE_TABLE`, ``target``
    (None = the mode's default), ``layers``/``bands``/``heads`` (None = all), ``params`` (a ``mean``
    ``reference=`` among them), and the constants prepared on the model's device.

    ``bands`` None: the view holds every band of the model (a sweep), and a per-band ``phase``
    has one value per band of the model; else one per selected band. ``heads`` are query heads
    (``kv_heads`` picks key heads explicitly; see :mod:`rope_interp.intervene.ablate` for the GQA
    rule). ``symmetric_qk`` None: read from the heads (see :func:`check_params`). ``spec``: the
    model's :class:`~rope_interp.model.layout.RotaryBands`, when the caller has it already.

    >>> from rope_interp.model.testing import tiny_model
    >>> resolve_mode(tiny_model(), "shift", "qk", {"delta": 1})
    Traceback (most recent call last):
    ...
    rope_interp.errors.UselessInterventionError: mode 'shift' with target='qk' changes nothing: the same extra angle on q and k cancels in every q·k. Use target='k' (keys as if delta positions later, the default for shift) or target='q'
    """
    r = row(mode)
    target = r.resolve_target(target)
    spec = RotaryBands.from_model(model) if spec is None else spec
    layer_list = adapter.layers(model, layers)
    band_list = spec.bands(bands)
    q_heads, k_heads = _heads(spec, heads, kv_heads, target)
    if symmetric_qk is None:
        symmetric_qk = _symmetric_qk(spec, target, q_heads, k_heads)
    p = r.check_params(params or {}, target, symmetric_qk=symmetric_qk)
    dev = adapter.device(model)
    adt = angle_dtype(dev)
    if isinstance(p.get("phase"), Tensor):
        ph = p["phase"]
        if ph.shape[0] != len(band_list):
            which = "band of the model" if bands is None else "selected band"
            raise ParameterError(
                f"phase must be a scalar or one value per {which} ({len(band_list)}), got shape {tuple(ph.shape)}"
            )
        p["phase"] = ph.to(device=dev, dtype=adt)
    reference: dict[tuple[int, str], Tensor] = {}
    if r.name == "mean" and p.get("reference") is not None:
        dtype = next(model.parameters()).dtype
        for side in ("q", "k") if target == "qk" else (target,):
            side_heads = q_heads if side == "q" else k_heads
            for L, v in resolve_reference(spec, p["reference"], layer_list, side).items():
                v = v[:, band_list]
                if side_heads is not None:
                    v = v[side_heads]
                reference[L, side] = v.to(device=dev, dtype=dtype)
    freqs = {L: spec.freqs[L, band_list].to(device=dev, dtype=adt) for L in layer_list}
    _check_angles(r.name, p, spec, layer_list, band_list, adt)
    return ResolvedMode(r, target, p, spec, layer_list, band_list, q_heads, k_heads, freqs, reference, adt)
