"""Per-token views of a store (no torch): each token's distance to its baseline partner at every stage, and the
token-embedding vectors of the prompts' concept and context words projected on their principal components.

Both read only the first prompts of a store (``n_prompts``), so they stay cheap on stores of any size; ``compare``
is what summarises all prompts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .. import store as st
from ..schema import BASELINE, TOKEN_STAGES
from .metrics import distance_jobs

LAYERED = ("encoder_layer", "key", "value")  # stages recorded once per layer: averaged over layers here


def head(tree: xr.DataTree, n_prompts: int) -> xr.DataTree:
    """The store restricted to its first ``n_prompts`` prompts (lazy: nothing else is read)."""
    return tree.isel(prompt=slice(0, n_prompts), missing_dims="ignore")


def token_stage_distances(
    tree: xr.DataTree, model: str, n_prompts: int = 3, metric: str = "relative_l2", reference: str = BASELINE
) -> xr.DataArray:
    """(prompt, token, stage): each token's distance to its partner in ``reference`` at every stage of
    ``schema.TOKEN_STAGES``, the mean over layers for ``encoder_layer``/``key``/``value`` (SDXL: over both text
    encoders' layers, and the mean of their two ``token_embedding`` distances); NaN where the token has no
    partner or the branch lacks the stage (AlignIT branches hold K/V only). Coords ``token_str``, ``role`` and
    ``prompt_text`` label it. Works on full and summary stores alike (``metrics.distance_jobs``)."""
    sub = head(tree, n_prompts)
    labels = st.token_labels(sub, model).load()
    shape = (labels.sizes["prompt"], labels.sizes["token"])
    per_stage = []
    for stage in TOKEN_STAGES:
        layers = [fn()[metric].compute() for _, fn in distance_jobs(sub, model, reference, stage, labels.ref_index)]
        if layers:
            values = np.mean(np.stack([np.asarray(d.transpose("prompt", "token")) for d in layers]), axis=0)
        else:
            values = np.full(shape, np.nan)
        per_stage.append(values)
    return xr.DataArray(
        np.stack(per_stage, axis=-1),
        dims=("prompt", "token", "stage"),
        coords={
            "prompt": labels.prompt.values,
            "token": labels.token.values,
            "stage": list(TOKEN_STAGES),
            "token_str": (("prompt", "token"), labels.token_str.values.astype(object)),
            "role": (("prompt", "token"), labels.role.values.astype(object)),
            "prompt_text": ("prompt", labels.prompt_text.values.astype(object)),
        },
        name=metric,
        attrs={"model": model, "reference": reference, "metric": metric, "averaged_over_layers": list(LAYERED)},
    )


def embedding_vectors(tree: xr.DataTree, models: list[str], n_prompts: int = 64) -> pd.DataFrame:
    """One row per distinct (branch, token id) among the concept and context tokens of the first ``n_prompts``
    prompts: ``model``, ``token_id``, ``token_str``, ``role``, ``vector`` (the ``token_embedding`` stage: the input
    embedding row, before position embeddings, so one vector per token id). Branches without a ``text`` group
    (summary stores, AlignIT branches) give no rows."""
    sub = head(tree, n_prompts)
    rows = []
    for model in models:
        if "text" not in sub[model].children:
            continue
        emb = st.group(sub, model, "text")["token_embedding"]
        ids, roles = emb.token_id.values, emb.role.values.astype(object)
        strs = emb.token_str.values.astype(object)
        keep = np.isin(roles, ("concept", "context"))
        _, first = np.unique(ids[keep], return_index=True)
        where = np.argwhere(keep)[np.sort(first)]
        vectors = emb.values[where[:, 0], where[:, 1]]
        for (p, t), vec in zip(where, vectors):
            rows.append(
                dict(model=model, token_id=int(ids[p, t]), token_str=str(strs[p, t]), role=str(roles[p, t]), vector=vec)
            )
    return pd.DataFrame(rows, columns=["model", "token_id", "token_str", "role", "vector"])


def project_vectors(vectors: pd.DataFrame, n_components: int = 2) -> tuple[pd.DataFrame, list[float]]:
    """PCA (scikit-learn) of the ``vector`` column, fitted on every row together: the frame with ``pc1``, ``pc2``
    … added (``vector`` dropped), and each component's explained-variance ratio."""
    from sklearn.decomposition import PCA

    x = np.stack(vectors["vector"].to_numpy()).astype(np.float64)
    k = max(1, min(n_components, x.shape[0], x.shape[1]))
    pca = PCA(n_components=k, random_state=0)
    pcs = pca.fit_transform(x)
    out = vectors.drop(columns=["vector"]).copy()
    for i in range(n_components):
        out[f"pc{i + 1}"] = pcs[:, i] if i < k else 0.0
    return out, [float(r) for r in pca.explained_variance_ratio_] + [0.0] * (n_components - k)
