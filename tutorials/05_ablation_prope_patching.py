# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: about 1 minute
# ---

# %% [markdown]
# # Band ablation, p-RoPE and band patching — with interactive attention views
#
# Everything that changes the model is a context manager (hooks removed in `finally`) that also offers
# `.fwd_hooks()` for `model.run_with_hooks`.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

import rope_interp as ri
from rope_interp.intervene.ablate import ablate_bands, prope
from rope_interp.sweep.patching import logit_diff, patch_sweep
from rope_interp.sweep.tiers import direct_effect_sweep
from rope_interp.view import panels as vis

torch.set_grad_enabled(False)


def show(fig):
    """Display a figure once, whatever matplotlib's backend (rope_interp draws its plots off-screen)."""
    plt.close(fig)
    return fig


model = ri.load_model("smollm2-135m")
tokens = model.to_tokens(ri.data.load_text())[:, :128]

# %% [markdown]
# ## Zero-ablate bands
# The 8 highest-frequency bands of q and k, in every layer, vs the 8 lowest:

# %%
base = model(tokens, return_type="loss").item()
with ablate_bands(model, bands=range(8), mode="zero"):
    top = model(tokens, return_type="loss").item()
with ablate_bands(model, bands=range(24, 32), mode="zero"):
    bottom = model(tokens, return_type="loss").item()
print(f"loss: clean {base:.3f}, highest 8 bands zeroed {top:.3f}, lowest 8 zeroed {bottom:.3f}")

# %% [markdown]
# ## p-RoPE at inference
# Stop the lowest (1 − p) fraction of bands from rotating (p = 1 is the model as trained):

# %%
for p in (1.0, 0.75, 0.5, 0.0):
    with prope(model, p):
        print(f"p = {p:.2f}: loss {model(tokens, return_type='loss').item():.3f}")

# %% [markdown]
# ## Analytic direct effect: which band moves which head's pattern, all bands at once, no extra forward

# %%
de = direct_effect_sweep(model, tokens, layers=[1, 2])
v, i = de.values[0].flatten().topk(3)
print(
    "layer 1, biggest (head, band) effects:",
    [(int(j) // de.values.shape[2], int(j) % de.values.shape[2]) for j in i],
)
show(de.plot(title="Pattern change (TV) when one band is removed"))

# %% [markdown]
# ## Band patching on a prompt pair

# %%
clean, corrupted = model.to_tokens("The capital of France is"), model.to_tokens("The capital of Italy is")
metric = logit_diff(model.to_single_token(" Paris"), model.to_single_token(" Rome"))
res = patch_sweep(
    model, clean, corrupted, metric, ("layer", "band"), layers=[0, 5, 10, 15], bands=range(0, 32, 4)
)
print(res.to_dataframe().sort_values("effect", ascending=False).head())

# %% [markdown]
# ## See it: clean vs ablated attention (interactive, saved as an offline HTML page)

# %% tags=["view"]
view = vis.ablation_view(model, tokens[:, :48], layer=1, bands=range(8), hooks=ablate_bands(model, range(8)))
view.save("ablation_view.html")  # a self-contained page: opens offline
view  # in a notebook this draws the circuitsvis panels
