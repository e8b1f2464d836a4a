"""Benchmark the report's analyses: plain forwards vs each analysis alone vs the fused shared pass.

One process, one model (the embedded SmolLM2-135M), the report's input (the first
2,048 tokens of the bundled corpus, windows of 512, the report's analysis options).
It times

* plain      — one plain forward (logits) per window, the floor any analysis pays;
* alone      — each registered analysis run on its own (its own pass + its extra runs);
* fused      — every analysis in one shared pass (``registry.run``) + their extra runs;
* report     — ``build_report`` end to end (fused analyses, figures, views, HTML);
* BandStats  — ``BandStats.update`` on 512 tokens, all layers, sites rot_q + rot_k, vs a plain forward.

Absolute times depend on the machine and its load; the ratios against the plain forwards
(measured in the same process, interleaved) are the numbers to compare. Target:
fused ≤ 6× plain.

    python scripts/bench_report.py                 # the report's 2,048 tokens (minutes on 2 cores)
    python scripts/bench_report.py --quick         # 256 tokens, 4 layers: a smoke run
    python scripts/bench_report.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, sync=None) -> float:
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="256 tokens, 4 layers, no report")
    ap.add_argument("--no-alone", action="store_true", help="skip timing each analysis alone")
    ap.add_argument("--no-report", action="store_true", help="skip timing the whole report")
    ap.add_argument("--json", default=None, help="also write the timings to this JSON file")
    ap.add_argument(
        "--analyses",
        nargs="*",
        default=None,
        help="only these registered analyses (default: all, as the report runs them); e.g. the six "
        "streaming ones: usage heads sinks offsets massive spectrum",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rope_interp import load_model
    from rope_interp.analyses import registry
    from rope_interp.analyses.inputs import iter_windows
    from rope_interp.analyses.report import ReportConfig, build_report
    from rope_interp.data import load_text
    from rope_interp.read.capture import BandStats

    model = load_model("smollm2-135m", device=args.device)
    n_tok = 256 if args.quick else args.tokens
    window = min(args.window, n_tok)
    tokens = model.to_tokens(load_text(), truncate=False)[:, :n_tok]
    n = model.cfg.n_layers
    layers = sorted({0, 1, n // 2, n - 1}) if args.quick else None
    cfg = ReportConfig(window=window, max_tokens=n_tok, layers=layers, progress=False)
    windows = list(iter_windows(model, tokens, window))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    names = [a.name for a in registry.analyses()]
    if args.analyses:
        unknown = sorted(set(args.analyses) - set(names))
        if unknown:
            ap.error(f"unknown analyses {unknown}; registered: {names}")
        names = [n for n in names if n in args.analyses]

    def options(name: str) -> dict:
        a = registry.get(name)
        opts = cfg.options.get(name, {})
        return {k: v for k, v in opts.items() if any(o.name == k for o in a.options)}

    @torch.no_grad()
    def plain() -> None:
        for w in windows:
            model(w)

    def run(selected: list[str], timings: dict | None = None) -> None:
        registry.run(
            model,
            tokens,
            {s: options(s) for s in selected},
            layers=layers,
            window=window,
            progress=False,
            timings=timings,
        )

    print(
        f"{tokens.shape[1]} tokens in {len(windows)} windows of {window}; device {args.device}; "
        f"{torch.get_num_threads()} threads; layers {layers or 'all'}; analyses {' '.join(names)}",
        flush=True,
    )
    plain()  # warm-up
    base = [timed(plain, sync)]
    print(f"  plain forwards {base[0]:7.2f} s", flush=True)
    fused_parts: dict = {}
    fused = timed(lambda: run(names, fused_parts), sync)
    base.append(timed(plain, sync))
    print(f"  fused          {fused:7.2f} s (plain again {base[-1]:.2f} s)", flush=True)
    rows = {}
    for name in [] if args.no_alone else names:
        rows[name] = timed(lambda name=name: run([name]), sync)
        base.append(timed(plain, sync))  # interleaved: the load on a shared machine drifts
        print(f"  {name:10s} alone {rows[name]:7.2f} s (plain again {base[-1]:.2f} s)", flush=True)
    plain_s = min(base)
    alone_total = sum(rows.values())
    report_s = None
    if not (args.quick or args.no_report):
        with tempfile.TemporaryDirectory() as tmp:
            report_s = timed(lambda: build_report(model, tokens, Path(tmp) / "r", cfg), sync)

    one = windows[0][:, :512]

    @torch.no_grad()
    def forward_one() -> None:
        model(one)

    def stats_one() -> None:
        BandStats(model, sites=("rot_q", "rot_k")).update(one)

    forward_one()
    stats_one()
    f1 = min(timed(forward_one, sync) for _ in range(3))
    s1 = min(timed(stats_one, sync) for _ in range(3))

    print(f"plain forwards over the windows: {plain_s:.2f} s (min of {len(base)} interleaved runs)")
    if rows:
        print(f"each analysis alone, summed:     {alone_total:.2f} s = {alone_total / plain_s:.1f}x plain")
    print(f"fused analyses:                  {fused:.2f} s = {fused / plain_s:.1f}x plain (target <= 6x)")
    print(
        "  of which shared pass {:.2f} s, extra runs {}".format(
            fused_parts.get("pass", float("nan")),
            ", ".join(f"{k} {v:.2f} s" for k, v in fused_parts.items() if k != "pass"),
        )
    )
    if rows:
        print(f"fused vs alone:                  {alone_total / fused:.2f}x faster")
    if report_s is not None:
        print(f"whole report (figures, views):   {report_s:.2f} s = {report_s / plain_s:.1f}x plain")
    print(
        f"BandStats (512 tok, all layers, rot_q+rot_k) vs plain forward: {s1 / f1:.2f}x "
        f"({s1 * 1e3:.0f} ms vs {f1 * 1e3:.0f} ms; target <= 1.2x, owned by capture.py)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    tokens=int(tokens.shape[1]),
                    plain=plain_s,
                    alone=rows,
                    fused=fused,
                    fused_parts=fused_parts,
                    report=report_s,
                    bandstats_ratio=s1 / f1,
                ),
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
