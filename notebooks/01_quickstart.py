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
# `<new1> cat` vs the rest of the prompt, its *context*), and plots the result.
#
# It runs offline in well under a minute on a laptop CPU: the model is the embedded toy SD1.x pipeline (random
# weights, the real CLIP tokenizer) and a Custom Diffusion artifact made for it. For your own models, replace the two
# paths below by a diffusers pipeline (or hub id) and a customization output folder. Only the public API is used.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Image, display

from alignit_probe import Concept, Probe, build_toy, compare, write_toy_custom_diffusion
from alignit_probe.viz.drift import drift_figure, step_label
from alignit_probe.viz.grid import image_grid

work = Path(tempfile.mkdtemp(prefix="alignit-quickstart-"))
baseline = build_toy(work / "toy")  # the embedded tiny SD1.x pipeline, in diffusers format
custom = write_toy_custom_diffusion(baseline, work / "cd", token="<new1>", init_word="cat")  # a Custom Diffusion output
sorted(p.name for p in custom.iterdir())

# %% [markdown]
# ## Record
#
# `Probe` takes the baseline, the customized model(s) (`{"NAME": SPEC}`: a pipeline folder, or artifacts applied to
# the baseline — Textual Inversion, Custom Diffusion, LoRA) and the concept: its token and class word. `record`
# writes every stage for every prompt into one store; `alignit=True` adds the AlignIT branch.

# %%
probe = Probe(baseline, custom={"cd": custom}, concepts=[Concept("<new1>", "cat")], device="cpu", progress=False)
prompts = [
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a <new1> cat sleeping in the snow",
    "an oil painting of a <new1> cat by a lake",
]
store = probe.record(prompts, work / "probe.zarr", alignit=True)
store

# %% [markdown]
# ## Compare
#
# `compare` gives one row per (model, stage, layer, role, metric): the mean over prompts of the per-prompt role mean
# of the distance to the baseline, with a bootstrap 95% CI over prompts. The token embedding changes only at the
# concept — but from the first encoder layer on, the context tokens drift as much as the concept.

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
# Same seed for all three. (The toy model's weights are random, so its images are noise; with a real model this is
# the before/after figure.)

# %%
images = probe.alignit(prompts[:2], steps=3)
display(Image(filename=str(image_grid(images, prompts[:2], work / "grid.png", cell=128))))
