# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: about 2 minutes
# ---

# %% [markdown]
# # Frequency usage and positional heads (Barbero et al., "Round and Round We Go")
#
# Two findings to check on SmolLM2-135M:
#
# 1. q/k norm concentrates in the **lowest** frequencies (values, which RoPE never touches, are the control);
# 2. the **highest** frequencies build positional heads — diagonal (attend to self) and previous-token heads —
#    so zeroing a positional head's top bands should break it while zeroing its bottom bands should not.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

import rope_interp as ri
from rope_interp import analyses

torch.set_grad_enabled(False)


def show(fig):
    """Display a figure once, whatever matplotlib's backend (rope_interp draws its plots off-screen)."""
    plt.close(fig)
    return fig


model = ri.load_model("smollm2-135m")
tokens = model.to_tokens(ri.data.load_text())[:, :512]
layers = [0, 1, 2, 15, 29]

# %% [markdown]
# ## Frequency usage
# Mean ‖q_i‖, ‖k_i‖, ‖v_i‖ per layer × head × band, streamed with constant memory.

# %%
usage = analyses.frequency_usage(model, tokens, layers=layers, start_pos=1)
print("lowest-quarter / highest-quarter mean q norm per layer:", usage.low_high_ratio("q").numpy().round(2))
print("same ratio for values (control):                      ", usage.low_high_ratio("v").numpy().round(2))
show(usage.plot())

# %% [markdown]
# ## Positional heads
# Scores are the mean attention on offset 0 (diagonal) and 1 (previous token); the margin of the target key is
# split band by band with the exact decomposition; the causal check zeroes the 4 highest vs 4 lowest bands of
# that head's q and k.

# %%
heads = analyses.positional_heads(model, tokens, layers=layers, threshold=0.4, ablate_k=4)
print(heads.to_dataframe().sort_values("score", ascending=False).head(8).to_string())
for c in heads.causal:
    print(
        f"L{c['layer']}H{c['head']} offset {c['offset']}: score {c['score']:.2f}, survives "
        f"{c['top_k_survival']:.0%} with top-{c['k']} bands zeroed, {c['bottom_k_survival']:.0%} with bottom-{c['k']}"
    )
show(heads.plot())
