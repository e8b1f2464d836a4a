"""Benchmark the band-sweep tiers against the naive loop on the embedded SmolLM2-135M.

One process, one model. For a zero-ablation sweep over layers × bands (metric: logit
difference " Paris" − " Rome" after "The capital of France is") it times

* naive      — one full hooked forward per condition (TransformerLens-style patching),
* exact/1    — prefix reuse only (run blocks L..end per condition, one condition per forward),
* exact/B    — prefix reuse + B conditions stacked in one forward,
* attribution — gradient × (0 − activation), one forward + one backward,

checks exact against naive (max |difference|), reports the Spearman rank correlation of
attribution vs exact effects, repeats the comparison for a clean→corrupted patching sweep
("France" → "Italy"), and times the analytic direct effect of every band of one layer
against one plain forward.

    python scripts/bench_sweep.py --quick              # subset, < 1 minute on 2 CPU cores
    python scripts/bench_sweep.py --threads 1          # the full 30 × 32 grid
    python scripts/bench_sweep.py --device cuda --json bench.json   # also the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, repeat: int = 1, sync=None):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 layers × 6 bands for both sweeps (< 1 minute)")
    ap.add_argument(
        "--full-patch", action="store_true", help="patching sweep on the full grid too (default: subset)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="conditions per forward for exact/B")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rope_interp import load_model
    from rope_interp.patching import logit_diff
    from rope_interp.spec import RotaryBands
    from rope_interp.sweeps import ablated_patterns, attribution_sweep, exact_sweep, naive_sweep

    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device)
    spec = RotaryBands.from_model(model)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    clean = model.to_tokens("The capital of France is")
    corrupt = model.to_tokens("The capital of Italy is")
    metric = logit_diff(model.to_single_token(" Paris"), model.to_single_token(" Rome"))
    subset = [0, spec.n_layers // 2, spec.n_layers - 1], list(range(0, spec.n_bands, 6))
    full = list(range(spec.n_layers)), list(range(spec.n_bands))
    zero_grid = subset if args.quick else full
    patch_grid = full if args.full_patch else subset
    print(
        f"model {args.model} on {args.device} ({torch.get_num_threads()} threads); loaded in "
        f"{time.perf_counter() - t0:.1f} s; prompt {clean.shape[1]} tokens"
    )

    with torch.no_grad():
        model(clean)
        _, t_fwd = timed(lambda: model(clean), repeat=5, sync=sync)
    print(f"one plain forward: {t_fwd * 1e3:.1f} ms\n")
    results: dict = {"model": args.model, "device": args.device, "threads": torch.get_num_threads()}
    results.update(prompt_tokens=clean.shape[1], forward_ms=t_fwd * 1e3, sweeps={})

    def sweep_block(name: str, source, grid) -> None:
        layers, bands = grid
        n_cond, bs = len(layers) * len(bands), args.batch_size or len(bands)
        kw = dict(layers=layers, bands=bands, progress=False, source=source)
        run_tokens = clean if source is None else corrupt
        naive, t_naive = timed(lambda: naive_sweep(model, run_tokens, metric, **kw), sync=sync)
        ex1, t_ex1 = timed(lambda: exact_sweep(model, run_tokens, metric, batch_size=1, **kw), sync=sync)
        exb, t_exb = timed(lambda: exact_sweep(model, run_tokens, metric, batch_size=bs, **kw), sync=sync)
        attr, t_attr = timed(lambda: attribution_sweep(model, run_tokens, metric, **kw), repeat=2, sync=sync)
        print(
            f"== {name}: {len(layers)} layers × {len(bands)} bands = {n_cond} conditions; "
            f"base metric {naive.base:.4f}, largest |effect| {naive.effect.abs().max():.4f}"
        )
        print(f"{'tier':<22}{'seconds':>10}{'per cond (ms)':>15}{'speed-up vs naive':>20}")
        for label, t in (
            ("naive", t_naive),
            ("exact, 1 per forward", t_ex1),
            (f"exact, {bs} per forward", t_exb),
            ("attribution", t_attr),
        ):
            print(f"{label:<22}{t:>10.2f}{t / n_cond * 1e3:>15.2f}{t_naive / t:>19.1f}×")
        err1 = (ex1.values - naive.values).abs().max().item()
        errb = (exb.values - naive.values).abs().max().item()
        rho = spearman(attr.effect, exb.effect)
        rho_abs = spearman(attr.effect.abs(), exb.effect.abs())
        print(f"max |exact - naive|: {err1:.2e} (1 per forward), {errb:.2e} (batched)")
        print(f"attribution vs exact Spearman: {rho:.3f} (signed), {rho_abs:.3f} (|effect|)\n")
        results["sweeps"][name] = dict(
            conditions=n_cond,
            batch_size=bs,
            seconds=dict(naive=t_naive, exact_1=t_ex1, exact_batched=t_exb, attribution=t_attr),
            max_abs_exact_minus_naive=max(err1, errb),
            spearman_attribution_vs_exact=rho,
            spearman_abs=rho_abs,
        )

    sweep_block("zero-ablation sweep [layer, band]", None, zero_grid)
    sweep_block("patching sweep France→Italy [layer, band]", clean, patch_grid)

    L = spec.n_layers // 2
    with torch.no_grad():
        pats, t_de = timed(lambda: ablated_patterns(model, clean, L), repeat=5, sync=sync)
    print(
        f"== analytic direct effect, all {spec.n_bands} bands × {spec.n_heads} heads of layer {L}: "
        f"{t_de * 1e3:.1f} ms = {t_de / t_fwd:.2f}× one plain forward (pattern tensor {tuple(pats.shape)})"
    )
    print(f"total benchmark time {time.perf_counter() - t0:.1f} s")
    if args.json:
        results.update(direct_effect_ms=t_de * 1e3, total_seconds=time.perf_counter() - t0)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
