"""Frequency entropy of band query norms.

:func:`frequency_entropy` — per layer × head × band, the Shannon entropy of the
power spectrum over positions of the band's query norm ``‖q_i(m)‖`` (after the
paper "Probing Rotary Position Embeddings through Frequency Entropy", ICLR 2026
submission; their exact preprocessing was not available to us, so the normalisation
here is **ours**: mean removed, no window, periodogram ``|rfft|²`` summed over
sequences, DC bin dropped, normalised to a distribution over the ``pos//2`` remaining
bins, entropy divided by ``log(pos//2)``: 0 = one pure tone, white noise: ~0.9 for one sequence, near 1 summed over many).
Then the ``k`` lowest- and ``k`` highest-entropy (layer, head, band) entries zeroed in
q against a matched control (per entry a random other head of the same layer and band).

What these numbers can and cannot show is said in :func:`report_section`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..bands import band_norms
from ..errors import ContextLengthError, ParameterError
from ..model import adapter
from ..model.hooks import FwdHooks, HookSet, attn_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..validate import positive_int
from .inputs import figure, heatmap, layer_head_band_frame, layer_list, text_tokens, windows
from .registry import Analysis, Option, RunContext, as_blocks, auto_size

# ---- 3. frequency entropy ----------------------------------------------------------------------------------


def power_spectrum(x: Float[Tensor, "... pos"]) -> Float[Tensor, "... freq"]:
    """Periodogram ``|rfft(x − mean)|²`` without the DC bin: ``pos // 2`` bins (no window).

    >>> power_spectrum(torch.tensor([1.0, 2.0, 1.0, 2.0])).tolist()  # all power at Nyquist
    [0.0, 4.0]
    """
    x = x.double()
    p = torch.fft.rfft(x - x.mean(-1, keepdim=True), dim=-1).abs().square()
    return p[..., 1:]


def spectral_entropy(psd: Float[Tensor, "... freq"]) -> Float[Tensor, "..."]:
    """Shannon entropy of ``psd`` normalised to a distribution, divided by ``log(n_freq)`` (0..1).

    NaN where the spectrum is all zero (a constant signal has no spectrum to spread).

    >>> t = torch.arange(64.0)
    >>> tone = torch.cos(2 * math.pi * 5 * t / 64)
    >>> round(float(spectral_entropy(power_spectrum(tone))), 6)
    0.0
    """
    psd = psd.double()
    tot = psd.sum(-1, keepdim=True)
    p = psd / torch.where(tot > 0, tot, torch.ones_like(tot))
    h = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)
    h = h / math.log(psd.shape[-1]) if psd.shape[-1] > 1 else torch.zeros_like(h)
    return torch.where(tot[..., 0] > 0, h, torch.full_like(h, float("nan")))


class ZeroQueryBands(HookSet):
    """Zero chosen (head, band) entries of the post-RoPE query, per layer.

    ``masks[layer]`` is bool ``[n_heads, n_bands]``. Zeroing band ``i`` of a head's
    query removes exactly band ``i``'s term from that head's scores (no other head).

    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> m = torch.zeros(4, 8, dtype=torch.bool); m[2, 0] = True
    >>> with ZeroQueryBands(model, {1: m}):
    ...     _, c = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter="blocks.1.attn.hook_rot_q")
    >>> q = c["blocks.1.attn.hook_rot_q"][0, :, 2]
    >>> float(q[:, [0, 8]].abs().max()), bool(q[:, 1].abs().max() > 0)
    (0.0, True)
    """

    def __init__(self, model: Model, masks: dict[int, Bool[Tensor, "head band"]]):
        super().__init__(model)
        spec = RotaryBands.from_model(model)
        self.dim_masks = {}
        for layer, m in masks.items():
            layer = adapter.layers(model, layer)[0]
            if tuple(m.shape) != (spec.n_heads, spec.n_bands) or m.dtype != torch.bool:
                raise ParameterError(
                    f"mask of layer {layer} must be bool [{spec.n_heads}, {spec.n_bands}] (heads, bands), "
                    f"got {m.dtype} {tuple(m.shape)}"
                )
            dm = torch.zeros(spec.n_heads, spec.d_head, dtype=torch.bool)
            for b in range(spec.n_bands):
                dm[:, spec.dims[b]] = m[:, b, None]
            self.dim_masks[layer] = dm.to(adapter.device(model))

    def fwd_hooks(self) -> FwdHooks:
        return [
            (attn_hook(layer, "rot_q"), lambda q, hook, dm=dm: q.masked_fill(dm, 0.0))
            for layer, dm in self.dim_masks.items()
        ]


@dataclass
class FrequencyEntropy:
    """Per (layer, head, band) spectral entropy of the query-norm signal, and extreme-entropy ablations.

    Attributes:
        entropy: ``[layer, head, band]`` normalised entropy (0 = one tone, near 1 = white noise summed over sequences).
        psd: ``[layer, head, band, freq]`` the summed periodograms the entropy is computed from.
        ablation: one dict per condition (condition, loss, n_entries); empty when skipped.
        extremes: ``{"lowest": [(layer, head, band)...], "highest": [...]}`` the ablated entries.
    """

    entropy: Float[Tensor, "layer head band"]
    psd: Float[Tensor, "layer head band freq"] = field(repr=False)
    layers: list[int]
    seq_len: int
    n_tokens: int
    start_pos: int = 1
    n_skipped_windows: int = 0
    ablation: list[dict] = field(default_factory=list)
    extremes: dict = field(default_factory=dict)

    def peak(self) -> tuple[Float[Tensor, "layer head band"], Float[Tensor, "layer head band"]]:
        """Period in tokens of each spectrum's strongest bin, and that bin's share of the power.

        A peak period near the window length is a slow drift, not a tone.
        """
        n_pos = self.seq_len - self.start_pos
        tot = self.psd.sum(-1)
        share, j = (self.psd / torch.where(tot > 0, tot, torch.ones_like(tot))[..., None]).max(-1)
        return n_pos / (j + 1).float(), share

    def to_dataframe(self):
        """One row per (layer, head, band): entropy, period of the spectral peak and its power share."""
        period, share = self.peak()
        cols = {"entropy": self.entropy, "peak_period_tokens": period, "peak_power_share": share}
        return layer_head_band_frame(self.layers, cols)

    def ablation_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.ablation, columns=["condition", "loss", "n_entries"])

    def summary(self) -> dict:
        e = self.entropy
        by_band = e.nanmean((0, 1))
        return dict(
            seq_len=self.seq_len,
            n_tokens=self.n_tokens,
            n_skipped_windows=self.n_skipped_windows,
            mean_entropy=round(float(e.nanmean()), 4),
            min_entropy=round(float(e[~e.isnan()].min()), 4) if (~e.isnan()).any() else None,
            lowest_entropy_band=int(by_band.nan_to_num(9).argmin()),
            highest_entropy_band=int(by_band.nan_to_num(-9).argmax()),
            ablation={r["condition"]: round(r["loss"], 4) for r in self.ablation},
            lowest=self._lowest(5),
        )

    def _lowest(self, k: int) -> list[dict]:
        """The ``k`` lowest-entropy entries with the period of their spectral peak (window length = drift)."""
        if int((~self.entropy.isnan()).sum()) < k:
            return []
        period, share = self.peak()
        return [
            dict(
                layer=self.layers[i],
                head=h,
                band=b,
                entropy=round(float(self.entropy[i, h, b]), 4),
                peak_period_tokens=round(float(period[i, h, b]), 2),
                peak_power_share=round(float(share[i, h, b]), 4),
            )
            for i, h, b in extreme_entries(self.entropy, k, lowest=True)
        ]

    def plot(self):
        """Entropy per layer × band (mean over heads), per band, and the ablation losses."""
        n_ax = 3 if self.ablation else 2
        fig, axes = figure(n_ax, width=5.5, height=4.5)
        heatmap(
            axes[0],
            self.entropy.nanmean(1),
            "q-norm entropy, mean over heads",
            "band (0 = highest frequency)",
            "layer",
        )
        axes[0].set_yticks(range(len(self.layers)), [str(x) for x in self.layers])
        flat = self.entropy.permute(2, 0, 1).flatten(1)
        axes[1].plot(flat.nanmean(1).numpy(), label="mean over layers × heads")
        axes[1].plot(flat.nan_to_num(9.0).min(1).values.numpy(), ls=":", label="min")
        axes[1].plot(flat.nan_to_num(-9.0).max(1).values.numpy(), ls=":", label="max")
        axes[1].set_title("frequency entropy per band")
        axes[1].set_xlabel("band (0 = highest frequency)")
        axes[1].set_ylabel("normalised entropy (0 = pure tone)")
        axes[1].legend(fontsize=7)
        if self.ablation:
            df = self.ablation_dataframe()
            axes[2].barh(range(len(df)), df["loss"], color=[_cond_color(c) for c in df["condition"]])
            axes[2].set_yticks(range(len(df)), list(df["condition"]))
            axes[2].tick_params(axis="y", labelsize=7)
            axes[2].invert_yaxis()
            axes[2].set_xlim(df["loss"].min() * 0.98, df["loss"].max() * 1.01)
            axes[2].set_title("extremes zeroed in q vs control")
            axes[2].set_xlabel("mean next-token loss (nats)")
            axes[2].set_ylabel("condition")
        fig.suptitle(
            f"Frequency entropy of band query norms over {self.n_tokens} tokens (windows of {self.seq_len})"
        )
        fig.tight_layout()
        return fig


def _cond_color(condition: str) -> str:
    return (
        "grey" if condition == "unablated" else "tab:blue" if condition.startswith("control") else "tab:red"
    )


def extreme_entries(entropy: Tensor, k: int, lowest: bool) -> list[tuple[int, int, int]]:
    """Index triples ``(layer_pos, head, band)`` of the ``k`` lowest (or highest) finite entropies.

    >>> extreme_entries(torch.tensor([[[0.5, 0.1], [0.9, float("nan")]]]), 2, lowest=True)
    [(0, 0, 1), (0, 0, 0)]
    """
    flat = entropy.flatten().double()
    ok = ~flat.isnan()
    if int(ok.sum()) < k:
        raise ParameterError(f"k={k} entries requested but only {int(ok.sum())} have a finite entropy")
    key = torch.where(ok, flat if lowest else -flat, torch.full_like(flat, float("inf")))
    idx = key.argsort()[:k].tolist()
    _, H, B = entropy.shape
    return [(i // (H * B), (i // B) % H, i % B) for i in idx]


def matched_control(
    entries: Sequence[tuple[int, int, int]], n_heads: int, seed: int = 0
) -> list[tuple[int, int, int]]:
    """Per entry, a random *other* head of the same layer and band, not in ``entries`` and not reused (seeded).

    >>> matched_control([(0, 1, 3), (0, 2, 3)], n_heads=4, seed=0)  # heads 0 or 3 of band 3
    [(0, 0, 3), (0, 3, 3)]
    """
    g = torch.Generator().manual_seed(int(seed))
    taken = set(entries)
    out = []
    for layer, _h, b in entries:
        free = [h for h in range(n_heads) if (layer, h, b) not in taken]
        if not free:
            raise ParameterError(
                f"no head of layer position {layer}, band {b} is left for a matched control; pass a smaller k"
            )
        pick = free[int(torch.randint(len(free), (1,), generator=g))]
        taken.add((layer, pick, b))
        out.append((layer, pick, b))
    return out


def _entry_masks(
    entries: Sequence[tuple[int, int, int]], layers: list[int], H: int, B: int
) -> dict[int, Tensor]:
    masks: dict[int, Tensor] = {}
    for i, h, b in entries:
        masks.setdefault(layers[i], torch.zeros(H, B, dtype=torch.bool))[h, b] = True
    return masks


def frequency_entropy(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    start_pos: int = 1,
    ablate_k: int | None = 32,
    n_control: int = 2,
    ablation_windows: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> FrequencyEntropy:
    """Per (layer, head, band) entropy of the spectrum of ``‖q_i(m)‖`` over positions ``m >= start_pos``.

    Periodograms are summed over the sequences of all windows of the first window's
    length (a shorter last window is skipped and counted in ``n_skipped_windows``).
    Then, unless ``ablate_k`` is None, the ``ablate_k`` lowest- and highest-entropy
    entries are zeroed in q, each against ``n_control`` matched controls
    (:func:`matched_control`), and the mean next-token loss on the first
    ``ablation_windows`` windows is reported.

    >>> from rope_interp.model.testing import tiny_model
    >>> fe = frequency_entropy(tiny_model(), torch.randint(0, 50, (2, 33)), ablate_k=2, progress=False)
    >>> tuple(fe.entropy.shape), [r["condition"] for r in fe.ablation][:2]
    ((2, 4, 8), ['unablated', '2 lowest-entropy bands zeroed'])
    """
    layers = layer_list(model, layers)
    start_pos = positive_int("start_pos", start_pos, minimum=0)
    n_control = positive_int("n_control", n_control, minimum=0)
    ablation_windows = positive_int("ablation_windows", ablation_windows)
    spec = RotaryBands.from_model(model)
    if ablate_k is not None:
        ablate_k = positive_int("ablate_k", ablate_k)
    acc: dict[int, Tensor] = {}
    seq_len: list[int] = []

    def on_q(a: Any) -> None:
        if a.site != "rot_q":
            return
        x = band_norms(a.bands.detach().double())[:, start_pos:]  # [b, pos, head, band]
        p = power_spectrum(x.permute(0, 2, 3, 1)).sum(0)  # [head, band, freq]
        acc[a.layer] = acc[a.layer] + p if a.layer in acc else p

    from ..read.capture import band_hooks

    hooks = band_hooks(model, on_q, layers, ("rot_q",))
    cache: list[Tensor] = []
    n_tok = skipped = 0
    for tokens in windows(model, data, window, progress, "frequency entropy"):
        length = tokens.shape[1]
        if not seq_len:
            if length - start_pos < 4:
                raise ContextLengthError(
                    f"windows of {length} tokens leave {length - start_pos} positions after start_pos={start_pos}; "
                    "a spectrum needs at least 4"
                )
            seq_len.append(length)
        if length != seq_len[0]:
            skipped += 1
            continue
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
        n_tok += tokens.numel()
        if len(cache) < ablation_windows:
            cache.append(tokens)
    psd = torch.stack([acc[layer].cpu() for layer in layers]).float()
    result = FrequencyEntropy(
        spectral_entropy(psd).float(), psd, layers, seq_len[0], n_tok, start_pos, skipped
    )
    if ablate_k is None:
        return result
    H, B = spec.n_heads, spec.n_bands
    conds: list[tuple[str, HookSet | None, int]] = [("unablated", None, 0)]
    for label, lowest in (("lowest", True), ("highest", False)):
        ent = extreme_entries(result.entropy, ablate_k, lowest)
        result.extremes[label] = [(layers[i], h, b) for i, h, b in ent]
        conds.append(
            (
                f"{ablate_k} {label}-entropy bands zeroed",
                ZeroQueryBands(model, _entry_masks(ent, layers, H, B)),
                ablate_k,
            )
        )
        for c in range(n_control):
            ctrl = matched_control(ent, H, seed + c)
            conds.append(
                (
                    f"control {c} for {label} (other head, same layer & band)",
                    ZeroQueryBands(model, _entry_masks(ctrl, layers, H, B)),
                    ablate_k,
                )
            )
    for name, hs, cnt in progress_bar(conds, desc="entropy ablation", enabled=progress):
        tot, count = 0.0, 0
        for tokens in cache:
            with torch.no_grad():
                if hs is None:
                    loss = model(tokens, return_type="loss", loss_per_token=True)
                else:
                    with hs:
                        loss = model(tokens, return_type="loss", loss_per_token=True)
            tot += float(loss.double().sum())
            count += loss.numel()
        result.ablation.append(dict(condition=name, loss=tot / count, n_entries=cnt))
    return result


# ---- report -----------------------------------------------------------------------------------------------


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _n_pos(fe: FrequencyEntropy) -> int:
    return fe.seq_len - fe.start_pos


def report_section(result: FrequencyEntropy) -> list:
    """Items for the report page (HTML strings, a matplotlib figure, DataFrames), with what the numbers can and cannot show."""
    import matplotlib.pyplot as plt

    if not isinstance(result, FrequencyEntropy):
        raise TypeError(f"no report section for {type(result).__name__}")
    fig = result.plot()
    plt.close(fig)
    s = result.summary()
    items = [
        "<h3>Frequency entropy of band query norms</h3>",
        _p(
            "Per layer, head and band: the entropy of the power spectrum over positions of ||q_i(m)|| (mean removed, "
            "no window, periodograms summed over sequences, DC dropped, entropy / log(number of bins); our "
            "normalisation, after 'Probing Rotary Position Embeddings through Frequency Entropy'). 0 = one pure "
            f"tone, near 1 = white noise. Mean {s['mean_entropy']}, minimum {s['min_entropy']}; the period of the "
            "spectral peak of the lowest entries: "
            + (", ".join(f"{e['peak_period_tokens']:g}" for e in s["lowest"]) or "n/a")
            + f" tokens (analysed length {_n_pos(result)}: a peak at that length is a drift, not a tone)."
        ),
        _p(
            "Can show: where a band's query energy is concentrated in few frequencies over position (low "
            "entropy) rather than spread like content-driven noise. Cannot show: that low entropy is a periodic "
            "tone (a slow drift over the window also piles power into the first bins: read the spectrum), what "
            "it is for; the norm ignores the band's phase, so it "
            "is blind to the rotation itself; on short windows the frequency resolution is coarse. The ablation "
            "zeroes the extreme entries in q against heads of the same layer and band (matched frequency), "
            "measured on a few windows only."
        ),
        fig,
    ]
    if result.ablation:
        items.append(result.ablation_dataframe().round(4))
    return items


# ---- registry record (CLI subcommand and report section) ----
def _entropy_finish(ctx: RunContext, opts: dict[str, Any], accs: list) -> FrequencyEntropy:
    data = text_tokens(ctx.model, ctx.data, auto_size(ctx, opts["n_tokens"], 16, 64, 128))
    kw: dict[str, Any] = dict(
        layers=ctx.layers, window=ctx.window, n_control=opts["n_control"], ablation_windows=1
    )
    k = opts["ablate_k"] or None
    try:
        return frequency_entropy(ctx.model, data, ablate_k=k, progress=ctx.progress, **kw)
    except ParameterError:  # too few heads left for a matched control (tiny models): no ablation
        if k is None:
            raise
        return frequency_entropy(ctx.model, data, ablate_k=None, progress=ctx.progress, **kw)


def _entropy_summary(r: FrequencyEntropy) -> dict[str, Any]:
    s = r.summary()
    s["ablation"] = [
        {"condition": a["condition"], "loss": round(a["loss"], 4), "n_entries": a["n_entries"]}
        for a in r.ablation
    ]
    return s


def _entropy_findings(r: FrequencyEntropy) -> list[str]:
    s = r.summary()
    text = (
        f"Frequency entropy: the band query norms' spectra over {_n_pos(r)} positions have mean normalised entropy "
        f"{s['mean_entropy']} (minimum {s['min_entropy']}); band {s['lowest_entropy_band']} is the most tonal on "
        "average"
    )
    if r.ablation:
        base = r.ablation[0]["loss"]
        pick = {a["condition"]: a["loss"] for a in r.ablation}
        low = next(c for c in pick if "lowest-entropy" in c)
        ctrl = [v for c, v in pick.items() if c.startswith("control") and "lowest" in c]
        text += (
            f"; zeroing the {r.ablation[1]['n_entries']} lowest-entropy entries in q moves the loss from {base:.3f} "
            f"to {pick[low]:.3f}"
            + (f" (matched controls {', '.join(f'{v:.3f}' for v in ctrl)})" if ctrl else "")
        )
    return [text + "."]


ANALYSIS = Analysis(
    name="frequency-entropy",
    min_tokens=5,  # 4 positions after start_pos=1
    title="Frequency entropy of band query norms",
    help="Spectral entropy over positions of each (layer, head, band) query norm, and extreme-entropy ablations",
    description=(
        "Per layer, head and band, the entropy of the power spectrum over positions of ||q_i(m)|| (our normalisation, "
        "after 'Probing Rotary Position Embeddings through Frequency Entropy'), on the first n_tokens of the text; "
        "then the lowest- and highest-entropy entries zeroed in q against matched controls."
    ),
    finish=_entropy_finish,
    options=(
        Option(
            "n_tokens",
            int,
            None,
            "first tokens of the text to stream (0: all; None: 1/16 of it, 64 to 128)",
            minimum=0,
        ),
        Option("ablate_k", int, 32, "lowest / highest entries zeroed (0: no ablation)", minimum=0),
        Option("n_control", int, 1, "matched controls per ablation", minimum=0),
    ),
    summary=_entropy_summary,
    summary_doc={
        "seq_len": "window length of the spectra",
        "n_tokens": "tokens streamed",
        "n_skipped_windows": "shorter last windows left out",
        "mean_entropy": "mean normalised entropy (0 = one tone, ~1 = white noise)",
        "min_entropy": "lowest entropy of any (layer, head, band)",
        "lowest_entropy_band": "band with the lowest mean entropy",
        "highest_entropy_band": "band with the highest mean entropy",
        "ablation": "records: condition, loss, n_entries (empty when skipped)",
        "lowest": "records: the 5 lowest-entropy entries (layer, head, band, entropy, peak period, peak share)",
    },
    findings=_entropy_findings,
    tables=lambda r: (
        {"frequency_entropy": r.to_dataframe()}
        | ({"frequency_entropy_ablation": r.ablation_dataframe()} if r.ablation else {})
    ),
    section=lambda r: as_blocks(report_section(r)),
)
