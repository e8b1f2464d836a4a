"""Cost of the load-time check (``rope_interp.model.load.check_against_source``), in one process.

    python scripts/bench_load.py [--embedded]

Tiny HF directory: median of 5 ``load_model(dir)`` with the check against 5 with it switched off.
``--embedded``: the embedded SmolLM2-135M's conversion (GGUF → transformers → HookedTransformer, what a
first load does) against the check itself on the converted model, and the cached load (3 each) with and
without its check against the GGUF header.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import torch


def _median(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedded", action="store_true", help="also time the embedded model's conversion")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from rope_interp import load_model
    from rope_interp.model import load as load_mod
    from rope_interp.model.testing import tiny_hf_dir

    path = str(tiny_hf_dir(tempfile.mkdtemp() + "/tiny"))
    check = load_mod.check_against_source
    with_check = _median(lambda: load_model(path))
    load_mod.check_against_source = lambda *a, **k: None
    try:
        without = _median(lambda: load_model(path))
    finally:
        load_mod.check_against_source = check
    print(
        f"tiny dir: load {without * 1e3:.1f} ms, with the check {with_check * 1e3:.1f} ms "
        f"(ratio {with_check / without:.3f})"
    )
    if args.embedded:
        t0 = time.perf_counter()
        gguf = load_mod.embedded_gguf_path()
        hf, tok = load_mod.load_hf_from_gguf(gguf)
        model = load_mod._hooked_from_hf(hf, tok, torch.device("cpu"), torch.float32, str(gguf))
        convert = time.perf_counter() - t0
        cost = _median(lambda: check(model, hf, str(gguf), fix=""), n=3)
        gcheck = load_mod.check_against_gguf
        cached = _median(lambda: load_model("smollm2-135m"), n=3)
        load_mod.check_against_gguf = lambda *a, **k: None
        try:
            cached_without = _median(lambda: load_model("smollm2-135m"), n=3)
        finally:
            load_mod.check_against_gguf = gcheck
        print(
            f"embedded, cached: load {cached_without:.2f} s, with the header check {cached:.2f} s "
            f"(ratio {cached / cached_without:.3f})"
        )
        print(
            f"embedded: conversion {convert:.2f} s, the check {cost * 1e3:.0f} ms "
            f"(ratio {(convert + cost) / convert:.3f})"
        )


if __name__ == "__main__":
    main()
