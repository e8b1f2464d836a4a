# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: about 30 s
# ---

# %% [markdown]
# # rope_interp quickstart
#
# Rotary embeddings (RoPE) rotate each 2-D plane — a **band** — of every query and key by an angle
# θᵢ·position. This notebook shows, on the embedded SmolLM2-135M-Instruct, how to
#
# 1. list the bands and their frequencies,
# 2. capture queries and keys band by band,
# 3. decompose attention scores exactly by band, and see which bands a head relies on.
#
# New to rope_interp? Start with `00_what_does_my_model_do`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

import rope_interp as ri

torch.set_grad_enabled(False)


def show(fig):
    """Display a figure once, whatever matplotlib's backend (rope_interp draws its plots off-screen)."""
    plt.close(fig)
    return fig


model = ri.load_model("smollm2-135m")

# %% [markdown]
# ## 1. The bands
# `RotaryBands` reads frequencies from the model's own sin/cos tables, so any scaling is included.
# Band 0 turns once per 2π ≈ 6.3 tokens; the last band needs over 300,000 tokens for one turn.

# %%
spec = ri.RotaryBands.from_model(model)
print(spec.describe())
spec.to_dataframe(context_length=2048).iloc[::4]

# %% [markdown]
# ## 2. Capture q and k per band
# `BandCapture` keeps only what you ask for, as `[batch, pos, head, band, 2]`. Rotation keeps each
# band's norm, so `‖q_i‖` is the same before and after rotation.

# %%
text = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
tokens = model.to_tokens(text)
with ri.BandCapture(model, layers=[5], sites=["q", "rot_q", "rot_k"]) as cap:
    model(tokens)
q_pre, q_rot = cap[5, "q"], cap[5, "rot_q"]
print("q per band:", tuple(q_rot.shape))
print(
    "norms equal before/after rotation:",
    torch.allclose(ri.band_norms(q_pre), ri.band_norms(q_rot), atol=1e-4),
)

# %% [markdown]
# ## 3. Exact per-band decomposition of the attention scores
# `band_scores(...).per_band` is `[batch, head, band, q_pos, k_pos]`; summed over bands (plus the
# non-rotary remainder, zero here) it equals `hook_attn_scores`.

# %%
layer = 5
bs = ri.band_scores(model, tokens, layer)
_, cache = model.run_with_cache(
    tokens, names_filter=[ri.attn_hook(layer, "attn_scores")], stop_at_layer=layer + 1
)
ref = cache[ri.attn_hook(layer, "attn_scores")]
visible = torch.isfinite(ref)
print("max |sum of band terms - hook_attn_scores| =", (bs.total()[visible] - ref[visible]).abs().max().item())

# %% [markdown]
# Which bands carry each head's scores? The mean |term| per head and band, as a share of the head's total:

# %%
share = bs.mean_abs()
share = share / share.sum(1, keepdim=True)
fig, ax = plt.subplots(figsize=(9, 3.5))
im = ax.imshow(share.numpy(), aspect="auto", cmap="viridis")
ax.set_xlabel("band (0 = highest frequency)")
ax.set_ylabel("head")
ax.set_title(f"Layer {layer}: share of mean |score term| per band")
fig.colorbar(im, ax=ax)
show(fig)

# %% [markdown]
# Dropping bands analytically: the layer's pattern without its 8 highest-frequency bands, compared with
# the full pattern (only this layer changes; the rest of the model is not re-run).

# %%
full, no_high = bs.pattern(), bs.pattern(drop=range(8))
tv = 0.5 * (full - no_high).abs().sum(-1).mean(dim=(0, 2))
for h, d in enumerate(tv.tolist()):
    print(f"head {h}: mean total-variation change without bands 0-7 = {d:.3f}")
