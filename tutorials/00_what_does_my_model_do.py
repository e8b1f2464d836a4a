# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
#   rope_interp:
#     cpu_runtime: 1-2 minutes
# ---

# %% [markdown]
# # What does my model do with each frequency?
#
# A rotary model (Llama, Qwen, Mistral, SmolLM, ...) rotates each 2-D slice — a **band** — of every query
# and key by an angle θᵢ·position. Band 0 turns fastest; the last band barely turns at all. In ten
# minutes, on the small SmolLM2-135M that ships with rope_interp, we will
#
# 1. list the bands and their frequencies,
# 2. find a head that reads position (it attends to the previous token) and see which bands it uses,
# 3. break it by removing those bands, and look at its attention before and after,
# 4. stop the slowest bands of the whole model from rotating (p-RoPE) and read the loss table.
#
# Every claim in the text is checked by an `assert` in the cell below it: if the model or the library
# changed, the notebook would stop there.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
import torch

import rope_interp as ri
from rope_interp.analyses import positional_heads
from rope_interp.view import panels as vis

torch.set_grad_enabled(False)


def show(fig):
    """Display a figure once, whatever matplotlib's backend (rope_interp draws its plots off-screen)."""
    plt.close(fig)
    return fig


model = ri.load_model("smollm2-135m")  # offline; the first load converts the GGUF (~30 s), then ~3 s
tokens = model.to_tokens(ri.data.load_text())[:, :128]  # 128 tokens of the bundled corpus (Austen)
tokens.shape

# %% [markdown]
# ## 1. The bands
# `RotaryBands` reads the frequencies from the model's own sin/cos tables. SmolLM2 has 64 dims per head, so
# 32 bands. Band 0 turns by one radian per token (a full turn every 2π ≈ 6.3 tokens); band 31 would need
# over 400,000 tokens for one turn — far beyond the 2,048-token context.

# %%
spec = ri.RotaryBands.from_model(model)
print(spec.describe())
table = spec.to_dataframe(context_length=2048)
freqs = spec.freqs[0]
assert spec.n_bands == 32 and spec.uniform_across_layers
assert abs(table.loc[0, "theta_rad_per_token"] - 1.0) < 1e-6
assert bool((freqs[1:] < freqs[:-1]).all()), "band 0 is the fastest, frequencies fall band by band"
assert table.loc[31, "wavelength_tokens"] > 400_000 and table.loc[31, "cycles_over_2048"] < 0.01
table[["theta_rad_per_token", "wavelength_tokens", "cycles_over_2048"]].iloc[::4]

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(table.index, table["wavelength_tokens"], color="tab:blue")
ax.axhline(2048, color="tab:red", ls="--", label="context length 2,048")
ax.set_yscale("log")
ax.set_xlabel("band (0 = highest frequency)")
ax.set_ylabel("tokens per full turn")
ax.set_title("SmolLM2-135M: wavelength of each rotary band")
ax.legend()
show(fig)

# %% [markdown]
# ## 2. A positional head
# `positional_heads` scores every head of the layers you give it by its mean attention on the same token
# (diagonal) and on the previous token, and splits the score margin of that token band by band with
# rope_interp's exact decomposition. In layer 16, head 0 puts three quarters of its attention on the
# previous token, and most of what makes that token win comes from the four fastest bands.

# %%
heads = positional_heads(model, tokens, layers=[16], threshold=0.5, ablate_k=None, progress=False)
layer, head, offset, score = heads.found()[0]
margin = heads.margin[
    0, head, heads.offsets.index(1)
]  # [band]: how much each band favours the previous token
top4_share = float(margin[:4].sum() / margin.sum())
print(f"L{layer}H{head}: {score:.0%} of its attention on the previous token (offset {offset})")
print(f"bands 0-3 give {top4_share:.0%} of the previous token's score margin")
assert (layer, head, offset) == (16, 0, 1) and 0.7 < score < 0.85  # "three quarters"
assert top4_share > 0.5 and int(margin.argmax()) == 0

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(range(spec.n_bands), margin.numpy(), color=["tab:red"] * 4 + ["tab:gray"] * (spec.n_bands - 4))
ax.set_xlabel("band (0 = highest frequency)")
ax.set_ylabel("mean score margin")
ax.set_title(f"L{layer}H{head}: what each band adds to the previous token's score")
show(fig)

# %% [markdown]
# ## 3. Break it
# `ablate_bands(..., mode="zero")` zeroes chosen bands while the model runs, and puts the model back when
# the `with` block ends. We zero bands of this head's **query** only (`target="q"`): a band's score term is
# qᵢ·kᵢ, so that removes the term for this head alone — its key is shared with other heads (grouped-query
# attention). Without its four fastest bands the head no longer finds the previous token; without its four
# slowest bands it does not care.

# %%
pattern_hook = ri.attn_hook(layer, "pattern")


