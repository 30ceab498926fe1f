"""Shared by the analysis scripts: stores (or the shards of one job) in, per-stage means with 95% CIs out, and
one-line errors. Public API only (``alignit_probe.open_shards``, ``alignit_probe.compare``) plus the documented
store layout (docs/store.md).

Stages with layers (``encoder_layer``: every text-encoder layer; ``key``/``value``: every attn2 layer) are summarised
by their mean over layers. Its 95% CI is the percentile bootstrap over prompts of the per-prompt layer mean, the same
bootstrap ``compare`` uses for one layer: the layers of a stage are laid side by side along ``token`` (one pseudo
layer whose tokens are every layer's tokens, roles and partners repeated) and that tree goes through ``compare``.
A prompt's role mean over those tokens is the mean over layers of its per-layer role means, so the value equals the
mean of ``compare``'s per-layer values, and the CI accounts for layers moving together across prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # loading bars of diffusers/transformers; the scripts print results only

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from alignit_probe import ProbeError, ProbeWarning, compare, open_shards  # noqa: E402

STAGES = ("token_embedding", "encoder_layer", "encoder_output", "key", "value")
LAYERED = ("encoder_layer", "key", "value")
METRICS = ("relative_l2", "cosine_distance")
ROLES = ("concept", "context", "special", "padding")
BASELINE = "baseline"
ALIGNIT = "alignit"
TABLE_COLUMNS = ("model", "stage", "role", "metric", "value", "ci_low", "ci_high", "n", "layers")
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
POOLED = "pooled"


# ----------------------------------------------------------------------------------------------- running a script
def run(main) -> None:
    """Run ``main()``; a bad input ends in one line ``error: …`` on stderr and exit status 2, no traceback."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers|diffusers|xarray|zarr|torch|dask")
    warnings.showwarning = _show_warning
    try:
        code = main()
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:
        if getattr(e, "errno", None) is None:
            raise
        where = getattr(e, "filename", None) or "I/O"
        print(f"error: {e.strerror or e} ({where}) — check the path and its permissions", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ProbeWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        print(f"warning: {category.__name__}: {message}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse with the module docstring as help, and usage errors on one line: ``error: … — see --help``."""

    def __init__(self, doc: str, **kw):
        head, _, rest = doc.strip().partition("\n\n")
        super().__init__(
            description=head,
            epilog=rest,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )

    def error(self, message: str):
        print(f"error: {message} — see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def output_path(path: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` as an output file: its folder must exist, and its suffix be one of ``suffixes``."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise ProbeError(
            f"cannot write {out}: unknown file type {out.suffix or '(none)'!r}", "use " + ", ".join(suffixes)
        )
    if out.is_dir():
        raise ProbeError(f"output {out} is a folder", "pass a file name")
    if not out.parent.is_dir():
        raise ProbeError(f"output folder {out.parent} does not exist", "create it first or choose another --out")
    return out


def add_store_args(ap, n_boot: bool = True) -> None:
    ap.add_argument(
        "stores", nargs="+", metavar="STORE", help="a store of `alignit-probe record`, or every shard of one job"
    )
    ap.add_argument("--metric", default="relative_l2", choices=METRICS, help="distance to the baseline")
    if n_boot:
        ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of prompts for the 95%% CIs")
        ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


# ----------------------------------------------------------------------------------------------- stores
def open_stores(paths: list[str]) -> xr.DataTree:
    """One store, or the shards of one recording job read as one store (lazy)."""
    return open_shards(list(paths))


def branches(tree: xr.DataTree) -> list[str]:
    """Every recorded branch: the baseline, the customized models in the order recorded, then their AlignIT
    branches (``alignit`` with one customized model, ``alignit-NAME`` with several)."""
    names = [name for name, node in tree.children.items() if "token_id" in node.coords]
    order = tree.attrs.get("custom_models")
    order = json.loads(order) if isinstance(order, str) else list(order or [])
    given = [BASELINE, *order, ALIGNIT, *(f"{ALIGNIT}-{m}" for m in order)]
    rank = {n: i for i, n in enumerate(given)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def customized(tree: xr.DataTree) -> list[str]:
    """The customized models of a store (neither the baseline nor an AlignIT branch), in the order recorded."""
    return [m for m in branches(tree) if m != BASELINE and m != ALIGNIT and not m.startswith(ALIGNIT + "-")]


def alignit_branch_of(tree: xr.DataTree, model: str) -> str | None:
    """The AlignIT branch of a customized model (``alignit`` with one customized model, else ``alignit-NAME``)."""
    name = ALIGNIT if len(customized(tree)) == 1 else f"{ALIGNIT}-{model}"
    return name if name in branches(tree) else None


def _layer_arrays(tree: xr.DataTree, model: str, stage: str) -> dict[object, xr.DataArray]:
    """{layer label: array} of one layered stage of one branch: activations (prompt, token, channel), or a summary
    branch's per-token distances (prompt, token, metric)."""
    node = tree[model]
    if "distance" in node.children:
        ds = node["distance"].to_dataset(inherit=False)
        if stage not in ds.data_vars:
            return {}
        da = ds[stage]
        dim = "layer" if stage == "encoder_layer" else "site"
        return {(int(v) if dim == "layer" else str(v)): da.sel({dim: v}, drop=True) for v in da[dim].values}
    if stage == "encoder_layer":
        if "text" not in node.children:
            return {}
        da = node["text"].to_dataset(inherit=False)[stage]
        return {int(i): da.sel(layer=i, drop=True) for i in da.layer.values}
    if "kv" not in node.children:
        return {}
    return {path: node[f"kv/{path}"].to_dataset(inherit=False)[stage] for path in node["kv"].children}


def pool_layers(tree: xr.DataTree, stage: str, model: str) -> tuple[xr.DataTree, int]:
    """The baseline and ``model`` only, ``stage`` with one pseudo layer holding every layer's tokens side by side
    (see the module docstring), and the number of layers pooled (those both hold; 0: the stage is absent)."""
    names = [m for m in branches(tree) if m in (BASELINE, model)]
    arrays = {m: _layer_arrays(tree, m, stage) for m in names}
    have = [a for a in arrays.values() if a]
    common = [k for k in (have[0] if have else {}) if all(k in a for a in have)]
    if not common or not arrays.get(model):  # (an AlignIT branch holds K/V only)
        return tree, 0
    summary = any("distance" in tree[m].children for m in names)
    n_tok = {m: tree[m].sizes["token"] for m in names}
    ref_tokens = n_tok.get(BASELINE, max(n_tok.values()))
    nodes = {"/": xr.Dataset(attrs=dict(tree.attrs))}
    for m in names:
        labels = tree[m].to_dataset(inherit=False)
        labels = labels.drop_vars(list(labels.data_vars))
        nodes[f"/{m}"] = _tile_labels(labels, len(common), ref_tokens)
        if not arrays[m]:
            continue
        parts = [arrays[m][k] for k in common]
        if not summary:  # pad channels with zeros: distances unchanged (norms and dot products are)
            width = max(p.sizes["channel"] for p in parts)
            parts = [p.pad(channel=(0, width - p.sizes["channel"]), constant_values=0) for p in parts]
        pooled = xr.concat([p.reset_coords(drop=True) for p in parts], dim="token").assign_coords(
            token=np.arange(len(common) * n_tok[m])
        )
        if pooled.chunks is not None:  # dask (shards): compare wants whole token and channel axes per chunk
            pooled = pooled.chunk({d: -1 for d in pooled.dims if d != "prompt"})
        if summary:
            dim = "layer" if stage == "encoder_layer" else "site"
            label = 0 if stage == "encoder_layer" else POOLED
            nodes[f"/{m}/distance"] = xr.Dataset({stage: pooled.expand_dims({dim: [label]}, axis=1)})
        elif stage == "encoder_layer":
            nodes[f"/{m}/text"] = xr.Dataset({stage: pooled.expand_dims(layer=[0], axis=1)})
        else:
            nodes[f"/{m}/kv/{POOLED}"] = xr.Dataset({stage: pooled})
    return xr.DataTree.from_dict(nodes), len(common)


def _tile_labels(labels: xr.Dataset, n: int, ref_tokens: int) -> xr.Dataset:
    """Token labels repeated ``n`` times along ``token``; partners shifted into the matching copy."""
    t = labels.sizes["token"]
    out = xr.Dataset(attrs=labels.attrs, coords={"prompt": labels["prompt"].values, "token": np.arange(n * t)})
    for name, coord in labels.coords.items():
        if name in ("prompt", "token"):
            continue
        if "token" not in coord.dims:
            out = out.assign_coords({name: coord.reset_coords(drop=True)})
            continue
        values = np.asarray(coord.values)
        if name == "ref_index":
            tiled = np.concatenate([np.where(values >= 0, values + k * ref_tokens, -1) for k in range(n)], axis=-1)
            tiled = tiled.astype(values.dtype)
        else:
            tiled = np.concatenate([values] * n, axis=-1)
        out = out.assign_coords({name: (coord.dims, tiled)})
    return out


# ----------------------------------------------------------------------------------------------- the stage table
def stage_table(
    tree: xr.DataTree,
    *,
    metric: str = "relative_l2",
    roles=("concept", "context"),
    stages=STAGES,
    models=None,
    n_boot: int = 1000,
    seed: int = 0,
):
    """Per branch (but the baseline), stage and role: the mean distance to the baseline (layered stages: the mean
    over layers) with its 95% bootstrap CI over prompts. A pandas DataFrame with ``TABLE_COLUMNS``."""
    import pandas as pd

    if n_boot < 1:
        raise ProbeError(f"--n-boot {n_boot} is not positive", "pass --n-boot 1000 (or any positive number)")
    if BASELINE not in branches(tree):
        raise ProbeError("the store has no baseline branch", "pass a store written by `alignit-probe record`")
    known = [m for m in branches(tree) if m != BASELINE]
    unknown = sorted(set(models or ()) - set(known))
    if unknown:
        raise ProbeError(f"no model {', '.join(unknown)} in the store", "choose among: " + ", ".join(known))
    models = list(models or known)
    frames = []
    single = [s for s in stages if s not in LAYERED]
    if single:
        frames.append(compare(tree, stages=single, n_boot=n_boot, seed=seed).assign(layers=1))
    for stage in (s for s in stages if s in LAYERED):
        for model in models:
            pooled, n_layers = pool_layers(tree, stage, model)
            if n_layers:
                frames.append(compare(pooled, stages=(stage,), n_boot=n_boot, seed=seed).assign(layers=n_layers))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(TABLE_COLUMNS))
    keep = (rows.metric == metric) & rows.role.isin(list(roles)) & rows.stage.isin(list(stages))
    rows = rows[keep & rows.model.isin(models)]
    order = {m: i for i, m in enumerate(branches(tree))}
    rows = rows.assign(
        _m=rows.model.map(order), _s=rows.stage.map(STAGES.index), _r=rows.role.map(list(roles).index)
    ).sort_values(["_m", "_s", "_r"])
    return rows[list(TABLE_COLUMNS)].reset_index(drop=True)


def fmt_ci(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"
