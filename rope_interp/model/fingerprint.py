"""A model's fingerprint: what a saved spec records so that a replay on another model is refused.

:func:`fingerprint` returns a small JSON-able record (ours, not from a paper):

* ``name`` — the config's ``model_name``;
* ``config`` — sha256 over the config fields that change what a forward computes
  (:data:`CONFIG_FIELDS`, those the config has), as sorted JSON;
* ``weights`` — sha256 over every parameter's name, shape and a fixed sample of its values:
  the first and last :data:`SAMPLE` elements and :data:`SAMPLE` evenly strided ones of the flattened
  tensor, cast to float32. Every parameter is touched, so a different checkpoint (or a fine-tune
  that moved any sampled entry) differs; an edit to an unsampled entry alone is not seen. Cost on
  the embedded SmolLM2-135M: well under a second (it reads ~0.1 % of the weights);
* ``dtype`` — the parameters' dtype;
* ``transformer_lens`` / ``transformers`` — the installed versions (a mismatch is only warned about).

:func:`compare` names the first field that differs (name, config, dtype, weights: a model in another
dtype is reported as such, though its rounded weights differ too).

>>> from rope_interp.model.testing import tiny_model
>>> a, b = fingerprint(tiny_model()), fingerprint(tiny_model())
>>> a == b, sorted(a)
(True, ['config', 'dtype', 'name', 'transformer_lens', 'transformers', 'weights'])
>>> compare(a, {**a, "weights": "0" * 64})
'weights'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .kind import Model

SAMPLE = 64
"""Elements per parameter in each of the three parts of the weight sample (head, tail, strided)."""

CONFIG_FIELDS = (
    "model_name",
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "n_ctx",
    "n_key_value_heads",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "rotary_dim",
    "rotary_base",
    "rotary_adjacent_pairs",
    "use_NTK_by_parts_rope",
    "NTK_by_parts_factor",
    "NTK_by_parts_low_freq_factor",
    "NTK_by_parts_high_freq_factor",
    "NTK_original_ctx_len",
    "eps",
    "gated_mlp",
    "final_rms",
    "original_architecture",
)
"""Config fields hashed into ``config`` (missing ones are skipped)."""

FIELDS = ("name", "config", "dtype", "weights")
"""The fields a replay must match; versions are compared separately (warned, not refused)."""


def _json(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    return str(v)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("transformer_lens", "transformers"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _sample(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    n = flat.numel()
    if n <= 3 * SAMPLE:
        return flat.float().cpu()
    stride = flat[:: max(1, n // SAMPLE)][:SAMPLE]
    return torch.cat([flat[:SAMPLE], flat[-SAMPLE:], stride]).float().cpu()


def fingerprint(model: Model) -> dict[str, Any]:
    """The model's record: name, config hash, weight-sample hash, dtype and library versions."""
    from . import adapter

    cfg = adapter.config(model)
    conf = {k: _json(getattr(cfg, k)) for k in CONFIG_FIELDS if hasattr(cfg, k)}
    config_hash = hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    dtypes = set()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        dtypes.add(str(p.dtype).removeprefix("torch."))
        h.update(f"{name}:{tuple(p.shape)};".encode())  # the dtype is its own field
        if p.device.type != "meta":
            h.update(_sample(p).numpy().tobytes())
    return {
        "name": str(getattr(cfg, "model_name", "")),
        "config": config_hash,
        "weights": h.hexdigest(),
        "dtype": ",".join(sorted(dtypes)),
        **_versions(),
    }


def compare(recorded: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """The first of :data:`FIELDS` on which ``recorded`` and ``actual`` differ, else None."""
    return next((f for f in FIELDS if recorded.get(f) != actual.get(f)), None)


__all__ = ["CONFIG_FIELDS", "FIELDS", "SAMPLE", "compare", "fingerprint"]
