"""Specs that can be saved: an intervention or a sweep as a small JSON-able record.

A figure can be traced to exactly what was done: every sweep run from a :class:`SweepSpec`
carries it in ``result.extra["spec"]``, the CLI writes it beside its CSV
(``<name>.spec.json``) and accepts it back (``rope-interp sweep --spec FILE``).

* :class:`InterventionSpec` — the arguments of :func:`~rope_interp.intervene.ablate.ablate_bands`
  (``.build(model)``);
* :class:`SweepSpec` — the input tokens, the metric, the grid, the mode or patch source and the
  tier (``.run(model)``).

Both have ``to_dict`` / ``from_dict`` and ``to_json`` / ``from_json``; ``from_dict`` validates every
field (types, shapes, unknown keys, modes, targets, tiers, axes, the tier's ``options``, the ``model``
record) with a :class:`~rope_interp.errors.ParameterError` before any model is needed.

A :class:`SweepSpec` run records its model (``model``: name, config and weight hashes, dtype, library
versions; :mod:`rope_interp.model.fingerprint`); replaying it on a model that differs in any of the first
four raises :class:`~rope_interp.errors.ReplayMismatchError` naming the field, other library versions only
warn. The format stays ``version: 1``: a spec without a ``model`` record (written before it existed)
still reads, and :meth:`SweepSpec.from_file` warns that its replay is unchecked.
A ``mean`` reference (a tensor or BandStats) cannot be serialised and is refused.

>>> spec = InterventionSpec(mode="shift", bands=[3], layers=[1], params={"delta": 5})
>>> InterventionSpec.from_json(spec.to_json()) == spec
True
>>> from rope_interp.model.testing import tiny_model
>>> spec.build(tiny_model()).target    # shift acts on keys unless told otherwise
'k'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..errors import ParameterError, ReplayMismatchError, TokenError
from ..intervene.modes import METHODS, MODES, Method, Mode, Target, check_target, json_params
from ..model.kind import Model
from ..validate import positive_int, token_id
from .grid import AXES, SweepResult

SPEC_VERSION = 1


def _ints(name: str, v: Any) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        raise ParameterError(f"spec field {name!r} must be a list of integers or null, got {v!r}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ParameterError(f"spec field {name!r} must hold integers, got {x!r}")
    return list(v)


def _selection(name: str, v: Any) -> list[int] | None:
    """A selection list (layers, heads, bands, positions): integers, not empty, no repeats; None = all."""
    out = _ints(name, v)
    if out is not None and not out:
        raise ParameterError(f"spec field {name!r} is an empty list: name at least one, or use null for all")
    if out is not None and len(set(out)) != len(out):
        raise ParameterError(f"spec field {name!r} lists an index more than once: {out}")
    return out


def _token_rows(name: str, rows: Any) -> list[list[int]] | None:
    """Token ids ``[batch][pos]``: a non-empty list of equally long, non-empty lists of ids >= 0."""
    if rows is None:
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise ParameterError(f"spec field {name!r} must be a non-empty list of token-id lists ([batch][pos])")
    if any(len(r) == 0 for r in rows) or len({len(r) for r in rows}) != 1:
        raise ParameterError(
            f"spec field {name!r} needs rows of one non-zero length, got lengths {[len(r) for r in rows]}"
        )
    try:
        return [[token_id(f"spec field {name!r}", x) for x in r] for r in rows]
    except TokenError as err:
        raise ParameterError(str(err)) from None


def _text(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ParameterError(f"spec field {name!r} must be a non-empty string or null, got {v!r}")
    return v


def _metric_record(m: Any) -> dict[str, Any]:
    """The ``metric`` field checked for shape (token strings are resolved against the model at run time)."""
    if not isinstance(m, dict) or m.get("name") not in ("loss", "logit_diff"):
        raise ParameterError(f"metric must be {{'name': 'loss'}} or {{'name': 'logit_diff', ...}}, got {m!r}")
    rest = sorted(set(m) - {"name"})
    if m["name"] == "loss":
        if rest:
            raise ParameterError(f"metric 'loss' takes no options, got {rest}")
        return dict(m)
    if set(rest) - {"answer", "wrong", "pos"} or "answer" not in m or "wrong" not in m:
        raise ParameterError(f"metric 'logit_diff' needs answer and wrong (and optional pos), got {rest}")
    for key in ("answer", "wrong"):
        if not isinstance(m[key], str):
            try:
                token_id(f"metric {key!r}", m[key])
            except TokenError as err:
                raise ParameterError(f"{err} (or a single-token string)") from None
    if "pos" in m and (isinstance(m["pos"], bool) or not isinstance(m["pos"], int)):
        raise ParameterError(f"metric 'pos' must be an integer position, got {m['pos']!r}")
    return dict(m)


OPTIONS: dict[str, tuple[str, ...]] = {
    "naive": (),
    "exact": ("batch_size", "max_batch_tokens"),
    "attribution": (),
    "qk_attribution": (),
    "refine": ("top", "estimate", "max_exact", "batch_size", "max_batch_tokens"),
}
"""The ``options`` each tier (``method``) takes; anything else (``source``, ``progress``, ...) is refused."""


def _options(method: str, opts: Any) -> dict[str, Any]:
    if not isinstance(opts, dict):
        raise ParameterError(f"spec field 'options' must be an object, got {opts!r}")
    unknown = sorted(set(opts) - set(OPTIONS[method]))
    if unknown:
        raise ParameterError(
            f"spec options {unknown} are not options of method {method!r} (it takes {list(OPTIONS[method])}); "
            "the patch source is clean_tokens/clean_text, the selection has its own fields"
        )
    for k in ("batch_size", "max_exact"):
        if k in opts:
            positive_int(f"spec option {k!r}", opts[k], allow_none=True)
    for k in ("max_batch_tokens", "top"):
        if k in opts:
            positive_int(f"spec option {k!r}", opts[k])
    if "estimate" in opts and opts["estimate"] not in ("attribution", "qk_attribution"):
        raise ParameterError(
            f"spec option 'estimate' must be 'attribution' or 'qk_attribution', got {opts['estimate']!r}"
        )
    return dict(opts)


MODEL_KEYS = ("name", "config", "weights", "dtype", "transformer_lens", "transformers")
"""The fields of a spec's ``model`` record (:func:`~rope_interp.model.fingerprint.fingerprint`)."""


