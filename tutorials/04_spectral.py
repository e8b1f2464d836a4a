# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: about 1 minute
# ---

# %% [markdown]
# # Spectral view: which Ruscio et al. says what, and how to test it
#
# arXiv 2410.18067 is two papers. **v1/v2** (2024) claim that RoPE's oscillations pass through FFN
# nonlinearities and come out with harmonics, and that q–k phase alignment sharpens attention — for a model
# that rotates the token embedding itself. **v3/v4** (ACL 2025) drop both claims and study attention heads as
# wavelets. In a Llama-style model (SmolLM2) only q and k rotate, so we test the v1/v2 claims in three steps:
#
# 1. is there a θ_i carrier outside q·k at all? (`carrier_survey`: sink attention and MLP input)
# 2. does the real FFN make harmonics when driven by one? (`ffn_harmonics`: synthetic rotating input)
# 3. does the phase of one band cause sharpness? (`causal_alignment`: shift it by Δφ, with controls)
#
# and keep the v3/v4 attention-row spectra (`attention_spectra`).

# %%
import torch

import rope_interp as ri
from rope_interp import analyses
from rope_interp.analyses.alignment import sharpness

torch.set_grad_enabled(False)

# %% [markdown]
# ## The mechanism, without a model
# A pointwise nonlinearity of a·cos(θm) + b has energy at 2θ, 3θ, ... (a linear map has none).

# %%
h = analyses.nonlinearity_harmonics("silu")
print("silu(2 cos θm + 0.5): energy share at θ, 2θ, 3θ, 4θ:", [f"{float(x):.2e}" for x in h.share])

# %%
model = ri.load_model("smollm2-135m")
tokens = model.to_tokens(ri.data.load_text())[:, :256]

# %% [markdown]
# ## 1. Look for the carrier
# A line at θ_i (≥ 10× the local median of the PSD over positions) in each head's attention to the first
# key, and in the MLP input — on the text, on one repeated token, on random tokens.

# %%
carrier = analyses.carrier_survey(model, tokens, n_pos=256, layers=[0, 2], progress=False)
for cond, s in carrier.summary().items():
    print(
        f"{cond:9s} sink lines {s['sink_lines']}/{s['sink_checked']}, MLP input {s['mlp_in_lines']}/{s['mlp_in_checked']}"
    )
carrier.plot().savefig("carrier.png", dpi=80)

# %% [markdown]
# ## 2. Harmonic generation in the real FFN
# Layer 1's RMSNorm + MLP, driven with x̄ + a(cos θm·u + sin θm·v), u, v the residual directions head 0's W_Q
# reads into one band (dashed in the figure: a random pair). A slope k of the k-th harmonic against a is the
# polynomial regime of a smooth nonlinearity.

# %%
ffn = analyses.ffn_harmonics(model, tokens, layer=1, head=0, progress=False)
print({k: v for k, v in ffn.summary().items() if "slope" in k or "rel_" in k})
ffn.plot().savefig("ffn_harmonics.png", dpi=80)

# %% [markdown]
# ## 3. Alignment, causally
# The sharpest head of layer 1 (largest weight off the sink key): shift the q–k angle of its most-used bands
# by Δφ, against its least-used band and a rotation of the same angle in a random plane.

# %%
_, cache = model.run_with_cache(tokens[:, :128], stop_at_layer=2, names_filter="blocks.1.attn.hook_pattern")
pat = cache["blocks.1.attn.hook_pattern"][0]
head = int(torch.stack([sharpness(pat[h])[1] for h in range(pat.shape[0])]).argmax())
align = analyses.causal_alignment(
    model, tokens[:, :128], layer=1, head=head, phases=torch.linspace(0, torch.pi, 5), progress=False
)
print(align.summary())
align.plot().savefig("causal_alignment.png", dpi=80)

# %% [markdown]
# ## The v3/v4 measure: attention rows as signals
# Energy of each attention row's spectrum in the low/mid/high parts of Nyquist, by layer.

# %%
att = analyses.attention_spectra(model, tokens, layers=[0, 15, 29], progress=False)
print(att.to_dataframe().groupby("layer")[["low", "mid", "high"]].mean().round(3))
att.plot().savefig("attention_spectra.png", dpi=80)
