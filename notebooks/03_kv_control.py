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
# # K/V semantic control: keys from prompt A, values from prompt B
#
# In every cross-attention layer the keys decide *where* each token's attention goes, the values *what* is written
# there. `Probe.swap` denoises prompt A with A's keys but B's values — at every token or only at chosen words, at
# every attn2 layer or only in chosen UNet blocks — with one seed for all images, so any difference is the swap's.
#
# This is the manipulation behind the paper's K/V control figure: on a real model (e.g.
# `runwayml/stable-diffusion-v1-5`) it puts B's content into A's layout. The embedded toy model used here has random
# weights (its images are noise), so the notebook also measures *how much* each swap changes the image.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from alignit_probe import Probe, ProbeError, build_toy
from alignit_probe.viz.grid import image_grid

work = Path(tempfile.mkdtemp(prefix="alignit-swap-"))
probe = Probe(build_toy(work / "toy"), device="cpu", progress=False)  # a baseline alone is enough for swaps
A, B = "a dog on the grass", "a cat in the snow"
STEPS = 3

# %% [markdown]
# ## Every token, every layer
#
# `swap` returns `{"A": [...], "B": [...], "keys A + values B": [...]}` (PIL images).

# %%
everything = probe.swap(A, B, steps=STEPS)
display(Image(filename=str(image_grid(everything, [f"K: {A} | V: {B}"], work / "all.png", cell=160))))

# %% [markdown]
# ## Only at one word, and only in one UNet block
#
# `tokens=["dog"]` swaps the values at A's `dog` positions only; `blocks=["up"]` (or `layers=[attn2 paths]`) keeps
# A's own values everywhere else.

# %%
variants = {"swap all": everything["keys A + values B"][0]}  # every token, every layer
variants["at dog"] = probe.swap(A, B, tokens=["dog"], steps=STEPS)["keys A + values B"][0]  # every layer
for block in ("down", "mid", "up"):  # every token
    variants[f"{block} only"] = probe.swap(A, B, blocks=[block], steps=STEPS)["keys A + values B"][0]
columns = {"A": everything["A"], "B": everything["B"], **{k: [v] for k, v in variants.items()}}
display(Image(filename=str(image_grid(columns, [f"K: {A} | V: {B}"], work / "variants.png", cell=128))))

# %% [markdown]
# ## How much does each swap change the image?
#
# Mean absolute pixel difference from A's image (0 = identical to A), next to B's own distance from A. `swap all`:
# every token, every layer; `at dog`: only the word `dog`, every layer; `down/mid/up only`: every token, one block.


# %%
def pixels(img):
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


a = pixels(everything["A"][0])
change = {"B itself": float(np.abs(pixels(everything["B"][0]) - a).mean())}
change |= {name: float(np.abs(pixels(img) - a).mean()) for name, img in variants.items()}
fig, ax = plt.subplots(figsize=(8, 3))
ax.barh(list(change), list(change.values()), color=["grey"] + ["tab:blue"] * len(variants))
ax.invert_yaxis()
ax.set_xlabel("mean |image − A| (pixel values in [0, 1])")
ax.set_title(f"keys of {A!r}, values of {B!r}")
plt.tight_layout()
plt.show()
assert all(v > 0 for v in change.values())

# %% [markdown]
# Bad requests are one-line `ProbeError`s naming the fix — here a word that is not in prompt A:

# %%
try:
    probe.swap(A, B, tokens=["zebra"], steps=STEPS)
except ProbeError as e:
    print("ProbeError:", e)
