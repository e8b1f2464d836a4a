"""What the model does to raw attention scores before the softmax, written once: the tanh
soft-cap (Gemma-2) and the causal / sliding-window mask.

:class:`~rope_interp.read.decompose.BandScores` and the analytic direct effect
(:mod:`rope_interp.sweep.direct`) both apply them through these functions, so their
patterns follow the same rule as the model's ``hook_pattern``.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def softcap(scores: Float[Tensor, "*any"], cap: float | None) -> Float[Tensor, "*any"]:
    """``cap * tanh(scores / cap)``, or ``scores`` unchanged when ``cap`` is None.

    >>> [round(x, 4) for x in softcap(torch.tensor([0.0, 100.0]), 50.0).tolist()]
    [0.0, 48.2014]
    >>> softcap(torch.tensor([100.0]), None).tolist()
    [100.0]
    """
    if cap is None:
        return scores
    return cap * torch.tanh(scores / cap)


def causal_mask(
    n_q: int,
    n_k: int,
    window: int | None = None,
    q_start: int = 0,
    device: torch.device | str | None = None,
) -> Bool[Tensor, "q_pos k_pos"]:
    """Bool ``[n_q, n_k]``: True where query ``q_start + i`` may see key ``j``
    (``j <= q_start + i``, and ``j > q_start + i - window`` in a local-attention layer).

    >>> causal_mask(2, 3, q_start=1).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    >>> causal_mask(3, 3, window=2).int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    qpos = torch.arange(q_start, q_start + n_q, device=device)[:, None]
    kpos = torch.arange(n_k, device=device)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    return mask


def masked_scores(
    scores: Float[Tensor, "*batch q_pos k_pos"],
    cap: float | None = None,
    window: int | None = None,
    q_start: int | None = None,
) -> Float[Tensor, "*batch q_pos k_pos"]:
    """Scores as the model feeds them to the softmax: soft-capped, then ``-inf`` where the
    query may not see the key. ``q_start``: absolute position of query 0; None means the
    queries are the last ``q_pos`` of the ``k_pos`` keys.

    >>> masked_scores(torch.zeros(2, 2)).tolist()
    [[0.0, -inf], [0.0, 0.0]]
    """
    m, n = scores.shape[-2:]
    keep = causal_mask(m, n, window, n - m if q_start is None else q_start, scores.device)
    return softcap(scores, cap).masked_fill(~keep, float("-inf"))


def masked_pattern(
    scores: Float[Tensor, "*batch q_pos k_pos"],
    cap: float | None = None,
    window: int | None = None,
    q_start: int | None = None,
) -> Float[Tensor, "*batch q_pos k_pos"]:
    """Softmax over keys of :func:`masked_scores`: the attention pattern.

    >>> masked_pattern(torch.zeros(2, 2)).tolist()
    [[1.0, 0.0], [0.5, 0.5]]
    """
    return torch.softmax(masked_scores(scores, cap, window, q_start), dim=-1)
