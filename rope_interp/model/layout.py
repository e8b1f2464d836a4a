"""`RotaryBands`: which bands a model has, where they sit in ``d_head``, and how fast they turn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..bands import band_dims
from ..errors import LayerError
from ..validate import _as_int, indices, positive_int
from . import adapter
from .kind import Model


@dataclass(frozen=True)
class RotaryBands:
    """The rotary band layout of one model.

    Attributes:
        n_layers, n_heads, n_kv_heads, d_head, rotary_dim: from the model config.
        adjacent_pairs: GPT-J layout (True) or NeoX/Llama layout (False).
        freqs: ``Float[n_layers, n_bands]`` radians per token, band 0 = highest frequency.
            Read from each layer's own rotary tables, so linear / NTK-by-parts / YaRN
            scaling and Gemma-3 local bases are included.
        amplitude: ``Float[n_layers, n_bands]`` the scale of the cos/sin tables
            (1, except YaRN's attention factor).
        attn_scale: ``Float[n_layers]`` divisor of ``q·k`` in the scores.
        kv_map: ``Long[n_heads]`` the kv head each query head reads (GQA).

    >>> from rope_interp.model.testing import tiny_model
    >>> rb = RotaryBands.from_model(tiny_model(d_head=8, rotary_base=10000))
    >>> rb.n_bands, rb.dims.tolist()
    (4, [[0, 4], [1, 5], [2, 6], [3, 7]])
    >>> [round(f, 4) for f in rb.freqs[0].tolist()]
    [1.0, 0.1, 0.01, 0.001]
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    rotary_dim: int
    adjacent_pairs: bool
    freqs: Float[Tensor, "n_layers n_bands"]
    amplitude: Float[Tensor, "n_layers n_bands"]
    attn_scale: Float[Tensor, " n_layers"]
    kv_map: Int[Tensor, " n_heads"]
    n_ctx: int
    model_name: str = ""

    @classmethod
    def from_model(cls, model: Model) -> RotaryBands:
        """Read the layout from a rotary TransformerLens model (raises NotRotaryError otherwise)."""
        cfg = adapter.check_rotary(model)
        rd, adjacent = adapter.rotary_dim(model), adapter.adjacent_pairs(model)
        dims = band_dims(rd, adjacent)
        freqs, amps = [], []
        for layer in range(adapter.n_layers(model)):
            sin, cos = adapter.rotary_tables(model, layer, 2)
            s, c = sin[1, dims[:, 0]], cos[1, dims[:, 0]]
            freqs.append(torch.atan2(s, c))
            amps.append(cos[0, dims[:, 0]])
        return cls(
            n_layers=adapter.n_layers(model),
            n_heads=adapter.n_heads(model),
            n_kv_heads=adapter.n_kv_heads(model),
            d_head=int(cfg.d_head),
            rotary_dim=rd,
            adjacent_pairs=adjacent,
            freqs=torch.stack(freqs),
            amplitude=torch.stack(amps),
            attn_scale=torch.tensor(
                [adapter.attn_scale(model, layer) for layer in range(adapter.n_layers(model))],
                dtype=torch.float64,
            ),
            kv_map=adapter.kv_map(model),
            n_ctx=int(cfg.n_ctx),
            model_name=str(getattr(cfg, "model_name", "")),
        )

    # ---- derived layout -------------------------------------------------------------
    @property
    def n_bands(self) -> int:
        return self.rotary_dim // 2

    def bands(self, bands: int | Sequence[int] | None = None) -> list[int]:
        """Normalise a band selection (None = all bands) and check it is in range.

        >>> from rope_interp.model.testing import tiny_model
        >>> rb = RotaryBands.from_model(tiny_model())
        >>> rb.bands(None) == list(range(rb.n_bands)), rb.bands([-1, 0])
        (True, [7, 0])
        """
        if bands is None:
            return list(range(self.n_bands))
        return indices("band", bands, self.n_bands)

    @property
    def dims(self) -> Int[Tensor, "n_bands 2"]:
        """The two indices into ``d_head`` of each band's plane."""
        return band_dims(self.rotary_dim, self.adjacent_pairs)

    @property
    def pass_dims(self) -> Int[Tensor, " n_pass"]:
        """Indices of the dims that are not rotated (empty unless partial rotary)."""
        return torch.arange(self.rotary_dim, self.d_head)

    @property
    def wavelengths(self) -> Float[Tensor, "n_layers n_bands"]:
        """Tokens per full turn, ``2*pi / theta`` (inf for a band that does not turn)."""
        return 2 * math.pi / self.freqs

    def cycles(self, context_length: int) -> Float[Tensor, "n_layers n_bands"]:
        """Full turns a band makes across the largest offset of a context: ``theta*(L-1)/(2*pi)``."""
        positive_int("context_length", context_length)
        return self.freqs * (context_length - 1) / (2 * math.pi)

    def band_of_dim(self, dim: int) -> int | None:
        """The band that ``d_head`` index ``dim`` belongs to, or None for a pass-through dim."""
        dim = _as_int("dim", dim)
        if not 0 <= dim < self.d_head:
            raise LayerError(f"dim {dim} is out of range: d_head={self.d_head} (valid: 0..{self.d_head - 1})")
        if dim >= self.rotary_dim:
            return None
        return dim // 2 if self.adjacent_pairs else dim % self.n_bands

    @property
    def uniform_across_layers(self) -> bool:
        """True when every layer turns its bands at the same frequencies."""
        return bool(torch.allclose(self.freqs, self.freqs[:1].expand_as(self.freqs), rtol=1e-9))

    # ---- presentation -----------------------------------------------------------------
    def to_dataframe(self, layer: int = 0, context_length: int | None = None):
        """One row per band of ``layer``: dims, frequency, wavelength, cycles over the context.

        ``context_length`` defaults to the model's ``n_ctx``.
        """
        import pandas as pd

        layer = indices("layer", [layer], self.n_layers)[0]
        L = positive_int("context_length", context_length, allow_none=True) or self.n_ctx
        dims = self.dims
        return pd.DataFrame(
            {
                "band": range(self.n_bands),
                "dim_a": dims[:, 0].tolist(),
                "dim_b": dims[:, 1].tolist(),
                "theta_rad_per_token": self.freqs[layer].tolist(),
                "wavelength_tokens": self.wavelengths[layer].tolist(),
                f"cycles_over_{L}": self.cycles(L)[layer].tolist(),
                "amplitude": self.amplitude[layer].tolist(),
            }
        ).set_index("band")

    def describe(self) -> str:
        """A short human-readable summary of the layout."""
        layout = (
            "GPT-J adjacent pairs (2i, 2i+1)" if self.adjacent_pairs else "NeoX halves (i, i+rotary_dim/2)"
        )
        lines = [
            f"model {self.model_name or '?'}: {self.n_layers} layers, {self.n_heads} heads "
            f"({self.n_kv_heads} kv heads), d_head {self.d_head}",
            f"{self.n_bands} bands over rotary_dim {self.rotary_dim} ({layout}); "
            f"{self.d_head - self.rotary_dim} pass-through dims",
        ]
        if self.uniform_across_layers:
            lines.append("all layers share the same frequencies")
        else:
            distinct = {tuple(torch.round(f, decimals=12).tolist()) for f in self.freqs}
            lines.append(f"{len(distinct)} distinct frequency sets across layers")
        return "\n".join(lines)
