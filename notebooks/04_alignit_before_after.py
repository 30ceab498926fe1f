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
# # AlignIT: before and after
#
# A customized model drifts on the whole prompt, not only on its concept: the rest of the prompt (the *context*)
# stops counting as it should. AlignIT is training-free: at every cross-attention layer it takes every token's
# keys and values from the **baseline** on the prompt without the modifier, and only the concept span's from the
# **customized** model (on a short dummy prompt). So after AlignIT the context tokens sit exactly on the baseline
# — distance 0 at key and value — while the concept keeps its customization.
#
# This notebook generates baseline / customized / AlignIT images (one seed), records the AlignIT branch next to the
# customized model, and shows the drift before and after, concept vs context. Offline, on the toolkit's world: a
# small trained model whose images show one shape on a background, with the Custom Diffusion output shipped for it
# (a large blue striped triangle, learned from renders on white).

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display

from alignit_probe import AlignITOptions, Concept, Probe, compare, layer_label
from alignit_probe.viz.grid import image_grid
from alignit_probe.world.model import world_pipeline_dir
from alignit_probe.world.shipped import customization_dir

work = Path(tempfile.mkdtemp(prefix="alignit-before-after-"))
baseline, custom = world_pipeline_dir(), customization_dir("custom-diffusion")
probe = Probe(baseline, {"cd": custom}, [Concept("<new1>", "triangle")], device="cpu", progress=False)
prompts = [
    "a photo of a <new1> triangle on the left on a black background",
    "a photo of a <new1> triangle in the center on a purple background",
    "a photo of a <new1> triangle on the right on a gray background",
    "a photo of a large <new1> triangle on a black background",
]

# %% [markdown]
# ## Images
#
# `probe.alignit` returns `{"baseline": [...], "cd": [...], "alignit": [...]}` (PIL images, same seed; the world's
# sampler: 10 steps, guidance 4). The customized model draws its triangle on the references' white whatever the
# prompt asks; AlignIT draws the asked background and position — and on this world loses most of the concept
# ([docs/world.md](../docs/world.md) has the numbers over 200 samples, and why).

# %%
images = probe.alignit(prompts, steps=10, guidance_scale=4.0)
display(Image(filename=str(image_grid(images, prompts, work / "grid.png", cell=160))))

# %% [markdown]
# ## Drift before and after, concept vs context
#
# `record(..., alignit=True)` stores the AlignIT branch (`alignit`) next to `cd`; its rows in `compare` hold the
# distance of the K/V the UNet actually reads to the baseline's.

# %%
rows = compare(probe.record(prompts, work / "probe.zarr", alignit=True))
kv = rows[(rows.metric == "relative_l2") & rows.stage.isin(["key", "value"]) & rows.role.isin(["concept", "context"])]
summary = kv.pivot_table(index=["stage", "role"], columns="model", values="value", sort=False)
assert (kv[(kv.model == "alignit") & (kv.role == "context")].value == 0).all()  # context: exactly the baseline
summary.round(4)

# %% [markdown]
# Per attn2 layer (UNet order), with 95% CIs over prompts as error bars: the customized model moves concept and
# context alike; AlignIT puts the context back on the baseline exactly. Its concept span is the customized model's
# K/V of the short dummy prompt ("photo of a <new1> triangle"), not of the full prompt: the words before the concept
# differ (CLIP's text encoder is causal), so its concept drift is not exactly the customized model's.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), sharey=True)
bars = [("cd", "concept", "#0173b2"), ("cd", "context", "#56b4e9"), ("alignit", "concept", "#d55e00")]
bars += [("alignit", "context", "#f0a35e")]
for ax, stage in zip(axes, ["key", "value"]):
    layers = list(dict.fromkeys(kv[kv.stage == stage].layer))
    for k, (model, role, color) in enumerate(bars):
        r = kv[(kv.stage == stage) & (kv.model == model) & (kv.role == role)].set_index("layer").loc[layers]
        x = np.arange(len(layers)) + (k - 1.5) * 0.2
        ax.bar(x, r.value, 0.2, yerr=[r.value - r.ci_low, r.ci_high - r.value], color=color, label=f"{model}: {role}")
        for xi in x[r.value.to_numpy() == 0]:  # exactly the baseline: a bar of height 0
            ax.annotate("0", (xi, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(layers)), [layer_label(p) for p in layers], fontsize=8)
    ax.set_title(f"{stage} (AlignIT context: 0 at every layer)")
axes[0].set_ylabel("relative L2 to baseline")
axes[0].legend(fontsize=8, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Options: how much of the baseline to take
#
# `AlignITOptions` sets what AlignIT injects: `alpha` blends the infused K/V with the customized model's (1: full
# AlignIT), `keys`/`values` restrict it to one of them, `layers`/`blocks`/`resolutions` to some layers. The context
# drift falls as `alpha` grows; with `values=False` only the keys are put back.

# %%
variants = {f"alpha={a}": AlignITOptions(alpha=a) for a in (0.25, 0.5, 0.75)}
variants["keys only"] = AlignITOptions(values=False)
drift = {}
for name, options in variants.items():
    r = compare(probe.record(prompts, work / f"{name}.zarr", alignit=options), stages=("key", "value"))
    r = r[(r.model == "alignit") & (r.metric == "relative_l2") & r.role.isin(["concept", "context"])]
    drift[name] = r.groupby(["stage", "role"]).value.mean()
drift["alpha=1 (default)"] = kv[kv.model == "alignit"].groupby(["stage", "role"]).value.mean()
drift["cd (no AlignIT)"] = kv[kv.model == "cd"].groupby(["stage", "role"]).value.mean()
table = pd.DataFrame(drift).T.loc[["cd (no AlignIT)", *variants, "alpha=1 (default)"]]
table.round(4)

# %%
ax = table.xs("context", axis=1, level="role").plot.bar(figsize=(8, 3), rot=20)
ax.set_ylabel("context drift (mean over layers)")
ax.set_title("context tokens: distance to the baseline's K/V")
plt.tight_layout()
plt.show()
