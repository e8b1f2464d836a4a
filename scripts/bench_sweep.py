"""Benchmark the band-sweep tiers on the embedded SmolLM2-135M, in one process.

For two prompts — France (" Paris" − " Rome" after "The capital of France is"; corrupted:
"Italy") and IOI ("When Mary and John went to the store, John gave a drink to", " Mary" −
" John"; corrupted: the second "John" → "Mary") — and for zero-ablation and clean→corrupted
patching sweeps over layers × bands, it times

* naive           — one full hooked forward per condition (``--quick`` grid only by default:
                    the full 960-cell naive loop takes ~8 minutes per sweep on 2 CPU cores;
                    ``--naive`` forces it),
* exact           — prefix reuse + batched conditions (the reference the others are scored on),
* attribution     — gradient × (new − run) at hook_rot_q/k, one forward + one backward,
* qk_attribution  — AtP*'s QK-fix: exact per-band pattern change × gradient at hook_pattern,
* refine          — qk_attribution ranking, exact tier on a growing shortlist (top ``--top``),

and prints times, speed-ups, Spearman against exact (signed and |effect|), the recall of the
exact top-k among each estimate's top-k, and for refine its recall of the exact top-k with
exact values. Absolute times are noisy on a shared machine; compare ratios within one run.

    python scripts/bench_sweep.py --quick --threads 1   # 3 layers × 6 bands, ~1-2 minutes
    python scripts/bench_sweep.py --threads 1           # the full 30 × 32 grid (no naive)
    python scripts/bench_sweep.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch

PROMPTS = {
    "France": ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    "IOI": (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
        " Mary",
        " John",
    ),
}


def timed(fn, sync=None):
    """(result, seconds)."""
    if sync:
        sync()
    t = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return out, time.perf_counter() - t


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def recall(est: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Share of the exact top-k (by |effect|) that is in the estimate's top-k."""
    a = set(est.abs().flatten().topk(k).indices.tolist())
    b = set(exact.abs().flatten().topk(k).indices.tolist())
    return len(a & b) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 layers × 6 bands")
    ap.add_argument("--naive", action="store_true", help="run the naive tier on the full grid too (slow)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="conditions per forward for exact")
    ap.add_argument("--top", type=int, default=20, help="top-k for recall and the refine tier")
    ap.add_argument("--prompts", nargs="*", default=list(PROMPTS), choices=list(PROMPTS))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rope_interp import load_model
    from rope_interp.model.layout import RotaryBands
    from rope_interp.sweep.direct import ablated_patterns
    from rope_interp.sweep.metrics import logit_diff
    from rope_interp.sweep.tiers import TIERS

    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device)
    spec = RotaryBands.from_model(model)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    if args.quick:
        layers, bands = [0, spec.n_layers // 2, spec.n_layers - 1], list(range(0, spec.n_bands, 6))
    else:
        layers, bands = list(range(spec.n_layers)), list(range(spec.n_bands))
    n_cells = len(layers) * len(bands)
    top = min(args.top, max(1, n_cells // 3))
    with_naive = args.quick or args.naive
    print(
        f"model {args.model} on {args.device} ({torch.get_num_threads()} threads); loaded in "
        f"{time.perf_counter() - t0:.1f} s; grid {len(layers)} layers × {len(bands)} bands = {n_cells} cells; "
        f"top-k = {top}; ρ = Spearman rank correlation against exact"
        + ("" if with_naive else "; naive skipped on the full grid (~8 min per sweep)")
    )
    summary = []
    for name in args.prompts:
        clean_s, corrupt_s, ans, wrong = PROMPTS[name]
        clean, corrupt = model.to_tokens(clean_s), model.to_tokens(corrupt_s)
        assert clean.shape == corrupt.shape, (name, clean.shape, corrupt.shape)
        metric = logit_diff(model.to_single_token(ans), model.to_single_token(wrong))
        for kind, run, source in (("zero-ablation", clean, None), ("patch clean→corrupted", corrupt, clean)):
            kw = dict(layers=layers, bands=bands, progress=False, source=source)
            res, times = {}, {}
            tiers = (["naive"] if with_naive else []) + ["exact", "attribution", "qk_attribution", "refine"]
            for tier in tiers:
                extra = {}
                if tier == "exact" and args.batch_size:
                    extra["batch_size"] = args.batch_size
                if tier == "refine":
                    extra["top"] = top
                res[tier], times[tier] = timed(partial(TIERS[tier], model, run, metric, **kw, **extra), sync)
            ex = res["exact"]
            print(
                f"\n== {name}, {kind}: {clean.shape[1]} tokens; base {ex.base:.4f}; "
                f"largest |effect| {ex.effect.abs().max():.4f}"
            )
            print(
                f"{'tier':<16}{'seconds':>9}{'× exact time':>14}{'speed-up':>10}"
                f"{'ρ signed':>10}{'ρ |eff|':>9}{f'top-{top} recall':>15}"
            )
            for tier in tiers:
                r, t = res[tier], times[tier]
                rho = spearman(r.effect, ex.effect) if tier != "exact" else 1.0
                rho_a = spearman(r.effect.abs(), ex.effect.abs()) if tier != "exact" else 1.0
                rec = recall(r.effect, ex.effect, top)
                ref = times.get("naive", times["exact"])
                print(
                    f"{tier:<16}{t:>9.2f}{t / times['exact']:>14.3f}{ref / t:>9.1f}×"
                    f"{rho:>10.3f}{rho_a:>9.3f}{rec:>15.2f}"
                )
                summary.append((name, kind, tier, t, rho, rho_a, rec))
            if "naive" in res:
                print(f"max |exact − naive| = {(ex.values - res['naive'].values).abs().max():.2e}")
            rf = res["refine"]
            topk = ex.effect.abs().flatten().topk(top).indices
            got = rf.extra["exact_mask"].flatten()[topk]
            err = (rf.values.flatten()[topk] - ex.values.flatten()[topk]).abs().max()
            print(
                f"refine: {rf.extra['n_exact']} of {n_cells} cells exact; exact top-{top} recovered "
                f"{float(got.float().mean()):.2f} with max |value − exact| {err:.1e}; "
                f"{times['refine'] / times['exact']:.1%} of the exact tier's time; "
                f"qk_attribution costs {times['qk_attribution'] / times['attribution']:.2f}× plain attribution"
            )
    L = spec.n_layers // 2
    with torch.no_grad():
        clean = model.to_tokens(PROMPTS["France"][0])
        _, t_fwd = timed(lambda: model(clean), sync)
        _, t_fwd = timed(lambda: model(clean), sync)
        pats, t_de = timed(lambda: ablated_patterns(model, clean, L), sync)
    print(
        f"\nanalytic direct effect, all {spec.n_bands} bands × {spec.n_heads} heads of layer {L}: "
        f"{t_de * 1e3:.1f} ms = {t_de / t_fwd:.2f}× one plain forward"
    )
    print(f"total benchmark time {time.perf_counter() - t0:.1f} s")
    if args.json:
        keys = ("prompt", "kind", "tier", "seconds", "rho_signed", "rho_abs", "top_recall")
        results = {
            "rows": [dict(zip(keys, (*row[:3], *map(float, row[3:])), strict=True)) for row in summary],
            "direct_effect_ms": t_de * 1e3,
            "total_seconds": time.perf_counter() - t0,
        }
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
