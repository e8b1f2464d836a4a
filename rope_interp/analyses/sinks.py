"""Semantic / sink channels (Barbero et al., "Round and Round We Go!", their Tables 3–5).

A head that parks attention on the first (BOS) token can do it with a
low-frequency band: the band's score term is large for the BOS key and small or
negative for the others (Barbero et al. report about +24.9 for BOS and −85.5 for
other keys in one Gemma head). For every layer, head and band this module
measures, over query positions ``m >= start_pos``:

* ``bos_term``: mean ``<q_i(m), k_i(0)> / scale``;
* ``other_term``: mean over keys ``1..m`` of ``<q_i(m), k_i(n)> / scale`` (a prefix
  mean of the key, since the term is linear in it: O(pos));
* the Cauchy–Schwarz bounds ``‖q_i‖‖k_i‖ / scale`` for the same pairs; the ratio
  observed / bound says how close the band comes to using its full norm
  (1 = perfectly aligned, −1 = perfectly opposed);
* ``bos_attention``: the head's mean attention on BOS.

A *sink channel* of a head is a low-frequency band (index >= n_bands/2) with the
largest separation ``bos_term − other_term``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import adapter
from ..bands import band_norms
from ..hooking import per_device
from ..hooks import attn_hook
from ..spec import RotaryBands
from .inputs import figure, heatmap, layer_list, prefix_mean, qk_pair_hooks, windows


@dataclass
class SinkChannels:
    """Per layer × head × band: BOS vs other-key score terms and their Cauchy–Schwarz bounds."""

    bos_term: Float[Tensor, "layer head band"]
    other_term: Float[Tensor, "layer head band"]
    bos_bound: Float[Tensor, "layer head band"]
    other_bound: Float[Tensor, "layer head band"]
    separation_pass: Float[Tensor, "layer head"]
    bos_attention: Float[Tensor, "layer head"]
    layers: list[int]
    n_tokens: int

    @property
    def separation(self) -> Float[Tensor, "layer head band"]:
        """``bos_term − other_term`` per band."""
        return self.bos_term - self.other_term

    def channels(self, top: int = 1, low_only: bool = True):
        """DataFrame: each head's ``top`` sink-channel bands (largest separation), observed vs bound."""
        import pandas as pd

        sep = self.separation
        B = sep.shape[-1]
        first = B // 2 if low_only else 0
        total = sep.sum(-1) + self.separation_pass
        rows = []
        for i, layer in enumerate(self.layers):
            for h in range(sep.shape[1]):
                order = torch.argsort(sep[i, h, first:], descending=True)[:top] + first
                for b in order.tolist():
                    rows.append(
                        {
                            "layer": layer,
                            "head": h,
                            "band": b,
                            "bos_attention": float(self.bos_attention[i, h]),
                            "bos_term": float(self.bos_term[i, h, b]),
                            "other_term": float(self.other_term[i, h, b]),
                            "bos_bound": float(self.bos_bound[i, h, b]),
                            "other_bound": float(self.other_bound[i, h, b]),
                            "bos_ratio": float(
                                self.bos_term[i, h, b] / self.bos_bound[i, h, b].clamp_min(1e-30)
                            ),
                            "other_ratio": float(
                                self.other_term[i, h, b] / self.other_bound[i, h, b].clamp_min(1e-30)
                            ),
                            "share_of_separation": float(sep[i, h, b] / total[i, h])
                            if total[i, h] != 0
                            else float("nan"),
                        }
                    )
        return pd.DataFrame(rows)

    def to_dataframe(self):
        """Long table: layer, head, band, bos/other terms and bounds."""
        import pandas as pd

        L, H, B = self.bos_term.shape
        idx = torch.cartesian_prod(torch.arange(L), torch.arange(H), torch.arange(B))
        return pd.DataFrame(
            {
                "layer": [self.layers[i] for i in idx[:, 0].tolist()],
                "head": idx[:, 1].tolist(),
                "band": idx[:, 2].tolist(),
                "bos_term": self.bos_term.flatten().tolist(),
                "other_term": self.other_term.flatten().tolist(),
                "bos_bound": self.bos_bound.flatten().tolist(),
                "other_bound": self.other_bound.flatten().tolist(),
            }
        )

    def plot(self, layer: int | None = None, head: int | None = None):
        """BOS attention per layer × head, and per-band BOS / other terms with bounds for one head
        (default: the head with the most BOS attention)."""
        fig, (ax0, ax1) = figure(2, width=6.0, height=4.5)
        heatmap(ax0, self.bos_attention, "mean attention on BOS", "head", "layer position", vmin=0, vmax=1)
        ax0.set_yticks(range(len(self.layers)), [str(x) for x in self.layers])
        if layer is None or head is None:
            flat = int(self.bos_attention.argmax())
            i, head = divmod(flat, self.bos_attention.shape[1])
            layer = self.layers[i]
        i = self.layers.index(layer)
        x = torch.arange(self.bos_term.shape[-1]).numpy()
        ax1.bar(x - 0.2, self.bos_term[i, head].numpy(), width=0.4, label="BOS key term")
        ax1.bar(x + 0.2, self.other_term[i, head].numpy(), width=0.4, label="other keys term")
        ax1.plot(x, self.bos_bound[i, head].numpy(), "k--", lw=1, label="bound ‖q_i‖‖k_i(0)‖/scale")
        ax1.plot(x, -self.other_bound[i, head].numpy(), "r:", lw=1, label="−bound, other keys")
        ax1.set_title(f"layer {layer} head {head}: band score terms")
        ax1.set_xlabel("band (0 = highest frequency)")
        ax1.set_ylabel("mean score term")
        ax1.legend(fontsize=7)
        fig.suptitle(f"Sink channels over {self.n_tokens} tokens")
        fig.tight_layout()
        return fig


