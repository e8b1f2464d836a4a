"""A sweep's selection, validated once: the tokens, the grid of cells and what each cell receives.

Every tier of :mod:`rope_interp.sweep.tiers` takes the same selection keywords
(:class:`SelectionArgs`: ``source``, ``mode``, ``params``, ``layers``, ``heads``, ``bands``,
``positions``, ``target``), turns them into one :class:`Selection` with :meth:`Selection.build`
(the mode looked up and checked once, the model's :class:`~rope_interp.model.layout.RotaryBands`
built once) and hands that value down. Each public tier declares them once, as
``**selection: Unpack[SelectionArgs]`` (typed keywords, PEP 692), and runs a private function of the
:class:`Selection`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from torch import Tensor

from ..errors import ParameterError, RopeInterpError
from ..intervene.modes import Mode, check_target, resolve_mode
from ..model import adapter
from ..model.kind import Model
from ..model.layout import RotaryBands
from .grid import CellOp, Grid, capture_source, grid_dims


class SelectionArgs(TypedDict, total=False):
    """The selection keywords of every sweep tier (each defaults to None).

    ``source``: clean tokens whose bands are patched into each cell (then no ``mode``/``params``);
    ``mode``/``params``: what each cell gets otherwise (default ``"zero"``; parameters as for
    :func:`~rope_interp.intervene.ablate.ablate_bands`); ``layers``/``heads``/``bands``/``positions``:
    the coordinates of the grid (None = all); ``target``: ``"q"``, ``"k"`` or ``"qk"`` (None = the
    mode's default, ``"qk"`` for patching).
    """

    source: Any
    mode: Mode | None
    params: dict[str, Any] | None
    layers: Sequence[int] | None
    heads: Sequence[int] | None
    bands: Sequence[int] | None
    positions: Sequence[int] | None
    target: str | None


@dataclass(frozen=True, eq=False)
class Selection:
    """What a sweep visits and what each cell receives, validated once from the tier's keywords.

    ``tokens``: the run ``[batch, pos]`` on the model's device; ``grid``: the cells
    (:class:`~rope_interp.sweep.grid.Grid`, which holds the model's layout); ``op``: what a cell
    gets (:class:`~rope_interp.sweep.grid.CellOp`: a resolved mode, or the source run's bands).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> sel = Selection.build(tiny_model(), [[1, 2, 3]], ("layer", "band"), {"mode": "shift", "params": {"delta": 1}})
    >>> sel.grid.shape, sel.grid.target, sel.extra()
    ((2, 8), 'k', {'kind': 'ablation', 'mode': 'shift', 'target': 'k'})
    """

    tokens: Tensor
    grid: Grid
    op: CellOp

    @property
    def spec(self) -> RotaryBands:
        return self.grid.spec

    @classmethod
    def build(
        cls,
        model: Model,
        tokens: Any,
        per: str | Sequence[str],
        selection: Mapping[str, Any],
        where: str = "Selection.build",
    ) -> Selection:
        """Validate the tokens, ``per`` and the :class:`SelectionArgs` in ``selection`` (missing = None).

        A key that is no selection keyword is refused as Python refuses an unknown keyword argument
        (``where`` names the function).
        """
        unknown = [k for k in selection if k not in SelectionArgs.__annotations__]
        if unknown:
            raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
        s: dict[str, Any] = {k: selection.get(k) for k in SelectionArgs.__annotations__}
        for k in ("layers", "heads", "bands", "positions"):
            try:
                empty = s[k] is not None and not isinstance(s[k], (str, bytes)) and len(s[k]) == 0
            except TypeError:  # an int or a 0-d tensor: one index, checked with the others later
                empty = False
            if empty:
                raise ParameterError(
                    f"{where}: {k}= is empty, an empty grid would return no numbers; pass at least one "
                    f"index, or None for all"
                )
        tokens = adapter.to_tokens(model, tokens)
        spec = RotaryBands.from_model(model)
        dims = grid_dims(per)
        layers = adapter.layers(model, s["layers"])
        axes = (s["heads"], s["bands"], s["positions"])
        if s["source"] is not None:
            if s["mode"] is not None or s["params"]:
                raise ParameterError(
                    "source= patches the clean run's bands into each cell; mode=/params= are for ablation "
                    "sweeps (leave them out, or drop source=)"
                )
            target = "qk" if s["target"] is None else check_target(s["target"])
            grid = Grid.build(spec, dims, layers, *axes, target, tokens.shape[1])
            source = adapter.to_tokens(model, s["source"])
            if source.shape != tokens.shape:
                raise RopeInterpError(
                    f"source (clean) tokens {tuple(source.shape)} and run tokens {tuple(tokens.shape)} "
                    "differ in shape"
                )
            return cls(tokens, grid, CellOp(spec, source=capture_source(model, source, layers)))
        mode = "zero" if s["mode"] is None else s["mode"]
        recipe = resolve_mode(
            model, mode, s["target"], s["params"], layers=layers, symmetric_qk="pos" not in dims, spec=spec
        )
        grid = Grid.build(spec, dims, layers, *axes, recipe.target, tokens.shape[1])
        if recipe.position_dependent and adapter.of(model).positions_from_tables:
            raise ParameterError(
                f"a sweep in mode {mode!r} needs token positions, which a TransformerBridge does not expose to "
                "start_at_layer runs; load the model as a HookedTransformer"
            )
        return cls(tokens, grid, CellOp(spec, recipe=recipe))

    def extra(self, **more: Any) -> dict[str, Any]:
        """The ``extra`` of the sweep's result: what the cells got, the target, the head axis's name
        (``"head"`` or ``"kv_head"``, per head only; :class:`~rope_interp.sweep.grid.SweepResult`), and ``more``."""
        recipe = self.op.recipe
        kind = {"kind": "patch"} if recipe is None else {"kind": "ablation", "mode": recipe.mode}
        axis = {"head_axis": self.grid.head_axis} if "head" in self.grid.dims else {}
        return {**kind, "target": self.grid.target, **axis, **more}


PER_DEFAULT = ("layer", "band")
