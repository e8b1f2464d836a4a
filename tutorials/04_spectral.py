# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
# ---

# %% [markdown]
# # Spectral view (Ruscio et al., "Beyond position")
#
# RoPE turns each band of q/k into an oscillation over positions; nonlinearities create harmonics; phase
# alignment between q and k sharpens attention. We check all three on SmolLM2, starting with the synthetic
# facts they rest on.

# %%
import matplotlib

matplotlib.use("Agg")
import torch

import rope_interp as ri
from rope_interp import analyses

torch.set_grad_enabled(False)

# %% [markdown]
# ## Synthetic checks
# Gaussian q, k: no decay of E[qᵀR^r k] with distance r (Barbero Prop. 3.2); all-ones q, k decay.
# A diagonal head built from a high-frequency band is sharper than from a low one. A nonlinearity of
# cos(θm) has energy at 2θ, 3θ...

# %%
print(analyses.rotary_decay())
print(analyses.diagonal_head_sharpness())
print(analyses.nonlinearity_harmonics())

# %% [markdown]
# ## On the model

# %%
model = ri.load_model("smollm2-135m")
tokens = model.to_tokens(ri.data.load_text())[:, :512]
layers = [0, 1, 15, 29]
att = analyses.attention_spectra(model, tokens, layers=layers)
print(att.to_dataframe().groupby("layer")[["low", "mid", "high"]].mean().round(3))
att.plot().savefig("attention_spectra.png", dpi=80)

bands = analyses.band_spectra(model, tokens, layers=[1])
bands.plot().savefig("band_spectra.png", dpi=80)

phase = analyses.phase_alignment(model, tokens, layers=layers)
phase.plot().savefig("phase_alignment.png", dpi=80)
print(phase.to_dataframe().head())
