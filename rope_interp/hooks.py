"""The one place that builds TransformerLens hook names.

Every other module asks :func:`attn_hook` for a name instead of writing
``"blocks.{layer}.attn.hook_..."`` itself, so a change of naming (a new model
class, a new TransformerLens major) is a one-file change.

>>> attn_hook(3, "rot_q")
'blocks.3.attn.hook_rot_q'
>>> parse_attn_hook("blocks.12.attn.hook_k")
(12, 'k')
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Site = Literal["q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"]
"""Attention hook sites that rope_interp reads or writes."""

QKSite = Literal["q", "k", "rot_q", "rot_k"]
"""The four sites that carry queries/keys: before (``q``, ``k``) and after rotation."""

SITES: tuple[str, ...] = get_args(Site)
QK_SITES: tuple[str, ...] = get_args(QKSite)

_PATTERN = re.compile(r"^blocks\.(\d+)\.attn\.hook_([a-z_]+)$")


def attn_hook(layer: int, site: Site) -> str:
    """Name of the attention hook point ``site`` in block ``layer``."""
    if site not in SITES:
        raise ValueError(f"unknown attention hook site {site!r}; expected one of {SITES}")
    return f"blocks.{int(layer)}.attn.hook_{site}"


TableSite = Literal["cos", "sin"]


def rotary_table_hook(layer: int, table: TableSite) -> str:
    """Name of a bridge attention's ``hook_cos``/``hook_sin``: the rotary tables at the true positions.

    Only a ``TransformerBridge`` has them; they fire just before ``hook_rot_q``/``hook_rot_k``.

    >>> rotary_table_hook(0, "cos")
    'blocks.0.attn.hook_cos'
    """
    if table not in ("cos", "sin"):
        raise ValueError(f"unknown rotary table {table!r}; expected 'cos' or 'sin'")
    return f"blocks.{int(layer)}.attn.hook_{table}"


MLPSite = Literal["pre", "post"]


def mlp_hook(layer: int, site: MLPSite) -> str:
    """Name of the MLP hook ``hook_pre`` (before the activation function) or ``hook_post`` in block ``layer``.

    >>> mlp_hook(2, "post")
    'blocks.2.mlp.hook_post'
    """
    if site not in ("pre", "post"):
        raise ValueError(f"unknown MLP hook site {site!r}; expected 'pre' or 'post'")
    return f"blocks.{int(layer)}.mlp.hook_{site}"


def ln2_normalized_hook(layer: int) -> str:
    """Name of the MLP's normalised input (``ln2.hook_normalized``) in block ``layer``.

    Only a HookedTransformer has it (a ``TransformerBridge`` names its norms differently).

    >>> ln2_normalized_hook(4)
    'blocks.4.ln2.hook_normalized'
    """
    return f"blocks.{int(layer)}.ln2.hook_normalized"


def resid_mid_hook(layer: int) -> str:
    """Name of the residual stream between attention and MLP (``hook_resid_mid``) in block ``layer``.

    >>> resid_mid_hook(4)
    'blocks.4.hook_resid_mid'
    """
    return f"blocks.{int(layer)}.hook_resid_mid"


def parse_attn_hook(name: str) -> tuple[int, str]:
    """Inverse of :func:`attn_hook`: ``(layer, site)`` of a hook name."""
    match = _PATTERN.match(name)
    if match is None or match.group(2) not in SITES:
        raise ValueError(f"{name!r} is not a rope_interp attention hook name")
    return int(match.group(1)), match.group(2)


def is_key_site(site: str) -> bool:
    """True for sites whose head axis has ``n_key_value_heads`` entries under GQA."""
    return site in ("k", "rot_k", "v")
