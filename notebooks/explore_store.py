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
# # Exploring a store
#
# A store is one labeled xarray DataTree: a branch per model (`baseline`, each customized model, AlignIT), token
# labels as coordinates, every stage of the text path as arrays. This notebook opens one lazily (dask; no torch
# needed to read), walks its layout, computes per-token distances by hand with xarray, and summarises with `compare`.
#
# Point `STORES` at your own store (or all shards of one `record --shard I/N` job, e.g.
# `["../out/demo/probe.zarr"]` after `alignit-probe demo --out out/demo`). Left empty, the notebook records a small
# one on the embedded toy model first — as two shards, to show how shards read as one store.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from IPython.display import Image, display

from alignit_probe import compare, open_shards, token_texts
from alignit_probe.viz.drift import drift_figure

STORES: list[str] = []  # your store, or every shard of one job

work = Path(tempfile.mkdtemp(prefix="alignit-explore-"))
if not STORES:
    from alignit_probe import Concept, Probe, build_toy, write_toy_custom_diffusion

    toy = build_toy(work / "toy")
    cd = write_toy_custom_diffusion(toy, work / "cd", token="<new1>", init_word="cat")
    probe = Probe(toy, {"cd": cd}, [Concept("<new1>", "cat")], device="cpu", progress=False)
    prompts = [
        "photo of a <new1> cat on the beach",
        "a <new1> cat wearing a red hat",
        "a <new1> cat sleeping in the snow",
        "an oil painting of a <new1> cat by a lake",
    ]
    STORES = [
        str(probe.record(prompts, work / f"probe-{i}.zarr", batch_size=2, shard=(i, 2), alignit=True)) for i in range(2)
    ]

tree = open_shards(STORES, chunks={})  # lazy; shards concatenated along `prompt`
list(tree.children)

# %% [markdown]
# ## Layout
#
# `/<model>` holds the token labels as coordinates (`prompt_text`, `token_str`, `role`, `ref_index` — the position
# of each token's partner in the baseline's prompt); `/<model>/text` the text-encoder stages; `/<model>/kv/<attn2
# path>` the keys and values each cross-attention layer computes. Root attributes describe the job.

# %%
print({k: tree.attrs[k] for k in ("concepts", "custom_models", "n_prompts", "shards") if k in tree.attrs})
custom = next(m for m in tree.children if m not in ("baseline", "alignit") and not m.startswith("alignit-"))
print("customized model:", custom, "| its groups:", list(tree[custom].children))
if "kv" not in tree[custom].children:  # record --summary keeps per-token distances only
    raise SystemExit(
        "this is a summary store (record --summary): it holds distances, not the activations this "
        "notebook reads by hand; pass a full store (record without --summary)"
    )
paths = list(tree[f"{custom}/kv"].children)
print(len(paths), "attn2 layers, e.g.", paths[0])
tree[f"{custom}/text"].to_dataset()

# %% [markdown]
# The tokens of the first prompt as the customized model sees them (padding left out), each with its partner in
# the baseline's prompt: the concept `<new1> cat` pairs with the baseline's `cat` (which has no `<new1>`), so the
# context tokens after it sit one position later than their partners.

# %%
mine = tree[custom].to_dataset(inherit=False).isel(prompt=0)
base = tree["baseline"].to_dataset(inherit=False).isel(prompt=0)
table = mine[["token_str", "role", "ref_index"]].to_dataframe()[["token_str", "role", "ref_index"]]
table.insert(1, "as written", token_texts(list(table.token_str)))  # token_str is CLIP's byte spelling (café: cafÃ©)
base_text = token_texts(list(base.token_str.values))
table["baseline partner"] = [base_text[r] if r >= 0 else "—" for r in table.ref_index]
table[table.role != "padding"]


# %% [markdown]
# ## Per-token distances by hand
#
# Relative L2 distance of each token's key to its baseline partner's, at one attn2 layer: plain xarray (lazy until
# `.compute()`).

# %%
path = paths[-1]
labels = tree[custom].to_dataset(inherit=False)
a = tree[f"{custom}/kv/{path}"].to_dataset(inherit=False).key
b = tree[f"baseline/kv/{path}"].to_dataset(inherit=False).key
ref = labels.ref_index.reset_coords(drop=True).compute()  # small: the token labels
partner = b.isel(token=ref.clip(min=0)).where(ref >= 0)  # the baseline token each token pairs with
rel_l2 = (np.sqrt(((a - partner) ** 2).sum("channel")) / np.sqrt((partner**2).sum("channel"))).compute()

keep = (labels.role != "padding").isel(prompt=0).values
d = rel_l2.isel(prompt=0).values[keep]
roles = labels.role.isel(prompt=0).values[keep]
words = [w for w, k in zip(token_texts(list(labels.token_str.isel(prompt=0).values)), keep) if k]
colors = {"concept": "tab:blue", "context": "tab:orange", "special": "grey"}
plt.figure(figsize=(8, 2.8))
plt.bar(range(len(d)), d, color=[colors[r] for r in roles])
plt.xticks(range(len(d)), words, rotation=45)
plt.ylabel("relative L2 of K to baseline")
plt.title(f"{custom}, prompt 0, {path}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Learned embeddings
#
# `/<custom>/embedding`: each learned vector's norm against the vocabulary's (z-score, percentile) and its nearest
# vocabulary tokens — an over-long vector is a common reason for a concept to swamp its prompt.

# %%
emb = tree[f"{custom}/embedding"].to_dataset(inherit=False).compute()
print(emb[["vector_token", "norm", "norm_z", "norm_percentile"]].to_dataframe())
emb[["neighbor_token", "neighbor_cosine"]].to_dataframe()

# %% [markdown]
# ## `compare`: every stage, layer and role, with CIs
#
# The same per-token distances, summarised: per prompt the mean over a role's tokens, then the mean over prompts with
# a percentile-bootstrap 95% CI. `compare` takes the tree (or the store paths).

# %%
rows = compare(tree)
rows.query("metric == 'relative_l2' and role in ['concept', 'context']").pivot_table(
    index=["model", "stage"], columns="role", values="value", sort=False
).round(4)

# %%
check = rows[(rows.model == custom) & (rows.stage == "key") & (rows.layer == path) & (rows.metric == "relative_l2")]
by_hand = xr.DataArray(rel_l2).where(labels.role.reset_coords(drop=True) == "context").mean("token").mean("prompt")
print("context, by hand:", float(by_hand), "| compare:", float(check[check.role == "context"].value.iloc[0]))
assert np.isclose(float(by_hand), float(check[check.role == "context"].value.iloc[0]), rtol=1e-5)

# %% [markdown]
# The drift figure of `alignit-probe report`, from the same rows:

# %%
display(Image(filename=str(drift_figure(rows.to_dict("records"), work / "drift.png"))))
