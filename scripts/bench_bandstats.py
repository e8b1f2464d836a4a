"""Benchmark BandStats and BandCapture against a plain forward on the embedded SmolLM2-135M.

One process, one model, all layers, sites ``rot_q`` and ``rot_k``. For ``--tokens`` tokens of
the bundled English text it times (median of ``--repeat`` runs, interleaved):

* forward     — ``model(tokens)`` under ``torch.no_grad()``,
* blocks only — the same without the unembedding (``stop_at_layer=n_layers``), which is what
  ``BandStats.update`` runs: its overhead is the ratio of the two last lines,
* BandCapture — the same forward recording every layer's rotated q/k bands,
* BandStats   — ``BandStats.update(tokens)`` (float32 window sums, float64 running totals),

and prints each as a ratio to the plain forward, plus the accuracy of BandStats against a
float64 reference computed from the captured bands. Absolute times are noisy on a shared
machine; the ratios, measured in the same process, are what to compare.

    python scripts/bench_bandstats.py                    # 512 tokens
    python scripts/bench_bandstats.py --tokens 2048 --threads 1
    python scripts/bench_bandstats.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per forward (default 512)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each (median reported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m", help="anything load_model accepts")
    args = ap.parse_args(argv)
    if args.tokens < 2 or args.repeat < 1:
        ap.error("--tokens must be >= 2 and --repeat >= 1")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    from rope_interp import BandCapture, BandStats, band_norms, load_model
    from rope_interp.data import load_text

    model = load_model(args.model, device=args.device)
    toks = model.to_tokens(load_text(), truncate=False)[:, : args.tokens]
    if toks.shape[1] < args.tokens:
        ap.error(f"the bundled text has only {toks.shape[1]} tokens")
    sync = torch.cuda.synchronize if toks.device.type == "cuda" else (lambda: None)
    sites = ("rot_q", "rot_k")

    def forward():
        with torch.no_grad():
            model(toks)

    def blocks():
        with torch.no_grad():
            model(toks, stop_at_layer=model.cfg.n_layers)

    def capture():
        with torch.no_grad(), BandCapture(model, sites=sites):
            model(toks)

    def stats():
        BandStats(model, sites=sites).update(toks)

    runs = {"forward": forward, "blocks only": blocks, "BandCapture": capture, "BandStats": stats}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeat):
        for name, fn in runs.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    # accuracy against a float64 reference from the captured bands
    cap = BandCapture(model, sites=sites)
    with torch.no_grad(), cap:
        model(toks)
    st = BandStats(model, sites=sites).update(toks)
    worst = {"mean_norm": 0.0, "mean_vector": 0.0, "second_moment": 0.0}
    for site in sites:
        x = torch.stack([cap[layer, site][0].double() for layer in st.layers])  # [L, pos, h, B, 2]
        ref = {
            "mean_norm": band_norms(x).mean(1),
            "mean_vector": x.mean(1),
            "second_moment": torch.einsum("lthbc,lthbd->lhbcd", x, x) / x.shape[1],
        }
        for k, r in ref.items():
            got = getattr(st, k)(site).cpu()
            rel = ((got - r).abs().max() / r.abs().max()).item()
            worst[k] = max(worst[k], rel)

    print(
        f"{args.tokens} tokens, {model.cfg.n_layers} layers, sites {sites}, device {args.device}, "
        f"threads {torch.get_num_threads()}, median of {args.repeat}"
    )
    for k, v in med.items():
        print(
            f"  {k:12s} {v * 1000:8.1f} ms   ratio to forward {v / med['forward']:.3f}"
            f"   to blocks only {v / med['blocks only']:.3f}"
        )
    for k, v in worst.items():
        print(f"  BandStats.{k} vs float64 reference: max |error| / max |value| = {v:.2e}")
    out = {f"ratio_{k}": v / med["forward"] for k, v in med.items()}
    out["ratio_BandStats_to_blocks"] = med["BandStats"] / med["blocks only"]
    out.update({f"relerr_{k}": v for k, v in worst.items()})
    return out


if __name__ == "__main__":
    main()
