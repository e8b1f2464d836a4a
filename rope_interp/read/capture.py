"""Capture queries and keys band by band: hook callbacks, a recorder, streaming statistics.

Canonical view: ``[batch, pos, head, band, 2]`` (see :mod:`rope_interp.bands`).
Sites: ``q``/``k`` before rotation, ``rot_q``/``rot_k`` after, ``v`` (values, the
control RoPE never touches, paired with the same dims as q/k).

Grouped-query attention: key/value sites have ``n_kv_heads`` heads; query head
``h`` reads kv head ``RotaryBands.kv_map[h] == h // (n_heads // n_kv_heads)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bands import band_norms, band_view, pass_view
from ..errors import MergeError, ParameterError, RopeInterpError, SiteError
from ..model import adapter
from ..model.hooks import QK_SITES, FwdHooks, HookSet, attn_hook, is_key_site
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..validate import indices, positive_int

CAPTURE_SITES = (*QK_SITES, "v")


@dataclass
class BandActivation:
    """What a band callback receives at one hook point.

    ``bands`` and ``passthrough`` are views of the live activation: read them,
    or write into them to intervene (the hook returns the activation it was given).
    """

    layer: int
    site: str
    bands: Float[Tensor, "batch pos head n_bands 2"]
    passthrough: Float[Tensor, "batch pos head n_pass"]
    activation: Float[Tensor, "batch pos head d_head"]


def _check_sites(sites: Iterable[str]) -> tuple[str, ...]:
    if not isinstance(sites, (str, Iterable)):
        raise SiteError(
            f"sites must be a site name or a list of them, got {sites!r}; expected some of {CAPTURE_SITES}"
        )
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    for s in sites:
        if s not in CAPTURE_SITES:
            raise SiteError(f"unknown site {s!r}; expected some of {CAPTURE_SITES}")
    if not sites:
        raise SiteError(f"no sites given; pass some of {CAPTURE_SITES}")
    if len(set(sites)) != len(sites):
        raise SiteError(f"sites must not repeat: {list(sites)}")
    return sites


def band_hooks(
    model: Model,
    callback: Callable[[BandActivation], None],
    layers: int | Sequence[int] | None = None,
    sites: str | Sequence[str] = ("rot_q", "rot_k"),
) -> FwdHooks:
    """A ``fwd_hooks`` list that calls ``callback(BandActivation)`` at each chosen hook.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> seen = []
    >>> hooks = band_hooks(model, lambda a: seen.append((a.layer, a.site, tuple(a.bands.shape))), layers=0)
    >>> _ = model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=hooks)
    >>> seen
    [(0, 'rot_q', (1, 3, 4, 8, 2)), (0, 'rot_k', (1, 3, 2, 8, 2))]
    """
    rd, adjacent = adapter.rotary_dim(model), adapter.adjacent_pairs(model)  # also checks it is rotary
    if not callable(callback):
        raise ParameterError(
            f"callback must be a function of one BandActivation, got {type(callback).__name__}"
        )
    hooks: FwdHooks = []
    for layer in adapter.layers(model, layers):
        for site in _check_sites(sites):

            def hook(act: Tensor, hook: Any, layer: int = layer, site: str = site) -> Tensor:
                callback(BandActivation(layer, site, band_view(act, rd, adjacent), pass_view(act, rd), act))
                return act

            hooks.append((attn_hook(layer, site), hook))  # type: ignore[arg-type]
    return hooks


class BandCapture(HookSet):
    """Record q/k (pre- and/or post-rotation) per band for chosen layers, heads and bands.

    Only what was asked for is kept (a clone of the selected slice; the last
    forward pass wins). Read results with ``capture[layer, site]`` →
    ``[batch, pos, head, band, 2]`` (heads/bands in the order selected) and
    ``capture.passthrough(layer, site)``.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> with BandCapture(model, layers=[1], sites=["k", "rot_k"], bands=[0, 1]) as cap:
    ...     _ = model(torch.tensor([[5, 6, 7, 8]]))
    >>> cap[1, "rot_k"].shape
    torch.Size([1, 4, 2, 2, 2])
    >>> len(model.hook_dict["blocks.1.attn.hook_rot_k"].fwd_hooks)
    0
    """

    def __init__(
        self,
        model: Model,
        layers: int | Sequence[int] | None = None,
        sites: str | Sequence[str] = ("rot_q", "rot_k"),
        heads: Sequence[int] | None = None,
        bands: Sequence[int] | None = None,
        keep_passthrough: bool = False,
        store_device: str | torch.device | None = None,
    ):
        super().__init__(model)
        self.spec = RotaryBands.from_model(model)
        self.layers = adapter.layers(model, layers)
        self.sites = _check_sites(sites)
        self.heads = None if heads is None else indices("head", heads, self.spec.n_heads)
        self.bands_sel = None if bands is None else indices("band", bands, self.spec.n_bands)
        self.keep_passthrough = keep_passthrough
        self.store_device = None if store_device is None else torch.device(store_device)
        self._bands: dict[tuple[int, str], Tensor] = {}
        self._pass: dict[tuple[int, str], Tensor] = {}

    def _head_index(self, site: str) -> list[int] | None:
        if self.heads is None:
            return None
        if is_key_site(site) and self.spec.n_kv_heads != self.spec.n_heads:
            # keep the kv heads that the selected query heads read, in order, once each
            return list(dict.fromkeys(int(self.spec.kv_map[h]) for h in self.heads))
        return self.heads

    def _record(self, a: BandActivation) -> None:
        x = a.bands.detach()
        heads = self._head_index(a.site)
        if heads is not None:
            x = x[:, :, heads]
        if self.bands_sel is not None:
            x = x[:, :, :, self.bands_sel]
        self._bands[a.layer, a.site] = x.to(self.store_device or x.device, copy=True)
        if self.keep_passthrough:
            p = a.passthrough.detach()
            if heads is not None:
                p = p[:, :, heads]
            self._pass[a.layer, a.site] = p.to(self.store_device or p.device, copy=True)

    def fwd_hooks(self) -> FwdHooks:
        return band_hooks(self.model, self._record, self.layers, self.sites)

    def __getitem__(self, key: tuple[int, str]) -> Float[Tensor, "batch pos head band 2"]:
        layer, site = key
        if (layer, site) not in self._bands:
            raise SiteError(
                f"nothing captured for layer {layer}, site {site!r}: captured {sorted(self._bands)} "
                "(was a forward pass run inside the context?)"
            )
        return self._bands[layer, site]

    def passthrough(self, layer: int, site: str) -> Float[Tensor, "batch pos head n_pass"]:
        if not self.keep_passthrough:
            raise RopeInterpError(
                "construct BandCapture(..., keep_passthrough=True) to keep pass-through dims"
            )
        return self._pass[layer, site]

    def norms(self, layer: int, site: str) -> Float[Tensor, "batch pos head band"]:
        return band_norms(self[layer, site])

    def clear(self) -> None:
        self._bands.clear()
        self._pass.clear()


@dataclass
class SiteMoments:
    """Running sums for one site: tensors ``[layer, head, band, ...]`` in float64."""

    sum_norm: Tensor  # [L, H, B]
    sum_sq_norm: Tensor  # [L, H, B]
    sum_vec: Tensor  # [L, H, B, 2]
    sum_outer: Tensor  # [L, H, B, 2, 2]

    @classmethod
    def zeros(cls, n_layers: int, n_heads: int, n_bands: int, device: torch.device) -> SiteMoments:
        def z(*extra: int) -> Tensor:
            return torch.zeros(n_layers, n_heads, n_bands, *extra, dtype=torch.float64, device=device)

        return cls(z(), z(), z(2), z(2, 2))

    def add_(self, other: SiteMoments) -> None:
        for name in ("sum_norm", "sum_sq_norm", "sum_vec", "sum_outer"):
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))


def window_sums(
    x: Float[Tensor, "batch pos head band 2"], w: Float[Tensor, "batch pos"] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums over ``batch, pos`` of ``‖x‖``, ``‖x‖²``, ``x`` and ``x xᵀ`` per head and band (optionally weighted).

    Computed in ``x``'s dtype (float32 for float16/bfloat16 input) on its device: the cheap
    per-window part of :class:`BandStats`, which promotes the results to float64 across windows.

    >>> x = torch.tensor([[[[[3.0, 4.0]]], [[[0.0, 1.0]]]]])      # batch 1, 2 positions, 1 head, 1 band
    >>> n, sq, vec, outer = window_sums(x)
    >>> n.tolist(), sq.tolist(), vec.tolist(), outer.tolist()
    ([[6.0]], [[26.0]], [[[3.0, 5.0]]], [[[[9.0, 12.0], [12.0, 17.0]]]])
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x0, x1 = x[..., 0], x[..., 1]
    sq0, sq1, cross = x0 * x0, x1 * x1, x0 * x1
    norm = (sq0 + sq1).sqrt()
    feats = (norm, sq0, sq1, cross, x0, x1)
    if w is None:
        s = [f.sum((0, 1)) for f in feats]
    else:
        w = w.to(x.dtype)
        s = [torch.einsum("bp,bphn->hn", w, f) for f in feats]
    sn, s00, s11, s01, s0, s1 = s
    outer = torch.stack((torch.stack((s00, s01), -1), torch.stack((s01, s11), -1)), -2)
    return sn, s00 + s11, torch.stack((s0, s1), -1), outer


class BandStats(HookSet):
    """Streaming per-layer/head/band statistics of q/k/v bands.

    Memory is ``O(layers * heads * bands)``, independent of the number of tokens.
    Each window (one forward pass) is summed in float32 on the model's device (float64 for a
    float64 model), then added to float64 running sums (no host sync in the hooks): the means
    match a float64 reference to a relative ~1e-6 for windows of a few thousand tokens (tested);
    the covariance, a difference of moments, has an absolute error of about ``1e-6 * E[‖x‖²]``.
    Positions ``< start_pos`` are skipped (e.g. ``start_pos=1`` leaves out BOS).

    Padding: ``update(["a", "longer text"])`` pads the batch as ``model.to_tokens`` does and
    leaves the padding out of every statistic (the mask comes from each string's own length);
    for token ids, pass ``mask`` (bool ``[batch, pos]``, True on real tokens).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> stats = BandStats(model, sites=["rot_q", "rot_k"])
    >>> _ = stats.update(torch.randint(0, 50, (2, 16)))
    >>> stats.mean_norm("rot_k").shape    # [layer, kv_head, band]
    torch.Size([2, 2, 8])
    >>> stats.n_tokens
    32
    >>> _ = stats.update(torch.randint(0, 50, (2, 16)), mask=torch.arange(16).expand(2, 16) < 10)
    >>> stats.n_tokens
    52
    """

    def __init__(
        self,
        model: Model,
        layers: int | Sequence[int] | None = None,
        sites: str | Sequence[str] = ("rot_q", "rot_k"),
        start_pos: int = 0,
    ):
        super().__init__(model)
        self.spec = RotaryBands.from_model(model)
        self.layers = adapter.layers(model, layers)
        if not self.layers:
            raise ParameterError("no layers selected: pass layers=None (all) or at least one layer")
        self.sites = _check_sites(sites)
        self.start_pos = positive_int("start_pos", start_pos, minimum=0)
        self.model_dtype = next(model.parameters()).dtype
        dev = adapter.device(model)
        nl, nb = len(self.layers), self.spec.n_bands
        self.moments = {s: SiteMoments.zeros(nl, self._n_heads(s), nb, dev) for s in self.sites}
        self._count = torch.zeros((), dtype=torch.float64, device=dev)
        self._mask: Tensor | None = None
        self._layer_pos = {layer: i for i, layer in enumerate(self.layers)}

    def _n_heads(self, site: str) -> int:
        return self.spec.n_kv_heads if is_key_site(site) else self.spec.n_heads

    # ---- accumulation ---------------------------------------------------------------
    def _accumulate(self, a: BandActivation) -> None:
        x = a.bands.detach()[:, self.start_pos :]
        w = None if self._mask is None else self._mask[:, self.start_pos :].to(x.device)
        sn, ssq, vec, outer = window_sums(x, w)
        m = self.moments[a.site]
        i = self._layer_pos[a.layer]
        dev = m.sum_norm.device  # sums stay where made: a copy per layer only if the model spans devices
        m.sum_norm[i] += sn.to(dev)
        m.sum_sq_norm[i] += ssq.to(dev)
        m.sum_vec[i] += vec.to(dev)
        m.sum_outer[i] += outer.to(dev)
        if a.layer == self.layers[0] and a.site == self.sites[0]:
            self._count += x.shape[0] * x.shape[1] if w is None else w.sum().to(dev)

    def fwd_hooks(self) -> FwdHooks:
        return band_hooks(self.model, self._accumulate, self.layers, self.sites)

    @torch.no_grad()
    def update(self, tokens: Any, mask: Tensor | None = None) -> BandStats:
        """Run the model on ``tokens`` (stopping after the last needed layer) and accumulate.

        ``tokens``: a string, a list of strings (padded; the padding is left out), or token ids.
        ``mask``: bool ``[batch, pos]``, True on the tokens to count (token ids only).
        """
        tokens, text_mask = adapter.tokens_and_mask(self.model, tokens)
        if mask is not None:
            if text_mask is not None:
                raise ParameterError("pass mask= with token ids only: for a list of strings it is computed")
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise ParameterError(
                    f"mask must be a bool tensor [batch, pos], got {getattr(mask, 'dtype', type(mask))}"
                )
            if mask.shape != tokens.shape:
                raise ParameterError(f"mask shape {tuple(mask.shape)} != tokens shape {tuple(tokens.shape)}")
        else:
            mask = text_mask
        self._mask = None if mask is None else mask.to(tokens.device)  # once here, not in every hook
        try:
            with self:
                # text_mask only: a caller's own mask= selects what is counted, the model sees every token
                self.model(
                    tokens,
                    stop_at_layer=max(self.layers) + 1,
                    **adapter.padding_kwargs(self.model, text_mask),
                )
        finally:
            self._mask = None
        return self

    def update_many(
        self, batches: Iterable[Any], progress: bool = True, total: int | None = None
    ) -> BandStats:
        """:meth:`update` over an iterable of token batches, with a tqdm progress bar."""
        for tokens in progress_bar(batches, desc="band stats", enabled=progress, total=total, leave=True):
            self.update(tokens)
        return self

    def layout(self) -> dict[str, Any]:
        """What must agree for two statistics to be merged."""
        sp = self.spec
        return {
            "layers": list(self.layers),
            "sites": tuple(self.sites),
            "start_pos": self.start_pos,
            "n_heads": sp.n_heads,
            "n_kv_heads": sp.n_kv_heads,
            "n_bands": sp.n_bands,
            "d_head": sp.d_head,
            "rotary_dim": sp.rotary_dim,
            "adjacent_pairs": sp.adjacent_pairs,
            "model_name": sp.model_name,
            "model_dtype": self.model_dtype,
            "heads per site": {s: tuple(m.sum_norm.shape) for s, m in self.moments.items()},
        }

    def merge(self, other: BandStats) -> BandStats:
        """Add ``other``'s sums into this one; returns self.

        The full layout must agree (:meth:`layout`: layers, sites, ``start_pos``, heads, kv heads,
        bands, rotary layout, model name and dtype) and the band frequencies must match,
        otherwise :class:`~rope_interp.errors.MergeError` names what differs.
        """
        if not isinstance(other, BandStats):
            raise MergeError(f"can only merge another BandStats, got {type(other).__name__}")
        mine, theirs = self.layout(), other.layout()
        diff = [f"{k}: {theirs[k]!r} vs {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
        if not diff and not torch.allclose(self.spec.freqs, other.spec.freqs, rtol=1e-9, atol=0):
            diff.append("band frequencies differ (statistics of different models)")
        if diff:
            raise MergeError(
                "cannot merge BandStats with a different layout (other vs this): "
                + "; ".join(diff)
                + ". Build both with the same model, layers, sites and start_pos."
            )
        for s in self.sites:
            self.moments[s].add_(other.moments[s])
        self._count += other._count.to(self._count.device)
        return self

    # ---- results --------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self._count.item())

    def _site(self, site: str) -> SiteMoments:
        if site not in self.moments:
            raise SiteError(f"site {site!r} was not tracked; tracked: {self.sites}")
        if self._count.item() == 0:
            raise RopeInterpError(
                "no tokens accumulated yet: call update() first (with at least one unmasked token)"
            )
        return self.moments[site]

    def mean_norm(self, site: str) -> Float[Tensor, "layer head band"]:
        """Mean over tokens of ``‖x_i‖`` per layer, head, band."""
        return self._site(site).sum_norm / self._count

    def rms_norm(self, site: str) -> Float[Tensor, "layer head band"]:
        return (self._site(site).sum_sq_norm / self._count).sqrt()

    def mean_vector(self, site: str) -> Float[Tensor, "layer head band 2"]:
        return self._site(site).sum_vec / self._count

    def second_moment(self, site: str) -> Float[Tensor, "layer head band 2 2"]:
        """``E[x xᵀ]`` per band (uncentred)."""
        return self._site(site).sum_outer / self._count

    def covariance(self, site: str) -> Float[Tensor, "layer head band 2 2"]:
        mu = self.mean_vector(site)
        return self.second_moment(site) - mu[..., :, None] * mu[..., None, :]

    def consistency(self, site: str) -> Float[Tensor, "layer head band"]:
        """``‖E[x]‖ / E[‖x‖]`` in [0, 1]: 1 when every token points the same way."""
        return band_norms(self.mean_vector(site)) / self.mean_norm(site).clamp_min(1e-30)

    def to_dataframe(self, site: str):
        """Long table: layer, head, band, mean_norm, rms_norm, consistency."""
        import pandas as pd

        mn, rms, cons = self.mean_norm(site), self.rms_norm(site), self.consistency(site)
        L, H, B = mn.shape
        idx = torch.cartesian_prod(torch.tensor(self.layers), torch.arange(H), torch.arange(B))
        return pd.DataFrame(
            {
                "layer": idx[:, 0].tolist(),
                "head": idx[:, 1].tolist(),
                "band": idx[:, 2].tolist(),
                "mean_norm": mn.flatten().tolist(),
                "rms_norm": rms.flatten().tolist(),
                "consistency": cons.flatten().tolist(),
            }
        )