def sink_channels(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    start_pos: int = 1,
    window: int | None = None,
    progress: bool = True,
) -> SinkChannels:
    """Per band, how much a head's score separates the first key (BOS/sink) from the others.

    >>> import torch
    >>> from rope_interp.testing import tiny_model
    >>> s = sink_channels(tiny_model(), torch.randint(0, 50, (1, 12)), progress=False)
    >>> tuple(s.bos_term.shape), tuple(s.bos_attention.shape)
    ((2, 4, 8), (2, 4))
    """
    if start_pos < 1:
        raise ValueError("start_pos must be >= 1 (query 0 has no key other than BOS)")
    layers = layer_list(model, layers)
    spec = RotaryBands.from_model(model)
    adapter.check_decomposable(model)
    dev = adapter.device(model)
    L, H, B = len(layers), spec.n_heads, spec.n_bands
    sums = {
        n: torch.zeros(L, H, B, dtype=torch.float64, device=dev) for n in ("bos", "other", "bos_b", "other_b")
    }
    sep_pass = torch.zeros(L, H, dtype=torch.float64, device=dev)
    n_q = 0
    kv_on = per_device(spec.kv_map, dev)

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        i, scale = layers.index(layer), float(spec.attn_scale[layer])
        kv = kv_on(k.device)
        q, qp = q.double()[:, start_pos:], qp.double()[:, start_pos:]
        k, kp = k.double()[:, :, kv], kp.double()[:, :, kv]
        k_mean, kp_mean = prefix_mean(k, start=1)[:, start_pos:], prefix_mean(kp, start=1)[:, start_pos:]
        qn, kn = band_norms(q), band_norms(k)
        sums["bos"][i] += (torch.einsum("bmhic,bhic->hi", q, k[:, 0]) / scale).to(dev)
        sums["other"][i] += (torch.einsum("bmhic,bmhic->hi", q, k_mean) / scale).to(dev)
        sums["bos_b"][i] += (torch.einsum("bmhi,bhi->hi", qn, kn[:, 0]) / scale).to(dev)
        sums["other_b"][i] += (
            torch.einsum("bmhi,bmhi->hi", qn, prefix_mean(kn, start=1)[:, start_pos:]) / scale
        ).to(dev)
        sep_pass[i] += (torch.einsum("bmhd,bhd->h", qp, kp[:, 0]) / scale).to(dev)
        sep_pass[i] -= (torch.einsum("bmhd,bmhd->h", qp, kp_mean) / scale).to(dev)

    hooks = qk_pair_hooks(model, layers, on_pair)
    bos_sum = torch.zeros(L, H, dtype=torch.float64, device=dev)

    def on_pattern(p: Tensor, hook: Any, i: int) -> Tensor:
        bos_sum[i] += p[:, :, start_pos:, 0].double().sum((0, 2)).to(dev)
        return p

    pat_hooks = [
        (attn_hook(layer, "pattern"), lambda p, hook, i=i: on_pattern(p, hook, i))
        for i, layer in enumerate(layers)
    ]
    n_tokens = 0
    for tokens in windows(model, data, window, progress, "sink channels"):
        if tokens.shape[1] <= start_pos:
            continue
        with torch.no_grad(), model.hooks(fwd_hooks=hooks + pat_hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
        n_q += tokens.shape[0] * (tokens.shape[1] - start_pos)
        n_tokens += tokens.numel()
    if n_q == 0:
        raise ValueError(f"every window is shorter than start_pos + 1 = {start_pos + 1} tokens")
    f = lambda t: (t.cpu() / n_q).float()  # noqa: E731
    return SinkChannels(
        bos_term=f(sums["bos"]),
        other_term=f(sums["other"]),
        bos_bound=f(sums["bos_b"]),
        other_bound=f(sums["other_b"]),
        separation_pass=f(sep_pass),
        bos_attention=f(bos_sum),
        layers=layers,
        n_tokens=n_tokens,
    )
