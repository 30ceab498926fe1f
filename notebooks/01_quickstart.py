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
# # Quickstart: record, compare, plot
#
# Where along the text path does a customized model drift from its baseline? This notebook records every stage of
# the text path (token embeddings → text-encoder layers → encoder output → the keys and values of every UNet
# cross-attention layer) for a baseline and a Custom Diffusion model, compares them by token role (the concept
# `<new1> triangle` vs the rest of the prompt, its *context*), plots the result, and looks at the images.
#
# It runs offline in well under a minute on a laptop CPU, on the toolkit's world: a small trained text-to-image
# model (a `StableDiffusionPipeline`, 32×32 images of one shape on a background) whose images a rule-based scorer
# reads exactly, and a Custom Diffusion output trained on it by `alignit-probe world train` (a large blue striped
# triangle shown on white), both shipped with the package. For your own models, replace the two paths below by a
# diffusers pipeline (or hub id) and a customization output folder. Only the public API is used.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from alignit_probe import Concept, Probe, compare
from alignit_probe.viz.drift import drift_figure, step_label
from alignit_probe.viz.grid import image_grid
from alignit_probe.world.model import world_pipeline_dir
from alignit_probe.world.scorer import score_images
from alignit_probe.world.shipped import customization_dir

work = Path(tempfile.mkdtemp(prefix="alignit-quickstart-"))
baseline = world_pipeline_dir()  # the trained world model, a diffusers folder (written once into a cache)
custom = customization_dir("custom-diffusion")  # what diffusers' Custom Diffusion script writes
sorted(p.name for p in custom.iterdir())

# %% [markdown]
# ## Record
#
# `Probe` takes the baseline, the customized model(s) (`{"NAME": SPEC}`: a pipeline folder, or artifacts applied to
# the baseline — Textual Inversion, Custom Diffusion, LoRA) and the concept: its token and class word. `record`
# writes every stage for every prompt into one store; `alignit=True` adds the AlignIT branch.

# %%
probe = Probe(baseline, custom={"cd": custom}, concepts=[Concept("<new1>", "triangle")], device="cpu", progress=False)
prompts = [
    "a photo of a <new1> triangle on the left on a black background",
    "a photo of a <new1> triangle in the center on a purple background",
    "a photo of a <new1> triangle on the right on a gray background",
    "a photo of a small <new1> triangle on a black background",
]
store = probe.record(prompts, work / "probe.zarr", alignit=True)
store

# %% [markdown]
# ## Compare
#
# `compare` gives one row per (model, stage, layer, role, metric): the mean over prompts of the per-prompt role mean
# of the distance to the baseline, with a bootstrap 95% CI over prompts. The token embedding changes only at the
# concept (Custom Diffusion adds the token); the causal encoder carries that change to every later token, and the
# trained K/V projections move every token's keys and values: the context drifts as much as the concept.

# %%
rows = compare(store)
rel = rows[(rows.metric == "relative_l2") & rows.role.isin(["concept", "context"])]
table = rel.pivot_table(index=["model", "stage"], columns="role", values="value", sort=False)
table.round(4)

# %% [markdown]
# ## Plot: drift along the text path
#
# One point per stage and layer (encoder layers, then the attn2 layers in UNet order: down, mid, up), concept vs
# context, with the CI as a band.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
for ax, model in zip(axes, ["cd", "alignit"]):
    mine = rel[rel.model == model].assign(step=lambda d: [step_label(s, x) for s, x in zip(d.stage, d.layer)])
    steps = list(dict.fromkeys(mine.step))  # data-flow order, as compare returns the rows
    for role, color in [("concept", "tab:blue"), ("context", "tab:orange")]:
        r = mine[mine.role == role]
        x = [steps.index(s) for s in r.step]
        ax.plot(x, r.value, "o-", ms=3, color=color, label=role)
        ax.fill_between(x, r.ci_low, r.ci_high, color=color, alpha=0.2)
    ax.set_xticks(range(len(steps)), steps, rotation=70, fontsize=7)
    ax.set_title(f"{model} vs baseline")
    ax.legend()
axes[0].set_ylabel("relative L2 to baseline")
plt.tight_layout()
plt.show()

# %% [markdown]
# The toolkit's own figure (the one `alignit-probe report` writes), shown inline:

# %%
display(Image(filename=str(drift_figure(rows.to_dict("records"), work / "drift.png"))))

# %% [markdown]
# ## Images: baseline, customized, AlignIT
#
# Same seed for all three, the world's sampler settings (10 steps, guidance 4). The baseline draws the prompt
# without the concept token; the customized model draws the concept but on the references' white; AlignIT takes
# every context token's K/V from the baseline. Under each image, what the world's scorer reads in it.

# %%
images = probe.alignit(prompts, steps=10, guidance_scale=4.0)
pixels = {name: np.stack([np.asarray(im, dtype=np.float32) / 255 for im in imgs]) for name, imgs in images.items()}


def readout(scored: dict) -> str:
    return f"{scored['background']} {scored['position']} {scored['color']}"


read = {name: [readout(s) for s in score_images(x)] for name, x in pixels.items()}
display(Image(filename=str(image_grid(images, prompts, work / "grid.png", cell=160, notes=read))))
