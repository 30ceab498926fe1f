"""Cross-attention maps of baseline, customized and AlignIT generations, kept in the store next to the recorded
stages (``/<model>/attention``: ``map`` (prompt, token, y, x), aligned with the branch's tokens and roles), and their
divergences from the baseline's maps as ``compare`` rows (``"stage": "attention_map"``).

Divergence metrics (0 = identical maps): ``one_minus_pearson``, ``jensen_shannon`` (base 2, maps normalized to sum
1), ``one_minus_iou`` (DAAM's masks: each map min–max normalized over (y, x), (m − min)/(max − min), then
thresholded at > ``level``, default 0.5; a constant map has an empty mask — see ``analysis.maps``). Each token is
compared with its baseline partner (``ref_index``), then summarized by role like every other stage.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import store as st
from ..schema import ATTENTION_METRICS, ATTENTION_STAGE, BASELINE, ROLES
from .maps import divergences
from .stats import bootstrap_ci, gather_partners, role_means


def attention_rows(
    tree: xr.DataTree, reference: str = BASELINE, n_boot: int = 1000, seed: int = 0, level: float = 0.5
) -> list[dict]:
    """``compare`` rows for the attention maps of every branch that has them (``level``: the IoU masks' threshold on
    min–max normalized maps)."""
    if reference not in tree.children or "attention" not in tree[reference].children:
        return []
    base = tree[f"{reference}/attention"].to_dataset()["map"].load()
    rows = []
    for model in st.models(tree):
        if model == reference or "attention" not in tree[model].children:
            continue
        labels = st.token_labels(tree, model)
        a = tree[f"{model}/attention"].to_dataset()["map"].load()
        b = a.copy(data=gather_partners(base.values, labels.ref_index.values.astype(np.int64)))
        div = divergences(a, b, level)
        role = labels.role.load()
        for metric in ATTENTION_METRICS:
            per_role = role_means(div[metric].transpose("prompt", "token"), role, ROLES)
            for name in ROLES:
                value, lo, hi, n = bootstrap_ci(per_role[name], n_boot, seed)
                rows.append(
                    dict(
                        model=model,
                        reference=reference,
                        stage=ATTENTION_STAGE,
                        layer=None,
                        role=name,
                        metric=metric,
                        value=value,
                        ci_low=lo,
                        ci_high=hi,
                        n=n,
                    )
                )
    return rows
