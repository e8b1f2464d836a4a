"""p-RoPE sweep: language-model loss as the fraction p of rotating bands varies (Barbero et al.).

p-RoPE keeps the highest fraction p of frequencies and stops the lowest (1 - p) from rotating
(p = 1 is the model as trained, p = 0 is NoPE). The model was trained with full RoPE, so this
measures how much it relies on the low bands' rotation — not what training with p-RoPE would give.

    python scripts/prope_sweep.py --out out/prope            # embedded SmolLM2, bundled corpus
    python scripts/prope_sweep.py --quick                    # a few p values on 256 tokens
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import rope_interp as ri
from rope_interp.data import load_text
from rope_interp.intervene.ablate import prope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens of the bundled corpus to score")
    ap.add_argument("--out", default="out/prope")
    ap.add_argument("--quick", action="store_true", help="p in {0, 0.5, 0.75, 1} on 256 tokens")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = ri.load_model(args.model, device=args.device)
    n_tokens = 256 if args.quick else args.tokens
    tokens = model.to_tokens(load_text())[:, :n_tokens]
    n_bands = ri.RotaryBands.from_model(model).n_bands
    ps = [0.0, 0.5, 0.75, 1.0] if args.quick else [i / 8 for i in range(9)]

    rows = []
    for p in tqdm(ps, desc="p-RoPE"):
        with prope(model, p):
            loss = model(tokens, return_type="loss").item()
        rows.append({"p": p, "rotating_bands": round(p * n_bands), "loss": loss})
        print(f"p={p:.3f}  rotating bands={round(p * n_bands):2d}/{n_bands}  loss={loss:.4f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prope.json").write_text(json.dumps(rows, indent=1))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["p"] for r in rows], [r["loss"] for r in rows], marker="o")
    ax.set_xlabel("p (fraction of highest-frequency bands still rotating)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"p-RoPE at inference on {model.cfg.model_name}, {tokens.shape[1]} tokens")
    fig.savefig(out / "prope.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out / 'prope.json'} and {out / 'prope.png'}")


if __name__ == "__main__":
    main()
