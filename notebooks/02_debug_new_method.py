# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Debugging a new customization method
#
# You are building a customization method and want to know *where* along the text path it moves the model away
# from its baseline: at the token embedding, inside the text encoder, or only at the keys/values the UNet's
# cross-attention reads — and whether it touches only the concept or the whole prompt.
#
# No training script or artifact format needed: edit a pipeline in memory and hand it to
# `Probe(base_pipe, {"mine": my_pipe}, concepts)`. Here, two hand-made "methods" on the embedded toy model:
#
# * **emb**: a new token `<mine>` whose embedding is hand-edited (the class word's, nudged) — Textual Inversion-like;
# * **emb_kv**: the same embedding, plus a patched cross-attention projection (a rank-2 update of `to_k`/`to_v` at
#   one attn2 layer) — a Custom Diffusion-like method with a bug-sized footprint you want to find again.

# %%
import copy
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from diffusers import StableDiffusionPipeline

from alignit_probe import Concept, Probe, build_toy, compare, layer_label

work = Path(tempfile.mkdtemp(prefix="alignit-debug-"))
base = StableDiffusionPipeline.from_pretrained(build_toy(work / "toy"))  # your baseline, in memory
base.set_progress_bar_config(disable=True)

# %% [markdown]
# ## Two methods, made by hand
#
# Each customized pipeline is a copy of the baseline (never the baseline object itself).

# %%
TOKEN, CLASS = "<mine>", "cat"
PATCHED = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"  # the layer the second method patches
gen = torch.Generator().manual_seed(0)


def with_new_token(pipe):
    """Add TOKEN to a copy of pipe, its embedding = the class word's plus a small nudge."""
    pipe = copy.deepcopy(pipe)
    pipe.tokenizer.add_tokens(TOKEN)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)  # the row is set next
    emb = pipe.text_encoder.get_input_embeddings().weight
    cls = emb[pipe.tokenizer.convert_tokens_to_ids(CLASS + "</w>")]
    with torch.no_grad():
        emb[pipe.tokenizer.convert_tokens_to_ids(TOKEN)] = cls + 0.3 * cls.norm() / cls.numel() ** 0.5 * torch.randn(
            cls.shape, generator=torch.Generator().manual_seed(1)
        )
    return pipe


emb = with_new_token(base)
emb_kv = with_new_token(base)  # same token, same vector …
attn = emb_kv.unet.get_submodule(PATCHED)
with torch.no_grad():  # … plus a rank-2 update of this layer's key and value projections
    for proj in (attn.to_k, attn.to_v):
        w = proj.weight
        u, v = torch.randn(w.shape[0], 2, generator=gen), torch.randn(2, w.shape[1], generator=gen)
        w += 0.5 * w.norm() / (u @ v).norm() * (u @ v)

# %% [markdown]
# ## Record both against the baseline
#
# One store, two customized models; concept tokens `<mine> cat` pair with the baseline's `cat`, every other word
# with itself.

# %%
probe = Probe(base, {"emb": emb, "emb_kv": emb_kv}, [Concept(TOKEN, CLASS)], progress=False)
prompts = [
    f"photo of a {TOKEN} {CLASS} on the beach",
    f"a {TOKEN} {CLASS} wearing a red hat",
    f"a {TOKEN} {CLASS} in the snow",
]
rows = compare(probe.record(prompts, work / "debug.zarr"))
rel = rows[(rows.metric == "relative_l2") & rows.role.isin(["concept", "context"])].copy()
rel.pivot_table(index=["model", "stage"], columns="role", values="value", sort=False).round(4)

# %% [markdown]
# ## Where does each method drift first?
#
# The first stage (in data-flow order) where a role's distance to the baseline is above 1e-6. The embedding edit
# shows up at the token embedding — on the concept only — and reaches the context tokens in the first encoder layer
# (causal self-attention: every later token attends to the edited one). Both methods look the same there: the
# patched projection has no effect on the text encoder.

# %%
first = (
    rel[rel.value > 1e-6]
    .groupby(["model", "role"], sort=False)
    .head(1)[["model", "role", "stage", "layer", "value"]]
    .rename(columns={"stage": "first stage that drifts"})
    .reset_index(drop=True)
)
first

# %% [markdown]
# ## The figure: drift along the text path, concept vs context
#
# x: token embedding, each encoder layer, the encoder output, then the keys and values of every attn2 layer in UNet
# order. The two methods coincide everywhere but at the patched layer, where `emb_kv` jumps — for the concept *and*
# the context: a projection change moves every token that passes through it.


# %%
def step(stage, layer):
    if isinstance(layer, str):  # an attn2 path, labeled as compare prints it (up_blocks.1.attentions.0… → up1.0)
        return f"{stage[0].upper()} {layer_label(layer)}"
    return stage if layer is None else f"layer {layer_label(layer)}"


rel["step"] = [step(s, layer) for s, layer in zip(rel.stage, rel.layer)]
steps = list(dict.fromkeys(rel.step))
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), sharey=True)
for ax, role in zip(axes, ["concept", "context"]):
    for model, style in [("emb", "o-"), ("emb_kv", "s--")]:
        r = rel[(rel.model == model) & (rel.role == role)]
        x = [steps.index(s) for s in r.step]
        ax.plot(x, r.value, style, ms=4, label=model)
        ax.fill_between(x, r.ci_low, r.ci_high, alpha=0.2)
    patched = [i for i, s in enumerate(steps) if s.endswith(layer_label(PATCHED))]
    for i in patched:
        ax.axvline(i, color="red", lw=0.8, ls=":")
    ax.set_xticks(range(len(steps)), steps, rotation=75, fontsize=7)
    ax.set_title(f"{role} tokens (red: the patched layer)")
    ax.legend()
axes[0].set_ylabel("relative L2 to baseline")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Pinpoint the patch
#
# Subtract the embedding-only method's drift from the other's, layer by layer: the extra drift is zero everywhere
# except at the patched layer.

# %%
kv = rel[rel.stage.isin(["key", "value"])]
extra = (
    kv.pivot_table(index=["layer", "stage", "role"], columns="model", values="value", sort=False)
    .eval("emb_kv - emb")
    .unstack(["stage", "role"])
)
where = extra.abs().max(axis=1)
print("largest extra drift at:", where.idxmax())
assert where.idxmax() == PATCHED and (where.drop(PATCHED) < 1e-6).all()
extra.rename(index=layer_label).round(4)
