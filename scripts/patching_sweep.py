"""Band activation patching on a clean/corrupted prompt pair → CSV + heatmap.

Clean "The capital of France is" vs corrupted "The capital of Italy is"; metric: logit of " Paris"
minus logit of " Rome" at the last position. Each cell patches one band of q and k of one layer from
the clean run into the corrupted run; a value near the clean logit difference means that band
carries the information.

    python scripts/patching_sweep.py --out out/patching
    python scripts/patching_sweep.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch

import rope_interp as ri
from rope_interp.intervene.modes import METHODS
from rope_interp.sweep.patching import logit_diff
from rope_interp.sweep.spec import SweepSpec, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clean", default="The capital of France is")
    ap.add_argument("--corrupted", default="The capital of Italy is")
    ap.add_argument("--answer", default=" Paris")
    ap.add_argument("--wrong", default=" Rome")
    ap.add_argument("--method", choices=METHODS, default="exact")
    ap.add_argument("--out", default="out/patching")
    ap.add_argument("--quick", action="store_true", help="4 layers, every 4th band")
    args = ap.parse_args()

    model = ri.load_model(args.model, device=args.device)
    clean, corrupted = model.to_tokens(args.clean), model.to_tokens(args.corrupted)
    answer = model.to_single_token(args.answer)
    wrong = model.to_single_token(args.wrong)
    metric = logit_diff(answer, wrong)
    with torch.no_grad():
        print(
            f"logit diff: clean {metric(model(clean)).item():.3f}, corrupted {metric(model(corrupted)).item():.3f}"
        )
    n = model.cfg.n_layers
    layers = [0, n // 3, 2 * n // 3, n - 1] if args.quick else None
    bands = list(range(0, 32, 4)) if args.quick else None
    spec = SweepSpec(
        tokens=corrupted.tolist(),
        clean_tokens=clean.tolist(),
        metric={"name": "logit_diff", "answer": int(answer), "wrong": int(wrong)},
        method=args.method,
        layers=layers,
        bands=bands,
    )
    res = spec.run(model, progress=True)  # = patch_sweep(model, clean, corrupted, metric, ...)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.to_dataframe().to_csv(out / "patching.csv", index=False)
    write_result(res, out / "patching.spec.json")  # what was done, to rerun: rope-interp patch --spec
    fig = res.plot(title=f"Patching clean→corrupted per layer × band ({args.method})")
    fig.savefig(out / "patching.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out / 'patching.csv'}, patching.png and patching.spec.json")


if __name__ == "__main__":
    main()
