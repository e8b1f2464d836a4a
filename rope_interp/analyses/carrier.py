"""Is there a θ_i carrier outside q and k? Line detection in the sink attention and the MLP input.

Our own measure, built to test the precondition of Ruscio et al.'s harmonic claim
(arXiv 2410.18067 **v1/v2**: FFN nonlinearities applied to RoPE's oscillations make
harmonics). Their model rotates the token embedding itself; in a Llama-style model only
q and k are rotated and the rotation is consumed by the score, so a carrier at a band
frequency ``θ_i`` can reach the residual stream only through position-dependent attention,
e.g. the weight on the first (sink) key, which for a steady query is
``softmax(Σ_i |q_i||k_0,i| cos(m θ_i + φ_i) + ...)`` (cf. Ruscio, Nanni & Silvestri 2026,
on absolute position arising from the sink and the softmax denominator).

For each layer we take, over query positions ``m >= skip``:

* ``sink``: each head's attention to key 0, ``pattern[h, m, 0]``;
* ``mlp_in``: the MLP's normalised input (``ln2.hook_normalized``), mean PSD over dims;

remove a linear trend, take a Hann-windowed PSD (bins in rad/token, zero padded ×2) and
call a **line** at ``θ_i`` where the peak power within ±1 bin of ``θ_i`` is at least
``threshold`` (default 10) times the median of the neighbouring bins (±``half_width``,
leaving out ±``guard`` bins). Bands with fewer than ``min_cycles`` periods in the window
are not resolvable and get NaN.

What it can show: whether a θ_i line exists at those two sites, for the input given.
What it cannot show: where a line comes from (a harmonic of another band or a content
periodicity can land on θ_i), or anything about an input it was not run on — hence
:func:`carrier_survey`, over natural text, one repeated token and random tokens.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

from ..errors import ParameterError, RopeInterpError, TokenError
from ..model import adapter
from ..model.hooks import ln2_normalized_hook
from ..model.kind import Model
from ..model.layout import RotaryBands
from ..validate import finite, positive_int
from .inputs import figure, layer_list, pattern_hooks, text_tokens, windows
from .registry import Analysis, Option, RunContext, as_blocks, auto_size
from .signal import psd


def detrend(x: Float[Tensor, "... pos"]) -> Float[Tensor, "... pos"]:
    """``x`` minus its least-squares line along the last axis.

    >>> import torch
    >>> detrend(torch.arange(5.0) * 3 + 1).abs().max() < 1e-5
    tensor(True)
    """
    n = x.shape[-1]
    t = torch.arange(n, dtype=x.dtype, device=x.device)
    t = t - t.mean()
    xm = x.mean(-1, keepdim=True)
    slope = ((x - xm) * t).sum(-1, keepdim=True) / t.square().sum().clamp_min(1e-30)
    return x - xm - slope * t


def line_ratios(
    p: Float[Tensor, "... freq"],
    theta: Float[Tensor, " band"],
    nfft: int,
    n_pos: int,
    *,
    half_width: int = 8,
    guard: int = 2,
    min_cycles: float = 6.0,
) -> Float[Tensor, "... band"]:
    """Peak power within ±1 bin of each ``θ_i`` over the median of the neighbouring bins.

    ``p`` is a one-sided PSD (``nfft // 2 + 1`` bins over 0..π) of a series of ``n_pos``
    samples. NaN for bands with fewer than ``min_cycles`` periods in ``n_pos`` samples or
    too close to 0 or π for a full neighbourhood.

    >>> import torch, math
    >>> m = torch.arange(256.0)
    >>> p = psd(torch.cos(0.5 * m) + 0.1 * torch.randn(256, generator=torch.Generator().manual_seed(0)))
    >>> r = line_ratios(p, torch.tensor([0.5, 0.01]), nfft=512, n_pos=256)
    >>> bool(r[0] > 10), bool(r[1].isnan())
    (True, True)
    """
    F = p.shape[-1]
    out = torch.full((*p.shape[:-1], len(theta)), float("nan"), dtype=p.dtype, device=p.device)
    for b, th in enumerate(theta.tolist()):
        j = round(th * nfft / (2 * math.pi))
        if th * n_pos < 2 * math.pi * min_cycles or j - half_width < 1 or j + half_width >= F:
            continue
        ref = torch.cat([p[..., j - half_width : j - guard], p[..., j + guard + 1 : j + half_width + 1]], -1)
        peak = p[..., j - 1 : j + 2].amax(-1)
        out[..., b] = peak / ref.median(-1).values.clamp_min(1e-300)
    return out


@dataclass
class CarrierLines:
    """Line ratios at each band frequency, for one input condition.

    ``ratio_sink[l, h, b]``: head ``h``'s sink-attention PSD at ``θ_b`` over its local median;
    ``ratio_mlp[l, b]``: the same for the mean PSD of the MLP's normalised input. NaN = not resolvable.
    """

    condition: str
    layers: list[int]
    theta: Float[Tensor, "layer band"]
    psd_sink: Float[Tensor, "layer head freq"]
    psd_mlp: Float[Tensor, "layer freq"]
    ratio_sink: Float[Tensor, "layer head band"]
    ratio_mlp: Float[Tensor, "layer band"]
    nfft: int
    n_pos: int
    skip: int
    threshold: float = 10.0

    @property
    def omega(self) -> Float[Tensor, " freq"]:
        """Bin frequencies (rad/token), 0..π."""
        return torch.arange(self.psd_mlp.shape[-1]) * 2 * math.pi / self.nfft

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for b, th in enumerate(self.theta[i].tolist()):
                sites = [("sink", h, self.ratio_sink[i, h, b]) for h in range(self.ratio_sink.shape[1])]
                for site, h, r in [*sites, ("mlp_in", -1, self.ratio_mlp[i, b])]:
                    if math.isnan(float(r)):
                        continue
                    rows.append(
                        {
                            "condition": self.condition,
                            "layer": layer,
                            "site": site,
                            "head": h,
                            "band": b,
                            "theta": th,
                            "ratio": float(r),
                            "line": float(r) >= self.threshold,
                        }
                    )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        s = self.ratio_sink.flatten()
        s = s[~s.isnan()]
        m = self.ratio_mlp.flatten()
        m = m[~m.isnan()]
        return {
            "condition": self.condition,
            "sink_lines": int((s >= self.threshold).sum()),
            "sink_checked": int(s.numel()),
            "mlp_in_lines": int((m >= self.threshold).sum()),
            "mlp_in_checked": int(m.numel()),
            "sink_max_ratio": round(float(s.max()), 2) if s.numel() else None,
            "mlp_in_max_ratio": round(float(m.max()), 2) if m.numel() else None,
        }

    def plot(self):
        return CarrierSurvey([self]).plot()


@dataclass
class CarrierSurvey:
    """:class:`CarrierLines` for several input conditions (text, repeated token, random tokens)."""

    results: list[CarrierLines] = field(default_factory=list)

    def to_dataframe(self):
        import pandas as pd

        return pd.concat([r.to_dataframe() for r in self.results], ignore_index=True)

    def summary(self) -> dict[str, Any]:
        return {r.condition: r.summary() for r in self.results}

    def plot(self):
        fig, axes = figure(len(self.results), width=5.0, height=4.0)
        for ax, r in zip(axes, self.results, strict=True):
            for i, layer in enumerate(r.layers):
                th = r.theta[i].numpy()
                sink = r.ratio_sink[i].amax(0) if r.ratio_sink.shape[1] else r.ratio_mlp[i] * float("nan")
                (ln,) = ax.semilogx(
                    th, sink.clamp_min(1e-3).log10().numpy(), "o-", ms=3, label=f"L{layer} sink"
                )
                ax.semilogx(
                    th,
                    r.ratio_mlp[i].clamp_min(1e-3).log10().numpy(),
                    "x--",
                    color=ln.get_color(),
                    ms=4,
                    label=f"L{layer} mlp_in",
                )
            ax.axhline(math.log10(r.threshold), color="k", lw=0.8, ls=":", label="line threshold")
            ax.set_title(f"{r.condition}: θ_i line strength (max over heads)")
            ax.set_xlabel("band frequency θ_i (rad/token)")
            ax.set_ylabel("log10 power / local median")
            ax.legend(fontsize=6)
        fig.tight_layout()
        return fig


def carrier_lines(
    model: Model,
    data: Any,
    *,
    layers: int | Sequence[int] | None = None,
    window: int | None = None,
    skip: int = 4,
    threshold: float = 10.0,
    condition: str = "input",
    progress: bool = True,
) -> CarrierLines:
    """θ_i line ratios of each head's sink attention and of the MLP input, positions ``>= skip``.

    PSDs are averaged over batch rows and windows; every window must be at least
    ``skip + 16`` tokens long, and none longer than the first (which fixes ``nfft``).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> c = carrier_lines(tiny_model(n_ctx=128), torch.randint(0, 50, (1, 128)), progress=False)
    >>> tuple(c.ratio_sink.shape), c.summary()["sink_checked"] > 0
    ((2, 4, 8), True)
    """
    if not adapter.of(model).hooked_blocks:
        raise RopeInterpError(
            "carrier_lines reads ln2.hook_normalized of a HookedTransformer: load the model with "
            "rope_interp.load_model(..., bridge=False)"
        )
    layers = layer_list(model, layers)
    skip = positive_int("skip", skip, minimum=1)
    finite("threshold", threshold)
    if threshold <= 1:
        raise ParameterError(
            f"threshold must be > 1 (a line is that many times the local median), got {threshold}"
        )
    spec = RotaryBands.from_model(model)
    acc_sink: dict[int, Tensor] = {}
    acc_mlp: dict[int, Tensor] = {}
    state: dict[str, Any] = {"nfft": None, "n": 0, "len": 0}

    def on_pattern(pat: Tensor, hook: Any, i: int) -> Tensor:
        p = psd(detrend(pat[:, :, skip:, 0].detach().double()), state["nfft"]).sum(0)  # [h, freq]
        acc_sink[i] = acc_sink[i] + p if i in acc_sink else p
        return pat

    def on_norm(x: Tensor, hook: Any, i: int) -> Tensor:
        y = detrend(x[:, skip:].detach().double().movedim(1, -1))  # [b, d_model, pos]
        p = psd(y, state["nfft"]).mean(1).sum(0)
        acc_mlp[i] = acc_mlp[i] + p if i in acc_mlp else p
        return x

    hooks = pattern_hooks(layers, on_pattern)
    hooks += [
        (ln2_normalized_hook(layer), lambda x, hook, i=i: on_norm(x, hook, i))
        for i, layer in enumerate(layers)
    ]
    rows = 0
    for tokens in windows(model, data, window, progress, "carrier lines"):
        n = tokens.shape[1] - skip
        if n < 16:
            raise ParameterError(
                f"a window of {tokens.shape[1]} tokens leaves {n} < 16 positions after skip={skip}"
            )
        if state["nfft"] is None:
            state["nfft"], state["len"] = 1 << (2 * n - 1).bit_length(), n
        elif n > state["len"]:
            raise ParameterError(
                f"windows must not grow: the first had {state['len']} positions, this one {n}"
            )
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens, stop_at_layer=max(layers) + 1)
        rows += tokens.shape[0]
    theta = spec.freqs[layers].double()
    ps = torch.stack([acc_sink[i] for i in range(len(layers))]).cpu() / rows
    pm = torch.stack([acc_mlp[i] for i in range(len(layers))]).cpu() / rows
    nf, nl = int(state["nfft"]), int(state["len"])
    rs = torch.stack([line_ratios(ps[i], theta[i], nf, nl) for i in range(len(layers))])
    rm = torch.stack([line_ratios(pm[i], theta[i], nf, nl) for i in range(len(layers))])
    return CarrierLines(
        condition,
        layers,
        theta.float(),
        ps.float(),
        pm.float(),
        rs.float(),
        rm.float(),
        nf,
        nl,
        skip,
        threshold,
    )


def survey_inputs(
    model: Model, tokens: Tensor, n_pos: int, seed: int = 0
) -> dict[str, Float[Tensor, "1 pos"]]:
    """The three conditions of :func:`carrier_survey`, all ``[1, n_pos]`` and starting with ``tokens[0, 0]``.

    ``text``: the first ``n_pos`` tokens; ``repeated``: ``tokens[0, 1]`` repeated; ``random``:
    uniform random ids (seeded).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = survey_inputs(tiny_model(), torch.arange(1, 40)[None], 32)
    >>> sorted(s), s["repeated"][0, :3].tolist()
    (['random', 'repeated', 'text'], [1, 2, 2])
    """
    n_pos = positive_int("n_pos", n_pos, minimum=2)
    if not isinstance(tokens, Tensor):
        tokens = torch.as_tensor(tokens)
    tokens = adapter.to_tokens(model, (tokens[None] if tokens.ndim == 1 else tokens)[:, :n_pos])
    if tokens.shape[-1] < n_pos:
        raise ParameterError(
            f"need {n_pos} tokens of text, got {tokens.shape[-1]}: pass more text or a smaller n_pos"
        )
    text = tokens[:1, :n_pos]
    first = text[:, :1]
    rep = torch.cat([first, text[:, 1:2].expand(1, n_pos - 1)], 1)
    g = torch.Generator().manual_seed(seed)
    d_vocab = int(adapter.config(model).d_vocab)
    rnd = torch.randint(0, d_vocab, (1, n_pos - 1), generator=g).to(text.device)
    return {"text": text, "repeated": rep, "random": torch.cat([first, rnd], 1)}


def carrier_survey(
    model: Model,
    tokens: Tensor,
    *,
    n_pos: int = 512,
    layers: int | Sequence[int] | None = None,
    skip: int = 4,
    threshold: float = 10.0,
    seed: int = 0,
    progress: bool = True,
) -> CarrierSurvey:
    """:func:`carrier_lines` on natural text, one repeated token and random tokens (:func:`survey_inputs`).

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = carrier_survey(tiny_model(n_ctx=128), torch.randint(0, 50, (1, 128)), n_pos=128, progress=False)
    >>> sorted(s.summary())
    ['random', 'repeated', 'text']
    """
    if isinstance(tokens, str):  # text: tokenised by the model (refused, never cut, if over n_ctx)
        tokens = adapter.to_tokens(model, tokens)
    elif not isinstance(tokens, Tensor):
        raise TokenError(
            f"carrier_survey takes a text or a [1, pos] tensor of token ids, got {type(tokens).__name__}"
        )
    conds = survey_inputs(model, tokens, n_pos, seed)
    return CarrierSurvey(
        [
            carrier_lines(
                model, t, layers=layers, skip=skip, threshold=threshold, condition=name, progress=progress
            )
            for name, t in conds.items()
        ]
    )


CAN_AND_CANNOT = (
    "Our own measure (precondition of Ruscio et al. v1/v2's harmonic claim; v3/v4 drop that claim). "
    "A line is the PSD over query positions at a band frequency θ_i, at least 10x the median of its "
    "neighbouring bins. It can show whether a θ_i carrier reaches the sink attention or the MLP input for "
    "these inputs (text, one repeated token, random tokens). It cannot show where a line comes from (a "
    "harmonic of another band or a periodicity of the text can land on θ_i), nor that the MLP uses it; "
    "absence at the MLP input means the harmonic claim has no fundamental to act on there."
)


def report_section(result: CarrierSurvey | CarrierLines) -> list:
    """Items for the report page: the what-it-can-and-cannot-show text, the figure, the lines found.

    >>> import torch
    >>> from rope_interp.model.testing import tiny_model
    >>> s = carrier_survey(tiny_model(n_ctx=128), torch.randint(0, 50, (1, 128)), n_pos=128, progress=False)
    >>> [type(x).__name__ for x in report_section(s)]
    ['str', 'str', 'Figure', 'DataFrame']
    """
    import matplotlib.pyplot as plt

    survey = result if isinstance(result, CarrierSurvey) else CarrierSurvey([result])
    found = "; ".join(
        f"{c}: sink {s['sink_lines']}/{s['sink_checked']} head-bands, MLP input {s['mlp_in_lines']}/"
        f"{s['mlp_in_checked']} bands"
        for c, s in survey.summary().items()
    )
    fig = survey.plot()
    plt.close(fig)
    df = survey.to_dataframe()
    lines = cast("pd.DataFrame", df[df["line"]]) if len(df) else df
    return [
        f"<p>{html.escape(CAN_AND_CANNOT)}</p>",
        f"<p>Lines found (of resolvable checks): {html.escape(found)}.</p>",
        fig,
        lines.sort_values(by="ratio", ascending=False).head(20) if len(lines) else df.head(0),
    ]


# ---- registry record (CLI subcommand and report section) ----------------------------------------------


def _finish(ctx: RunContext, opts: dict[str, Any], accs: list) -> CarrierSurvey:
    tokens = text_tokens(ctx.model, ctx.data)
    n_pos = min(
        auto_size(ctx, opts["n_pos"], 8, 64, 256), tokens.shape[1], int(adapter.config(ctx.model).n_ctx)
    )
    layers = layer_list(ctx.model, ctx.layers)
    if opts["carrier_layers"]:
        layers = layer_list(ctx.model, opts["carrier_layers"])
    else:  # first, middle and last analysed layer
        layers = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    return carrier_survey(
        ctx.model, tokens, n_pos=n_pos, layers=layers, threshold=opts["threshold"], progress=ctx.progress
    )


def _summary(r: CarrierSurvey) -> dict[str, Any]:
    first = r.results[0]
    return {
        "layers": first.layers,
        "n_pos": first.n_pos + first.skip,
        "threshold": first.threshold,
        "conditions": [r_.summary() for r_ in r.results],
    }


def _findings(r: CarrierSurvey) -> list[str]:
    s = {c.condition: c.summary() for c in r.results}
    parts = "; ".join(
        f"{c}: {v['sink_lines']}/{v['sink_checked']} sink head-bands, {v['mlp_in_lines']}/{v['mlp_in_checked']} "
        "MLP-input bands"
        for c, v in s.items()
    )
    return [
        f"Carrier (Ruscio et al. v1/v2 precondition): θ_i lines at least {r.results[0].threshold:g}× the local median "
        f"in layers {r.results[0].layers}: {parts}."
    ]


ANALYSIS = Analysis(
    name="carrier",
    min_tokens=20,  # 16 positions after the default skip=4
    title="θ_i carriers outside q·k (Ruscio et al. v1/v2 precondition)",
    help="Is there a θ_i carrier in the sink attention or the MLP input? Line detection on text, a repeated token "
    "and random tokens",
    description=(
        "Our test of the precondition of Ruscio et al.'s v1/v2 harmonic claim: the PSD over query positions of each "
        "head's attention on the first key and of the MLP's normalised input, and a line wherever the power at a band "
        "frequency θ_i is threshold× the local median; on the text, one repeated token and random tokens."
    ),
    finish=_finish,
    options=(
        Option(
            "n_pos",
            int,
            None,
            "positions per input (None: 1/8 of the text, 64 to 256; capped by n_ctx)",
            minimum=24,
        ),
        Option("threshold", float, 10.0, "a line is this many times the local median", minimum=1.0001),
        Option(
            "carrier_layers",
            int,
            None,
            "layers (none given: the first, middle and last analysed layer)",
            many=True,
        ),
    ),
    summary=_summary,
    summary_doc={
        "layers": "layers checked",
        "n_pos": "positions per input",
        "threshold": "line threshold (times the local median)",
        "conditions": "records per input (text, repeated, random): sink_lines, sink_checked, mlp_in_lines, "
        "mlp_in_checked, sink_max_ratio, mlp_in_max_ratio",
    },
    findings=_findings,
    tables=lambda r: {"carrier_lines": r.to_dataframe()},
    section=lambda r: as_blocks(report_section(r)),
)