def previous_token_attention(intervention=None):
    """Mean attention of L16H0 on the previous token (positions 1..), with an optional intervention."""
    if intervention is None:
        _, cache = model.run_with_cache(tokens, names_filter=pattern_hook, stop_at_layer=layer + 1)
    else:
        with intervention:
            _, cache = model.run_with_cache(tokens, names_filter=pattern_hook, stop_at_layer=layer + 1)
    return float(cache[pattern_hook][0, head].diagonal(-1).mean())  # queries 1.. on keys 0..


fastest, slowest = range(4), range(spec.n_bands - 4, spec.n_bands)
clean = previous_token_attention()
no_fast = previous_token_attention(
    ri.ablate_bands(model, fastest, layers=[layer], heads=[head], target="q", mode="zero")
)
no_slow = previous_token_attention(
    ri.ablate_bands(model, slowest, layers=[layer], heads=[head], target="q", mode="zero")
)
print(
    f"attention on the previous token: clean {clean:.2f}, bands 0-3 zeroed {no_fast:.3f}, bands 28-31 zeroed {no_slow:.2f}"
)
assert abs(clean - score) < 1e-4  # the same number positional_heads reported
assert no_fast < 0.05 * clean, "removing the four fastest bands breaks the head"
assert no_slow > 0.8 * clean, "removing the four slowest bands leaves it working"
assert abs(previous_token_attention() - clean) < 1e-6, "the model is restored after each with block"

# %% [markdown]
# ## 4. See it
# `vis.ablation_view` draws the head's attention (rows: queries, columns: keys) clean, with the bands removed
# from this layer's scores (exact, analytic), and through the model with our intervention, plus each
# difference (blue: more attention than clean, red: less). Hover a cell for its value. The clean pattern is a
# bright line just below the diagonal — the previous token — and it is gone in the other columns.

# %% tags=["view"]
view = vis.ablation_view(
    model,
    tokens[:, :24],
    layer=layer,
    bands=fastest,
    heads=[head],
    hooks=ri.ablate_bands(model, fastest, layers=[layer], heads=[head], target="q", mode="zero"),
    hooks_label="bands 0-3 zeroed in q",
)
assert len(view.panels) == 5  # clean, analytic and its difference, intervened and its difference
view  # the page is self-contained: view.save("view.html") opens offline

# %% [markdown]
# ## 5. The whole model: p-RoPE and the loss table
# p-RoPE (Barbero et al., "Round and Round We Go!") keeps the fastest fraction p of the bands and stops the
# others from rotating. `prope(model, p)` does it at inference, on every layer, with no retraining. On this
# text the slowest half of the bands can stop rotating at no cost; stopping three quarters costs a few tenths
# of a nat per token, and removing rotation altogether (p = 0) over two nats. Zeroing the 8 fastest bands
# everywhere hurts about as much as no rotation at all — and zeroing the 8 *slowest* hurts most: they hardly
# rotate over 128 tokens, so what they carry is content, not position.


# %%
def loss(intervention=None):
    if intervention is None:
        return model(tokens, return_type="loss").item()
    with intervention:
        return model(tokens, return_type="loss").item()


rows = {"clean model": loss()}
for p in (1.0, 0.75, 0.5, 0.25, 0.0):
    rows[f"p-RoPE p = {p:.2f}"] = loss(ri.prope(model, p))
rows["bands 0-7 zeroed, every layer"] = loss(ri.ablate_bands(model, range(8), mode="zero"))
rows["bands 24-31 zeroed, every layer"] = loss(ri.ablate_bands(model, range(24, 32), mode="zero"))
losses = pd.DataFrame({"loss (nats/token)": rows}).round(3)
losses["change"] = (losses["loss (nats/token)"] - rows["clean model"]).round(3)
clean_loss = rows["clean model"]
assert abs(rows["p-RoPE p = 1.00"] - clean_loss) < 1e-4, "p = 1 is the model as trained"
for p in ("0.75", "0.50"):
    assert abs(rows[f"p-RoPE p = {p}"] - clean_loss) < 0.05, f"p = {p} costs nothing here"
assert 0.2 < rows["p-RoPE p = 0.25"] - clean_loss < 1.0
assert rows["p-RoPE p = 0.00"] > clean_loss + 2.0
no_fast8, no_slow8 = rows["bands 0-7 zeroed, every layer"], rows["bands 24-31 zeroed, every layer"]
assert abs(no_fast8 - rows["p-RoPE p = 0.00"]) < 0.5
assert no_slow8 > no_fast8 + 0.5, "zeroing the slowest bands hurts most"
losses

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.barh(losses.index[::-1], losses["loss (nats/token)"][::-1], color="tab:blue")
ax.axvline(clean_loss, color="k", lw=1, label="clean")
ax.set_xlabel("loss (nats/token), 128 tokens")
ax.legend(loc="lower right")
show(fig)

# %% [markdown]
# ## Where next
# * `01_quickstart`: capture q/k per band, and the exact band decomposition of attention scores.
# * `02_usage_and_positional_heads`: which bands carry the q/k norm, positional heads in more layers.
# * `05_ablation_prope_patching`: sweeps over layers and bands, band patching, more views.
# * `rope-interp report --out report`: all of it as one offline HTML page.
