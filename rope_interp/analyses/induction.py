"""Induction and in-context copying through the rotary bands.

Two measurements, each a function returning a small result dataclass:

* :func:`induction_heads` — the standard repeated-random-tokens test (Olsson et al.,
  "In-context Learning and Induction Heads", 2022; the ARENA / TransformerLens induction tutorial's
  score): a batch of ``[BOS, t_1..t_n, t_1..t_n]`` sequences. A query at position
  ``p`` of the repeat (``p = n+1+i``) should attend to the token *after* the previous
  occurrence of its token, key ``p − n + 1`` — a fixed offset ``n − 1``. The score of a
  head is its mean attention on that key over the repeat queries ``p = n+1 .. 2n``
  (the tutorial also counts two first-half queries; we do not). For every head the
  pre-softmax QK margin of that key against **the mean of the other keys 1..p** (BOS,
  key 0, left out: it is the sink) is split exactly into per-band terms plus the
  pass-through remainder (:func:`rope_interp.analyses.heads.offset_margins`, the same
  linear prefix-mean decomposition as the positional heads), so the band shares of a
  head sum to 1 (the margins to the margin).
* :func:`induction_circuit` — causal tests on the repeat loss (mean next-token loss on
  positions ``n+1 .. 2n−1``, i.e. predicting repeat tokens 2..n, the ones induction can
  predict): the top induction heads with their ``k`` highest- vs ``k`` lowest-frequency
  bands zeroed in the query (which removes exactly those bands' score terms of that
  head and of no other head, also under GQA), the same for the previous-token heads of
  earlier layers found by :func:`~rope_interp.analyses.heads.positional_heads`, the
  heads knocked out (``hook_z = 0``) as a reference, and Jin et al.'s massive q/k dims
  mean-ablated against matched random controls (:mod:`.massive`).

What these numbers can and cannot show is said in :func:`report_section`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ContextLengthError, ParameterError, TokenError
from ..model import adapter
from ..model.hooks import FwdHooks, HookSet, attn_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..progress import progress_bar
from ..validate import finite, positive_int, token_ids
from .heads import OffsetAttention, offset_margins, positional_heads
from .inputs import figure, heatmap, layer_list, qk_pair_hooks
from .massive import SITES, Masks, MeanAblateDims, control_masks, massive_values
from .registry import Analysis, Block, Option, RunContext, as_blocks, auto_size

# ---- inputs -----------------------------------------------------------------------------------------------


def _bos_id(model: Model) -> int:
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    return int(bos) if bos is not None else 0


def repeated_tokens(model: Model, n: int = 50, batch: int = 8, seed: int = 0) -> Tensor:
    """``[batch, 1 + 2n]`` token ids: BOS, ``n`` random tokens, the same ``n`` again.

    The ``n`` tokens of a row are distinct (drawn without replacement from the
    vocabulary minus BOS, seeded), so each repeat token has exactly one earlier
    occurrence. BOS is the tokenizer's ``bos_token_id`` (0 for a model without one).

    >>> from rope_interp.model.testing import tiny_model
    >>> t = repeated_tokens(tiny_model(), n=5, batch=2)
    >>> tuple(t.shape), bool((t[:, 1:6] == t[:, 6:]).all()), t[:, 0].tolist()
    ((2, 11), True, [0, 0])
    """
    n = positive_int("n", n, minimum=2)
    batch = positive_int("batch", batch)
    cfg = adapter.config(model)
    d_vocab, n_ctx = int(cfg.d_vocab), int(cfg.n_ctx)
    if 1 + 2 * n > n_ctx:
        raise ContextLengthError(
            f"a repeated sequence of n={n} needs 1 + 2n = {1 + 2 * n} positions, more than n_ctx={n_ctx}; "
            f"pass n <= {(n_ctx - 1) // 2}"
        )
    if n > d_vocab - 1:
        raise ParameterError(
            f"n={n} distinct tokens need a vocabulary of more than {n} ids; got d_vocab={d_vocab}"
        )
    bos = _bos_id(model)
    g = torch.Generator().manual_seed(int(seed))
    pool = torch.tensor([t for t in range(d_vocab) if t != bos]) if d_vocab < 100_000 else None
    rows = []
    for _ in range(batch):
        if pool is not None:
            seq = pool[torch.randperm(len(pool), generator=g)[:n]]
        else:  # pragma: no cover - huge vocabularies: rejection-free draw without the pool
            seq = torch.randperm(d_vocab, generator=g)[: n + 1]
            seq = seq[seq != bos][:n]
        rows.append(torch.cat([torch.tensor([bos]), seq, seq]))
    return torch.stack(rows).to(adapter.device(model))


def _check_repeated(model: Model, tokens: Any) -> tuple[Tensor, int]:
    """Validate user-given repeated sequences; returns (tokens, n)."""
    tokens = adapter.to_tokens(model, tokens)
    token_ids(tokens, int(adapter.config(model).d_vocab))
    length = tokens.shape[1]
    if length < 5 or length % 2 == 0:
        raise TokenError(
            f"repeated sequences are [BOS, t_1..t_n, t_1..t_n]: an odd length >= 5, got {length}; "
            "build them with repeated_tokens(model, n, batch)"
        )
    n = (length - 1) // 2
    if not bool((tokens[:, 1 : n + 1] == tokens[:, n + 1 :]).all()):
        raise TokenError(
            "tokens[:, n+1:] must repeat tokens[:, 1:n+1] (n = (length - 1) / 2); "
            "build them with repeated_tokens(model, n, batch)"
        )
    distinct = min(len(set(row.tolist())) for row in tokens[:, 1 : n + 1])
    if distinct < max(2, n // 2):  # e.g. one token repeated: copying it is not told from attending anywhere
        raise TokenError(
            f"a repeated sequence needs mostly distinct tokens (at least {max(2, n // 2)} of its n = {n}); "
            f"a row has only {distinct}, so an induction score there says nothing about copying; "
            "build them with repeated_tokens(model, n, batch)"
        )
    return tokens, n


def _fraction(name: str, value: Any) -> float:
    finite(name, value)
    if not 0 <= value <= 1:
        raise ParameterError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _check_k(k: Any, n_bands: int) -> int:
    k = positive_int("k", k)
    if k > n_bands // 2:
        raise ParameterError(
            f"k={k} highest and k lowest bands overlap: the model has {n_bands} bands, pass k <= {n_bands // 2}"
        )
    return k


# ---- 1. induction heads -----------------------------------------------------------------------------------


@dataclass
class InductionHeads:
    """Induction scores of every head and the exact per-band split of their QK margin.

    Attributes:
        scores: ``[layer, head]`` mean attention of the repeat queries on the token
            after the previous occurrence.
        margin: ``[layer, head, band]`` mean per-band margin of that key over the mean
            of the other keys ``1..p`` (pre-softmax, divided by ``attn_scale``).
        margin_pass: ``[layer, head]`` the pass-through dims' part of the margin.
        chance: the score of a head attending uniformly over its causal keys.
        tokens: the ``[batch, 1 + 2n]`` repeated sequences used.
    """

    scores: Float[Tensor, "layer head"]
    margin: Float[Tensor, "layer head band"]
    margin_pass: Float[Tensor, "layer head"]
    layers: list[int]
    threshold: float
    n: int
    chance: float
    tokens: Tensor = field(repr=False)

    @property
    def n_bands(self) -> int:
        return self.margin.shape[-1]

    def total_margin(self) -> Float[Tensor, "layer head"]:
        """The full pre-softmax margin: every band plus the pass-through remainder."""
        return self.margin.sum(-1) + self.margin_pass

    def shares(self) -> tuple[Float[Tensor, "layer head band"], Float[Tensor, "layer head"]]:
        """Per-band and pass-through shares of the margin (they sum to 1; NaN where the margin is ~0)."""
        total = self.total_margin()
        denom = torch.where(total.abs() > 1e-9, total, torch.full_like(total, float("nan")))
        return self.margin / denom[..., None], self.margin_pass / denom

    def found(self) -> list[tuple[int, int, float]]:
        """``(layer, head, score)`` of every head above the threshold, best first."""
        idx = (self.scores > self.threshold).nonzero().tolist()
        return sorted(((self.layers[i], h, float(self.scores[i, h])) for i, h in idx), key=lambda t: -t[2])

    def top(self, n: int) -> list[tuple[int, int, float]]:
        """The ``n`` highest-scoring heads, whatever the threshold."""
        flat = self.scores.flatten().argsort(descending=True)[:n].tolist()
        H = self.scores.shape[1]
        return [(self.layers[i // H], i % H, float(self.scores.flatten()[i])) for i in flat]

    def to_dataframe(self):
        """One row per (layer, head): score, induction flag, margin, high/low-half shares, top band."""
        import pandas as pd

        share, share_pass = self.shares()
        half = self.n_bands // 2
        rows = []
        for i, layer in enumerate(self.layers):
            for h in range(self.scores.shape[1]):
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "score": float(self.scores[i, h]),
                        "induction": bool(self.scores[i, h] > self.threshold),
                        "margin": float(self.total_margin()[i, h]),
                        "high_band_share": float(share[i, h, :half].sum()),
                        "low_band_share": float(share[i, h, half:].sum()),
                        "pass_share": float(share_pass[i, h]),
                        "top_band": int(self.margin[i, h].argmax()),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        share, _ = self.shares()
        half = self.n_bands // 2
        found = []
        for layer, h, s in self.found()[:10]:
            i = self.layers.index(layer)
            found.append(
                dict(
                    layer=layer,
                    head=h,
                    score=round(s, 4),
                    margin=round(float(self.total_margin()[i, h]), 4),
                    high_band_share=round(float(share[i, h, :half].sum()), 4),
                    low_band_share=round(float(share[i, h, half:].sum()), 4),
                    top_bands=self.margin[i, h].argsort(descending=True)[:3].tolist(),
                )
            )
        return dict(
            n=self.n,
            batch=int(self.tokens.shape[0]),
            threshold=self.threshold,
            chance=round(self.chance, 5),
            found=found,
        )

    def plot(self):
        """Induction scores (layer × head) and the per-band margin share of the top heads."""
        fig, axes = figure(2, width=6.0, height=4.5)
        heatmap(
            axes[0], self.scores, f"induction score (repeat of n={self.n} random tokens)", "head", "layer"
        )
        axes[0].set_yticks(range(len(self.layers)), [str(x) for x in self.layers])
        share, _ = self.shares()
        ax = axes[1]
        for layer, h, s in self.top(5):
            ax.plot(
                share[self.layers.index(layer), h].numpy(), marker=".", label=f"L{layer}H{h} (score {s:.2f})"
            )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title("per-band share of the QK margin (target key vs mean of other keys)")
        ax.set_xlabel("band (0 = highest frequency)")
        ax.set_ylabel("share of the head's margin")
        ax.legend(fontsize=7)
        fig.suptitle(f"Induction heads (threshold {self.threshold}; chance {self.chance:.3f})")
        fig.tight_layout()
        return fig


def induction_heads(
    model: Model,
    tokens: Any = None,
    *,
    n: int = 50,
    batch: int = 8,
    seed: int = 0,
    layers: int | Sequence[int] | None = None,
    threshold: float = 0.3,
) -> InductionHeads:
    """Score every head on repeated random tokens and split its QK margin by band.

    ``tokens``: repeated sequences ``[batch, 1 + 2n]`` (default: :func:`repeated_tokens`
    with ``n``, ``batch``, ``seed``). One forward pass, up to the last analysed layer.

    >>> from rope_interp.model.testing import tiny_model
    >>> r = induction_heads(tiny_model(), n=8, batch=2)
    >>> tuple(r.scores.shape), tuple(r.margin.shape)
    ((2, 4), (2, 4, 8))
    >>> share, share_pass = r.shares()
    >>> bool(torch.allclose(share.sum(-1) + share_pass, torch.ones(2, 4), atol=1e-4))
    True
    """
    threshold = _fraction("threshold", threshold)
    if tokens is None:
        tokens = repeated_tokens(model, n, batch, seed)
    tokens, n = _check_repeated(model, tokens)
    layers = layer_list(model, layers)
    adapter.check_decomposable(model)
    spec = RotaryBands.from_model(model)
    offset, start = n - 1, n + 1
    att = OffsetAttention(model, layers, [offset], start_pos=start)
    dev = adapter.device(model)
    margin = torch.zeros(len(layers), spec.n_heads, spec.n_bands, dtype=torch.float64, device=dev)
    margin_pass = torch.zeros(len(layers), spec.n_heads, dtype=torch.float64, device=dev)
    n_q = [0]

    def on_pair(layer: int, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> None:
        i = layers.index(layer)
        mb, mp, cnt = offset_margins(q, k, qp, kp, spec.kv_map, float(spec.attn_scale[layer]), offset, start)
        margin[i] += mb
        margin_pass[i] += mp
        n_q[0] = cnt

    with torch.no_grad(), att, model.hooks(fwd_hooks=qk_pair_hooks(model, layers, on_pair)):
        model(tokens, stop_at_layer=max(layers) + 1)
    att.count(tokens)
    chance = sum(1.0 / (p + 1) for p in range(start, 2 * n + 1)) / n
    return InductionHeads(
        scores=att.means()[:, :, 0].float(),
        margin=(margin.cpu() / max(n_q[0], 1)).float(),
        margin_pass=(margin_pass.cpu() / max(n_q[0], 1)).float(),
        layers=layers,
        threshold=threshold,
        n=n,
        chance=chance,
        tokens=tokens,
    )


# ---- 2. the circuit through the bands ----------------------------------------------------------------------


class ZeroHeads(HookSet):
    """Knock heads out: their ``hook_z`` (the head's output before ``W_O``) set to 0.

    >>> from rope_interp.model.testing import tiny_model
    >>> model = tiny_model()
    >>> with ZeroHeads(model, {0: [1]}):
    ...     _, c = model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter="blocks.0.attn.hook_z")
    >>> float(c["blocks.0.attn.hook_z"][:, :, 1].abs().max())
    0.0
    """

    def __init__(self, model: Model, heads: Mapping[int, Sequence[int]]):
        super().__init__(model)
        self.heads = {
            adapter.layers(model, layer)[0]: adapter.heads(model, list(h)) for layer, h in heads.items()
        }

    def fwd_hooks(self) -> FwdHooks:
        def fn(z: Tensor, hook: Any, idx: list[int]) -> Tensor:
            z = z.clone()
            z[:, :, idx] = 0
            return z

        return [
            (attn_hook(layer, "z"), lambda z, hook, idx=idx: fn(z, hook, idx))
            for layer, idx in self.heads.items()
        ]


def _band_zero_hooks(model: Model, heads: Sequence[tuple[int, int]], bands: list[int]) -> HookSet:
    """Zero ``bands`` of the query of each (layer, head): removes exactly those score terms of those heads."""
    from ..intervene.ablate import ablate_bands

    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    parts = [
        ablate_bands(model, bands, layers=[layer], heads=hs, target="q", mode="zero")
        for layer, hs in by_layer.items()
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


@dataclass
class InductionCircuit:
    """Repeat loss and induction score under band ablations of the induction circuit.

    ``rows``: one dict per condition with ``group`` (what was ablated), ``condition``,
    ``repeat_loss`` (mean next-token loss predicting repeat tokens 2..n),
    ``first_half_loss`` (the same for the random first half: nothing to copy),
    ``induction_score`` (mean over ``induction`` heads).
    ``massive_per_band``: massive q/k (layer, head, dim) entries per band (last slot: pass-through dims).
    """

    rows: list[dict]
    induction: list[tuple[int, int, float]]
    previous: list[tuple[int, int, float]]
    k: int
    n_bands: int
    n: int
    n_massive_dims: int
    massive_per_band: list[int] = field(default_factory=list)

    def baseline(self) -> dict:
        return self.rows[0]

    def to_dataframe(self):
        """One row per condition; the deltas are against the unablated model.

        ``delta_first_half_loss`` is the damage where nothing can be copied: an ablation
        that hurts copying in particular raises ``delta_repeat_loss`` well above it.
        """
        import pandas as pd

        df = pd.DataFrame(self.rows)
        base = self.baseline()
        df["delta_repeat_loss"] = df["repeat_loss"] - base["repeat_loss"]
        df["delta_first_half_loss"] = df["first_half_loss"] - base["first_half_loss"]
        df["score_survival"] = df["induction_score"] / base["induction_score"]
        return df

    def summary(self) -> dict:
        return dict(
            induction_heads=[[layer, h, round(s, 4)] for layer, h, s in self.induction],
            previous_token_heads=[[layer, h, round(s, 4)] for layer, h, s in self.previous],
            k=self.k,
            n_bands=self.n_bands,
            n_massive_dims=self.n_massive_dims,
            massive_dims_per_band=self.massive_per_band,
            conditions={
                f"{r['group']}: {r['condition']}": dict(
                    repeat_loss=round(r["repeat_loss"], 4),
                    first_half_loss=round(r["first_half_loss"], 4),
                    induction_score=round(r["induction_score"], 4),
                )
                for r in self.rows
            },
        )

    def plot(self):
        """Repeat loss and mean induction score per condition."""
        df = self.to_dataframe()
        fig, axes = figure(2, width=7.0, height=5.0)
        colors = {
            "none": "grey",
            "induction heads": "tab:green",
            "previous-token heads": "tab:orange",
            "massive dims (Jin)": "tab:red",
            "massive control": "tab:blue",
        }
        c = [colors.get(g, "tab:purple") for g in df["group"]]
        for ax, col, label in (
            (axes[0], "repeat_loss", "mean next-token loss on the repeat (nats)"),
            (axes[1], "induction_score", "mean induction score of the top induction heads"),
        ):
            ax.barh(range(len(df)), df[col], color=c)
            ax.set_yticks(
                range(len(df)), [f"{g}: {k}" for g, k in zip(df["group"], df["condition"], strict=True)]
            )
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.set_ylabel("condition")
            ax.tick_params(axis="y", labelsize=7)
        axes[0].axvline(df["repeat_loss"].iloc[0], color="k", lw=0.7, ls="--")
        axes[0].set_title(f"repeat loss (first half, nothing to copy: {df['first_half_loss'].iloc[0]:.2f})")
        axes[1].set_title("induction score")
        fig.suptitle(
            f"Induction circuit through the bands (k = {self.k} of {self.n_bands} bands, n = {self.n})"
        )
        fig.tight_layout()
        return fig


def _measure(
    model: Model, tokens: Tensor, n: int, heads: list[tuple[int, int, float]], hooks: HookSet | None
) -> tuple[float, float, float]:
    layers = sorted({layer for layer, _, _ in heads})
    att = OffsetAttention(model, layers, [n - 1], start_pos=n + 1)
    with torch.no_grad(), att:
        if hooks is None:
            loss = model(tokens, return_type="loss", loss_per_token=True)
        else:
            with hooks:
                loss = model(tokens, return_type="loss", loss_per_token=True)
    att.count(tokens)
    means = att.means()[:, :, 0]
    score = sum(float(means[layers.index(layer), h]) for layer, h, _ in heads) / len(heads)
    loss = loss.double()
    return float(loss[:, n + 1 : 2 * n].mean()), float(loss[:, 1:n].mean()), score


def induction_circuit(
    model: Model,
    found: InductionHeads | None = None,
    *,
    top: int = 3,
    k: int = 8,
    n_previous: int = 3,
    previous_threshold: float = 0.3,
    lam: float = 5.0,
    n_control: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> InductionCircuit:
    """Band ablations of the top induction heads and their previous-token heads; massive dims vs control.

    ``found``: an :func:`induction_heads` result (default: computed here with its
    defaults); its tokens are reused. The ``top`` highest-scoring heads are ablated
    together. Previous-token heads are the heads of layers before the last of those
    with previous-token score above ``previous_threshold`` (at most ``n_previous``,
    best first) — candidates that could feed the induction heads, not a verified path.
    Massive dims (``λ = lam``) are found on the same tokens.

    >>> from rope_interp.model.testing import tiny_model
    >>> c = induction_circuit(tiny_model(), induction_heads(tiny_model(), n=8, batch=2), top=2, k=2, progress=False)
    >>> [r["condition"] for r in c.rows][:3]
    ['unablated', '2 highest bands zeroed in q', '2 lowest bands zeroed in q']
    """
    if found is None:
        found = induction_heads(model)
    spec = RotaryBands.from_model(model)
    top = positive_int("top", top)
    k = _check_k(k, spec.n_bands)
    n_previous = positive_int("n_previous", n_previous, minimum=0)
    previous_threshold = _fraction("previous_threshold", previous_threshold)
    n_control = positive_int("n_control", n_control)
    finite("lam", lam)
    tokens, n = found.tokens, found.n
    ind = found.top(top)
    high, low = list(range(k)), list(range(spec.n_bands - k, spec.n_bands))
    conditions: list[tuple[str, str, HookSet | None]] = [("none", "unablated", None)]
    pairs = [(layer, h) for layer, h, _ in ind]
    conditions += [
        ("induction heads", f"{k} highest bands zeroed in q", _band_zero_hooks(model, pairs, high)),
        ("induction heads", f"{k} lowest bands zeroed in q", _band_zero_hooks(model, pairs, low)),
        ("induction heads", "knocked out (z = 0)", ZeroHeads(model, _group(pairs))),
    ]
    prev: list[tuple[int, int, float]] = []
    last = max(layer for layer, _ in pairs)
    if n_previous and last > 0:
        ph = positional_heads(
            model,
            tokens,
            layers=list(range(last)),
            offsets=(1,),
            threshold=previous_threshold,
            ablate_k=None,
            progress=False,
        )
        prev = [(layer, h, s) for layer, h, _, s in ph.found()[:n_previous]]
    if prev:
        pp = [(layer, h) for layer, h, _ in prev]
        conditions += [
            ("previous-token heads", f"{k} highest bands zeroed in q", _band_zero_hooks(model, pp, high)),
            ("previous-token heads", f"{k} lowest bands zeroed in q", _band_zero_hooks(model, pp, low)),
            ("previous-token heads", "knocked out (z = 0)", ZeroHeads(model, _group(pp))),
        ]
    mv = massive_values(model, tokens, lam=lam, progress=False)
    per_site: Masks = {(layer, s): mv.massive(s[-1])[i] for i, layer in enumerate(mv.layers) for s in SITES}
    masks: Masks = {key: m for key, m in per_site.items() if m.any()}
    n_dims = int(sum(int(m.sum()) for m in masks.values()))
    if masks:
        conditions.append(
            ("massive dims (Jin)", f"{n_dims} massive q/k dims mean-ablated", MeanAblateDims(model, masks))
        )
        for i in range(n_control):
            conditions.append(
                (
                    "massive control",
                    f"control {i}: {n_dims} random non-massive dims",
                    MeanAblateDims(model, control_masks(masks, seed + i)),
                )
            )
    rows = []
    for group, cond, hooks in progress_bar(conditions, desc="induction circuit", enabled=progress):
        rl, fl, sc = _measure(model, tokens, n, ind, hooks)
        rows.append(dict(group=group, condition=cond, repeat_loss=rl, first_half_loss=fl, induction_score=sc))
    per_band = (mv.band_counts("q") + mv.band_counts("k")).tolist()  # last slot: pass-through dims
    return InductionCircuit(rows, ind, prev, k, spec.n_bands, n, n_dims, per_band)


def _group(pairs: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, h in pairs:
        out.setdefault(layer, []).append(h)
    return out


# ---- report -----------------------------------------------------------------------------------------------


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _massive_bands_text(c: InductionCircuit) -> str:
    counts = c.massive_per_band[: c.n_bands]
    if not sum(counts):
        return ""
    top = sorted(range(len(counts)), key=lambda b: -counts[b])[:3]
    return "; most massive dims sit in bands " + ", ".join(f"{b} ({counts[b]})" for b in top if counts[b])


def report_section(result: InductionHeads | InductionCircuit) -> list:
    """Items for the report page (HTML strings, a matplotlib figure, DataFrames), with what the numbers can and cannot show.

    >>> from rope_interp.model.testing import tiny_model
    >>> items = report_section(induction_heads(tiny_model(), n=8, batch=2))
    >>> isinstance(items[0], str) and items[0].startswith("<h3>")
    True
    """
    import matplotlib.pyplot as plt

    if isinstance(result, InductionHeads):
        s = result.summary()
        heads = ", ".join(f"L{f['layer']}H{f['head']} ({f['score']:.2f})" for f in s["found"]) or "none"
        fig = result.plot()
        plt.close(fig)
        df = result.to_dataframe().sort_values("score", ascending=False).head(15).round(4)
        return [
            "<h3>Induction heads (repeated random tokens)</h3>",
            _p(
                f"{s['batch']} sequences of BOS + {s['n']} random tokens + their repeat. Score = mean attention of a "
                f"repeat token on the token after its previous occurrence (chance, uniform attention: {s['chance']:.3f}). "
                f"Heads above {s['threshold']}: {heads}. The band shares split each head's pre-softmax margin of that key "
                "over the mean of the other non-BOS keys exactly (they sum to 1 with the pass-through share)."
            ),
            _p(
                "Can show: which heads copy on this synthetic task and which bands build their QK preference, directly. "
                "Cannot show: that the head matters for the output (see the circuit ablations), behaviour on natural "
                "text, or what the head's OV copies; a band share is a direct contribution to the score, not a causal "
                "effect (softmax saturation and other keys are ignored); shares of a head with a tiny margin are unstable."
            ),
            fig,
            df,
        ]
    if isinstance(result, InductionCircuit):
        fig = result.plot()
        plt.close(fig)
        df = result.to_dataframe().round(4)
        ind = ", ".join(f"L{a}H{b}" for a, b, _ in result.induction)
        prev = ", ".join(f"L{a}H{b}" for a, b, _ in result.previous) or "none above the threshold"
        return [
            "<h3>The induction circuit through the bands</h3>",
            _p(
                f"Induction heads ablated together: {ind}; previous-token heads of earlier layers: {prev}. "
                f"Bands are zeroed in the head's query ({result.k} highest- vs {result.k} lowest-frequency of "
                f"{result.n_bands}), which removes exactly those score terms of that head only. Repeat loss = mean "
                "next-token loss on repeat tokens 2..n; first-half loss (random tokens, nothing to copy) is the "
                f"no-induction reference. Massive dims: {result.n_massive_dims} (Jin et al., lambda = 5) mean-ablated "
                f"vs matched random non-massive dims of the same heads{_massive_bands_text(result)}."
            ),
            _p(
                "Can show: whether these bands of these heads are necessary for copying on this task, and whether "
                "massive dims matter more than as many random dims. Cannot show: sufficiency, effects on natural "
                "text, which previous-token head actually feeds which induction head (no path patching), or "
                "redundancy hidden by other heads (a small effect of ablating a few heads does not mean the bands "
                "are unused); the massive-dim ablation touches every layer at once, unlike the per-head ablations."
            ),
            fig,
            df,
        ]
    raise TypeError(f"no report section for {type(result).__name__}")


# ---- registry records (CLI subcommands and report sections) ----------------------------------------------


@dataclass
class InductionResult:
    """What the registered ``induction`` analysis returns: the heads and (unless skipped) the circuit."""

    heads: InductionHeads
    circuit: InductionCircuit | None = None

    def to_dataframe(self):
        return self.heads.to_dataframe()


def _repeat_len(model: Model, n: int) -> int:
    cfg = adapter.config(model)
    return max(2, min(n, (int(cfg.n_ctx) - 1) // 2, int(cfg.d_vocab) - 1))


def _induction_finish(ctx: RunContext, opts: dict[str, Any], accs: list) -> InductionResult:
    spec = RotaryBands.from_model(ctx.model)
    heads = induction_heads(
        ctx.model,
        n=_repeat_len(ctx.model, opts["n_repeat"]),
        batch=auto_size(ctx, opts["batch"], 2048, 1, 2),
        seed=opts["seed"],
        layers=ctx.layers,
        threshold=opts["threshold"],
    )
    circuit = None
    if opts["circuit"]:
        circuit = induction_circuit(
            ctx.model,
            heads,
            top=opts["top"],
            k=min(opts["k"], spec.n_bands // 2),
            n_control=opts["n_control"],
            seed=opts["seed"],
            progress=ctx.progress,
        )
    return InductionResult(heads, circuit)


def _induction_summary(r: InductionResult) -> dict[str, Any]:
    s = r.heads.summary()
    out: dict[str, Any] = {k: s[k] for k in ("n", "batch", "threshold", "chance")}
    out["induction_heads"] = s["found"]
    if r.circuit is not None:
        c = r.circuit
        out["ablated_heads"] = [{"layer": a, "head": b, "score": round(x, 4)} for a, b, x in c.induction]
        out["previous_token_heads"] = [
            {"layer": a, "head": b, "score": round(x, 4)} for a, b, x in c.previous
        ]
        out["k"] = c.k
        out["n_massive_dims"] = c.n_massive_dims
        out["conditions"] = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in c.to_dataframe().to_dict(orient="records")
        ]
    return out


def _induction_findings(r: InductionResult) -> list[str]:
    h = r.heads
    best = h.top(1)[0]
    found = h.found()
    share, _ = h.shares()
    i = h.layers.index(best[0])
    half = h.n_bands // 2
    text = (
        f"Induction: {len(found)} heads score above {h.threshold} on {h.tokens.shape[0]} repeats of {h.n} random "
        f"tokens (chance {h.chance:.3f}); the best, L{best[0]}H{best[1]} ({best[2]:.2f}), takes "
        f"{float(share[i, best[1], :half].sum()):.0%} of its QK margin from the high-frequency half of the bands"
    )
    c = r.circuit
    if c is None:
        return [text + "."]
    df = c.to_dataframe()
    ind = df[df["group"] == "induction heads"]
    parts = ", ".join(
        f"{cond.replace(' zeroed in q', '')} {d:+.2f}"
        for cond, d in zip(ind["condition"], ind["delta_repeat_loss"], strict=True)
    )
    return [
        text + ".",
        f"Induction circuit: with the top {len(c.induction)} induction heads' {c.k} highest / lowest bands zeroed "
        f"in q or the heads knocked out, the repeat loss ({df['repeat_loss'].iloc[0]:.2f} nats) moves by {parts} "
        f"nats.",
    ]


def _induction_tables(r: InductionResult) -> dict[str, Any]:
    out = {"induction_heads": r.heads.to_dataframe()}
    if r.circuit is not None:
        out["induction_circuit"] = r.circuit.to_dataframe()
    return out


def _induction_section(r: InductionResult) -> list[Block]:
    blocks = as_blocks(report_section(r.heads))
    if r.circuit is not None:
        blocks += as_blocks(report_section(r.circuit))
    return blocks


ANALYSIS = Analysis(
    name="induction",
    title="Induction heads and their bands",
    help="Induction heads on repeated random tokens, their per-band QK margin, and band ablations of the circuit",
    description=(
        "Repeated random tokens [BOS, t_1..t_n, t_1..t_n] (Olsson et al., 2022): each head's attention on the token "
        "after the previous occurrence, its QK margin split exactly by band; then the top heads' highest vs lowest "
        "bands zeroed in q (and their previous-token heads'), knock-outs and massive dims vs controls, on the repeat "
        "loss. Synthetic input: needs no text."
    ),
    finish=_induction_finish,
    options=(
        Option("n_repeat", int, 24, "random tokens per sequence, repeated once (capped by n_ctx)", minimum=2),
        Option(
            "batch", int, None, "repeated sequences (None: 1 per 2,048 tokens of text, 1 to 2)", minimum=1
        ),
        Option("threshold", float, 0.3, "induction score above which a head counts", minimum=0.0),
        Option("top", int, 3, "top induction heads ablated together", minimum=1),
        Option("k", int, 8, "highest / lowest bands zeroed (capped at half the bands)", minimum=1),
        Option("n_control", int, 1, "random controls of the massive-dim ablation", minimum=1),
        Option("seed", int, 0, "seed of the random tokens and controls", minimum=0),
        Option("circuit", bool, True, "skip the circuit ablations"),
    ),
    summary=_induction_summary,
    summary_doc={
        "n": "random tokens per sequence (each repeated once)",
        "batch": "repeated sequences",
        "threshold": "induction score threshold",
        "chance": "score of uniform attention over the causal keys",
        "induction_heads": "records for heads above threshold (best 10): layer, head, score, margin, "
        "high/low_band_share, top_bands",
        "ablated_heads": "records: the top induction heads ablated together (layer, head, score)",
        "previous_token_heads": "records: previous-token heads of earlier layers (layer, head, score)",
        "k": "highest / lowest bands zeroed",
        "n_massive_dims": "massive q/k dims (Jin et al.) found on the repeated tokens",
        "conditions": "records per ablation: group, condition, repeat_loss, first_half_loss, induction_score "
        "and deltas vs unablated",
    },
    findings=_induction_findings,
    tables=_induction_tables,
    section=_induction_section,
)
