# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: about 1 minute
# ---

# %% [markdown]
# # Rotary offset features (Jonasson) and massive values (Jin et al.)
#
# Some bands carry large q/k components that point the same way at every token. A band's contribution
# ‖q̄_i‖‖k̄_i‖cos(φ_i + θ_i Δ) keeps one sign over every causal offset Δ ∈ [0, L−1] only if θ_i(L−1) < π —
# *our derivation* of which bands can host such features (the paper's exact inequalities were not available to us).
# For SmolLM2 (θ base 1e5, 64 dims) and L = 2048 this admits the bands from about 19 upward.

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
tokens = model.to_tokens(ri.data.load_text())[:, :768]
spec = ri.RotaryBands.from_model(model)
pred = analyses.predicted_bands(spec.freqs[0], 2048)
print("bands that can keep one sign over 2048 tokens:", pred.nonzero().flatten().tolist())

# %%
layers = [1, 5, 15, 29]
off = analyses.offset_features(model, tokens, layers=layers, context_length=2048)
print(off.table().to_string())
show(off.plot())

# %% [markdown]
# ## Massive values
# M[h, d] = ‖Q[:, h, d]‖ over the sequence; a dim is massive if M > 5·mean(M). Mean-ablating them (in q and k)
# is compared with ablating as many random non-massive dims. Jin et al. ablate every layer; ablating only a
# few layers barely moves the loss, so we take them all here.

# %%
mv = analyses.massive_values(model, tokens)
counts = mv.band_counts("q")  # [n_bands + 1]: the last slot counts pass-through dims (none here)
print("massive (layer, head, dim) entries per band (q):", counts[:-1].tolist())
abl = analyses.massive_ablation(model, tokens[:, :256], mv, n_control=1)
print(abl.to_dataframe().to_string())