def _model_record(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != set(MODEL_KEYS):
        raise ParameterError(
            f"spec field 'model' must be an object with exactly the keys {list(MODEL_KEYS)}, got {v!r}"
        )
    for k in ("name", "config", "weights", "dtype"):
        if not isinstance(v[k], str):
            raise ParameterError(f"spec field 'model.{k}' must be a string, got {v[k]!r}")
    for k in ("transformer_lens", "transformers"):
        if v[k] is not None and not isinstance(v[k], str):
            raise ParameterError(f"spec field 'model.{k}' must be a version string or null, got {v[k]!r}")
    return dict(v)


def check_model(record: dict[str, Any] | None, model: Model) -> dict[str, Any]:
    """``model``'s fingerprint, after checking it matches ``record`` (a spec's ``model`` field).

    A different name, config, weights or dtype raises :class:`~rope_interp.errors.ReplayMismatchError`
    naming the field; different TransformerLens / transformers versions only warn. ``record=None``
    (a spec that records no model) checks nothing.
    """
    import warnings

    from ..model.fingerprint import compare, fingerprint

    actual = fingerprint(model)
    if record is None:
        return actual
    differs = compare(record, actual)
    if differs is not None:
        raise ReplayMismatchError(
            f"this spec was made on model {record['name']!r} and this model differs in its {differs} "
            f"(recorded {record[differs]!r}, this model {actual[differs]!r}); load the model the spec "
            "records (rope-interp: --model NAME, --dtype) to replay it"
        )
    for k in ("transformer_lens", "transformers"):
        if record[k] != actual[k]:
            warnings.warn(
                f"this spec was made with {k} {record[k]}, this is {actual[k]}: numbers may differ slightly",
                stacklevel=3,
            )
    return actual


def _check_keys(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ParameterError(f"a {cls.__name__} is a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("spec", cls.__name__)
    if kind != cls.__name__:
        raise ParameterError(f"this is a {kind} spec, not a {cls.__name__}")
    version = d.pop("version", SPEC_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):  # True == 1 and 1.0 == 1 in Python
        raise ParameterError(
            f"spec version must be an integer (this rope_interp reads {SPEC_VERSION}), "
            f"got {version!r} ({type(version).__name__})"
        )
    if version != SPEC_VERSION:
        raise ParameterError(
            f"spec version {version} is not supported (this rope_interp reads {SPEC_VERSION})"
        )
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ParameterError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return d


class _JsonSpec:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (with ``spec`` and ``version`` keys)."""
        d = asdict(self)  # type: ignore[call-overload]
        d["params"] = json_params(d.get("params") or {})
        return {"spec": type(self).__name__, "version": SPEC_VERSION, **d}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParameterError(f"not a JSON spec: {e}") from None
        return cls.from_dict(d)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InterventionSpec(_JsonSpec):
    """The arguments of :func:`~rope_interp.intervene.ablate.ablate_bands`, as data."""

    mode: Mode = "zero"
    bands: list[int] | None = None
    layers: list[int] | None = None
    heads: list[int] | None = None
    kv_heads: list[int] | None = None
    target: Target | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InterventionSpec:
        d = _check_keys(cls, d)
        if d.get("mode", "zero") not in MODES:
            raise ParameterError(f"unknown intervention mode {d.get('mode')!r}; expected one of {MODES}")
        if d.get("target") is not None:
            check_target(d["target"])
        for k in ("bands", "layers", "heads", "kv_heads"):
            d[k] = _ints(k, d.get(k))
        params = d.get("params", {})
        if not isinstance(params, dict) or any(not isinstance(k, str) for k in params):
            raise ParameterError(f"spec field 'params' must be an object of named parameters, got {params!r}")
        return cls(**d)

    def build(self, model: Model):
        """The :class:`~rope_interp.intervene.ablate.BandIntervention` this spec describes (validated there)."""
        from ..intervene.ablate import ablate_bands

        return ablate_bands(
            model,
            self.bands,
            self.layers,
            self.heads,
            self.target,
            self.mode,
            kv_heads=self.kv_heads,
            **self.params,
        )


@dataclass(frozen=True)
class SweepSpec(_JsonSpec):
    """A whole sweep: inputs, metric, grid, what each cell gets, and the tier.

    ``tokens``: token ids ``[batch][pos]`` of the run (the corrupted run when patching), or
    ``text`` tokenized with the model's tokenizer; ``clean_tokens`` / ``clean_text``: the patch
    source (then ``kind="patch"``). ``metric``: ``{"name": "loss"}`` (next-token loss of the
    run) or ``{"name": "logit_diff", "answer": " Paris", "wrong": " Rome", "pos": -1}``
    (strings are single tokens, ints token ids). ``options``: the tier's options (:data:`OPTIONS`:
    ``batch_size``, ``max_batch_tokens`` for exact; also ``top``, ``estimate``, ``max_exact`` for refine).
    ``model``: the record of the model it was run on (:func:`~rope_interp.model.fingerprint.fingerprint`;
    :meth:`run` fills it into the result's spec and refuses a model that differs from a recorded one).

    >>> from rope_interp.model.testing import tiny_model
    >>> spec = SweepSpec(tokens=[[1, 2, 3, 4]], metric={"name": "loss"}, mode="no_rotation", layers=[1])
    >>> r = spec.run(tiny_model())
    >>> r.values.shape, r.extra["spec"]["mode"]
    (torch.Size([1, 8]), 'no_rotation')
    """

    metric: dict[str, Any] = field(default_factory=lambda: {"name": "loss"})
    tokens: list[list[int]] | None = None
    text: str | None = None
    clean_tokens: list[list[int]] | None = None
    clean_text: str | None = None
    per: list[str] = field(default_factory=lambda: ["layer", "band"])
    method: Method = "exact"
    mode: Mode | None = None
    params: dict[str, Any] = field(default_factory=dict)
    target: Target | None = None
    layers: list[int] | None = None
    heads: list[int] | None = None
    bands: list[int] | None = None
    positions: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return "patch" if self.clean_tokens is not None or self.clean_text is not None else "ablation"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        """Validate every field (types, shapes, the options of the tier, the model record) and build the spec.

        Nothing needs a model: a bad spec is refused before one loads.
        """
        from ..intervene.modes import row

        d = _check_keys(cls, d)
        method = d.get("method", "exact")
        if not isinstance(method, str) or method not in METHODS:
            raise ParameterError(f"unknown method {method!r}; expected one of {METHODS}")
        mode = d.get("mode")
        if mode is not None and (not isinstance(mode, str) or mode not in MODES):
            raise ParameterError(f"unknown intervention mode {mode!r}; expected one of {MODES}")
        if d.get("target") is not None:
            check_target(d["target"])
        per = d.get("per", ["layer", "band"])
        if (
            not isinstance(per, (list, tuple))
            or not per
            or any(not isinstance(a, str) or a not in AXES for a in per)
            or len(set(per)) != len(per)
        ):
            raise ParameterError(f"per must be a non-empty list of distinct axes from {AXES}, got {per!r}")
        d["per"] = list(per)  # a spec built with a tuple round-trips
        for k in ("layers", "heads", "bands", "positions"):
            d[k] = _selection(k, d.get(k))
        for k in ("tokens", "clean_tokens"):
            d[k] = _token_rows(k, d.get(k))
        for k in ("text", "clean_text"):
            d[k] = _text(k, d.get(k))
        if (d["tokens"] is None) == (d["text"] is None):
            raise ParameterError("a SweepSpec needs exactly one of tokens / text")
        patch = d["clean_tokens"] is not None or d["clean_text"] is not None
        if d["clean_tokens"] is not None and d["clean_text"] is not None:
            raise ParameterError("a SweepSpec takes at most one of clean_tokens / clean_text")
        d["metric"] = _metric_record(d.get("metric", {"name": "loss"}))
        params = d.get("params", {})
        if not isinstance(params, dict) or any(not isinstance(k, str) for k in params):
            raise ParameterError(f"spec field 'params' must be an object of named parameters, got {params!r}")
        if patch:
            if mode is not None or params:
                raise ParameterError("a patch spec (clean_tokens/clean_text) takes no mode/params")
        else:
            r = row("zero" if mode is None else mode)
            r.check_params(params, r.resolve_target(d.get("target")), symmetric_qk="pos" not in d["per"])
        d["options"] = _options(method, d.get("options", {}))
        d["model"] = _model_record(d.get("model"))
        return cls(**d)

    @classmethod
    def from_file(cls, path: Any) -> SweepSpec:
        """Read a spec from a JSON file: a bare spec, or a result written by :func:`write_result`."""
        from pathlib import Path

        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ParameterError(f"cannot read a spec from {str(path)!r}: {e}") from None
        if isinstance(d, dict) and isinstance(d.get("spec"), dict):
            d = d["spec"]
        elif isinstance(d, dict) and "values" in d and d.get("spec") is None:
            raise ParameterError(f"{str(path)!r} holds a result that was not run from a spec")
        spec = cls.from_dict(d)
        if spec.model is None:
            import warnings

            warnings.warn(
                f"the spec in {str(path)!r} records no model (written by an older rope_interp): it is "
                "replayed on whatever model is given, unchecked; make sure it is the one it was made on",
                stacklevel=2,
            )
        return spec

    # ---- running -------------------------------------------------------------------------------------------
    def _tokens(self, model: Model, ids: Any, text: Any, what: str) -> torch.Tensor:
        from ..model import adapter

        if (ids is None) == (text is None):
            raise ParameterError(
                f"a SweepSpec needs exactly one of {what}_tokens / {what}_text".replace("run_", "")
            )
        if ids is not None:
            return adapter.to_tokens(model, torch.tensor(ids, dtype=torch.long))
        return adapter.to_tokens(model, text)  # a text longer than the context is refused, never cut

    def _metric(self, model: Model, tokens: torch.Tensor):
        from ..model import adapter
        from ..validate import indices
        from .metrics import logit_diff, loss_metric

        m = dict(self.metric)
        name = m.pop("name")
        if name == "loss":
            if m:
                raise ParameterError(f"metric 'loss' takes no options, got {sorted(m)}")
            return loss_metric(tokens)
        unknown = sorted(set(m) - {"answer", "wrong", "pos"})
        if unknown or "answer" not in m or "wrong" not in m:
            raise ParameterError(
                f"metric 'logit_diff' needs answer and wrong (and optional pos), got {sorted(m)}"
            )

        d_vocab = int(adapter.config(model).d_vocab)

        def tok(key: str) -> int:
            v = m[key]
            if isinstance(v, str):
                return int(model.to_single_token(v))
            return token_id(f"metric {key!r}", v, d_vocab)  # 5.9, true or -1 are refused, not coerced

        pos = indices("metric 'pos'", [m.get("pos", -1)], int(tokens.shape[-1]), "the spec's tokens")[0]
        return logit_diff(tok("answer"), tok("wrong"), pos)

    def run(self, model: Model, progress: bool = False) -> SweepResult:
        """Run the sweep on ``model``; the result carries this spec, with ``model``'s record, in ``extra["spec"]``.

        A spec that records a model refuses another one (:func:`check_model`) before any forward.
        """
        from dataclasses import replace

        from .tiers import run_sweep

        record = check_model(self.model, model)  # before any forward
        tokens = self._tokens(model, self.tokens, self.text, "run")
        kw: dict[str, Any] = dict(
            layers=self.layers,
            heads=self.heads,
            bands=self.bands,
            positions=self.positions,
            target=self.target,
            progress=progress,
            **self.options,
        )
        if self.kind == "patch":
            if self.mode is not None or self.params:
                raise ParameterError("a patch spec (clean_tokens/clean_text) takes no mode/params")
            kw["source"] = self._tokens(model, self.clean_tokens, self.clean_text, "clean")
        else:
            kw.update(mode=self.mode, params=dict(self.params))
        result = run_sweep(model, tokens, self._metric(model, tokens), tuple(self.per), self.method, **kw)
        result.extra["spec"] = replace(self, model=record).to_dict()
        return result


def write_result(result: SweepResult, path: Any) -> None:
    """Write ``result`` as JSON (values, dims, coords, base, method, spec) to ``path``, atomically.

    >>> import tempfile, pathlib
    >>> r = SweepResult(torch.zeros(1, 2), ("layer", "band"), {"layer": [0], "band": [0, 1]}, 0.5, "exact")
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_result(r, p); json.loads(p.read_text())["base"]
    0.5
    """
    import os
    from pathlib import Path

    extra = {k: v for k, v in result.extra.items() if k != "spec"}
    for k, v in list(extra.items()):
        if isinstance(v, torch.Tensor):
            extra[k] = v.tolist()
    payload = {
        "spec": result.extra.get("spec"),
        "method": result.method,
        "dims": list(result.dims),
        "coords": result.coords,
        "base": result.base,
        "values": result.values.tolist(),
        "extra": extra,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
