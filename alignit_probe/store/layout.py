"""The store: an xarray DataTree with one branch per model, written to zarr (default) or netCDF (``.nc``).

Layout (every branch has the same shape)::

    /                       attrs: format, complete, concepts, n_prompts, versions, command, warnings, options,
                            n_tokens (kept token positions) / n_tokens_full, fingerprint, shard, prompt_range,
                            written ({model: prompts}) (lists and dicts as JSON strings)
    /<model>                coords (prompt, token): prompt_text, token_id, token_str, role, concept, ref_index
                            attrs: model_id, method, artifacts, dtype, device, seed, warnings, ...
    /<model>/text           token_embedding (prompt, token, channel), encoder_layer (prompt, layer, token, channel),
                            encoder_output (prompt, token, channel)
    /<model>/kv/<attn2 path>  key, value (prompt, token, channel)
    SDXL: /<model>/text and /<model>/text_2 (token_embedding, encoder_layer of each text encoder: their widths
    differ), /<model>/text_out (encoder_output (prompt, token, channel), pooled (prompt, pooled_channel))

``<model>`` is ``baseline``, each customized model's name (``custom`` by default; ``--custom NAME=SPEC``), and
``alignit`` (one customized model) or ``alignit-<name>`` (several). ``ref_index`` is the position of
each token's partner in the baseline's tokens of the same prompt (-1: none), so metrics compare role-aligned tokens.
Writes stream into ``<out>.partial`` (zarr) and are renamed into place when complete: a failed run leaves nothing
at ``<out>``, and rerunning the same job resumes the partial store (``writer.StoreWriter``). Chunks: one batch of
prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import xarray as xr

from ..errors import ProbeError
from ..schema import ALIGNIT, BASELINE, short_layer, unet_order_key

FORMAT = "alignit-probe/1"
JSON_ATTRS = (
    "artifacts",
    "warnings",
    "concepts",
    "versions",
    "command",
    "sites",
    "options",
    "written",
    "custom_ids",
    "prompt_range",
    "custom_models",
)
TOKEN_COORDS = ("prompt_text", "token_id", "token_str", "role", "concept", "ref_index")


def is_netcdf(path: str | os.PathLike) -> bool:
    return str(path).endswith(".nc")


NOT_A_STORE = {".txt", ".json", ".csv", ".tsv", ".md", ".html", ".htm", ".png", ".jpg", ".jpeg", ".pdf", ".log"}
NOT_A_STORE |= {".py", ".yaml", ".yml", ".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz", ".npy", ".pkl"}
NOT_A_STORE |= {".h5", ".hdf5", ".gz", ".zip", ".tar"}  # names a store written as a zarr folder would be wrong with


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) if ``out`` exists and may not be replaced, or is named like another kind of
    file (a store is a zarr folder, ``.zarr`` by convention, or a ``.nc`` file)."""
    out = Path(out)
    if out.suffix.lower() in NOT_A_STORE:
        raise ProbeError(
            f"output {out} is named like a {out.suffix} file, but a store is a zarr folder (or a .nc file)",
            f"name it {out.with_suffix('.zarr').name}",
        )
    if out.is_dir() and any(out.iterdir()) and not written_by_us(out):
        raise ProbeError(
            f"output {out} exists and is not an alignit-probe store: it may be someone else's data",
            "choose another --out (--overwrite replaces only what alignit-probe wrote)",
        )
    if out.exists() and not overwrite:
        raise ProbeError(
            f"output {out} already exists",
            "pass --overwrite (overwrite=True in Python) to replace it, or another --out",
        )
    if not out.parent.exists():
        raise ProbeError(f"output folder {out.parent} does not exist", "create it first or choose another --out")
    return out


def written_by_us(path: Path) -> bool:
    """A zarr folder whose root attributes name this toolkit's format (any version, complete or not)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return str((meta.get("attributes") or {}).get("format", "")).startswith("alignit-probe/")


def encode_attrs(attrs: dict) -> dict:
    return {k: json.dumps(v) if k in JSON_ATTRS else v for k, v in attrs.items() if v is not None}


def decode_attrs(attrs: dict) -> dict:
    return {k: json.loads(v) if k in JSON_ATTRS and isinstance(v, str) else v for k, v in attrs.items()}


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def open_store(path: str | os.PathLike, chunks: dict | None = None) -> xr.DataTree:
    """Open a store lazily (dask-backed with ``chunks={}``; in memory-mapped numpy otherwise)."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = "run `alignit-probe record` first"
        if partial.exists():
            try:
                merged = "merged_from" in (json.loads((partial / "zarr.json").read_text()).get("attributes") or {})
            except (OSError, ValueError, AttributeError):
                merged = False
            hint = f"rerun the same {'merge' if merged else 'record'} command to finish it"
        raise ProbeError(f"store {path} does not exist", hint)
    not_a_store(path)
    if not is_netcdf(path) and path.is_dir():  # the root's attributes first: an unfinished store is not opened
        try:
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes") or {}
        except (OSError, ValueError, AttributeError):
            attrs = {}
        check_complete(path, attrs)
    try:
        with warnings.catch_warnings():  # (a store without consolidated metadata: read all the same)
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated metadata")
            if is_netcdf(path):
                tree = xr.open_datatree(path, engine="h5netcdf", chunks=chunks)
            else:
                tree = xr.open_datatree(path, engine="zarr", chunks=chunks)
    except Exception as e:  # noqa: BLE001 - any backend failure is a bad input here
        raise ProbeError(
            f"cannot open store {path}: {type(e).__name__}", "pass a store written by `alignit-probe record`"
        ) from None
    check_complete(path, tree.attrs)
    return tree


def not_a_store(path: Path) -> None:
    """A one-line error for what users pass where a store belongs: a pipeline directory, the output folder of
    ``alignit`` or ``attention`` (its store is inside), a file that is neither zarr nor netCDF."""
    if path.is_dir() and not (path / "zarr.json").is_file():
        if (path / "model_index.json").is_file():
            raise ProbeError(
                f"{path} is a diffusers pipeline, not a store",
                f"record one first: alignit-probe record --baseline {path} … --out STORE",
            )
        inner = path / "store.zarr"
        if (inner / "zarr.json").is_file():
            raise ProbeError(f"{path} is an output folder holding a store", f"pass {inner}")
        raise ProbeError(f"{path} is a folder but no zarr store", "pass a store written by `alignit-probe record`")
    if path.is_file() and not is_netcdf(path):
        raise ProbeError(
            f"{path} is a file but no store", "pass a store written by `alignit-probe record` (a .zarr folder or .nc)"
        )


def check_complete(path: Path, attrs: dict) -> None:
    """A complete store of this toolkit (its root attributes say so), else a one-line error with the fix."""
    if attrs.get("format") != FORMAT or not attrs.get("complete"):
        if path.name.endswith(".partial") and attrs.get("format") == FORMAT:
            final = path.name[: -len(".partial")]
            if attrs.get("merged_from"):
                raise ProbeError(f"{path} is an unfinished merge", f"rerun the same merge command, then pass {final}")
            raise ProbeError(
                f"{path} is an unfinished recording", f"rerun the same record command to resume it, then pass {final}"
            )
        fmt = attrs.get("format")
        if not fmt:
            raise ProbeError(
                f"{path} is a zarr store, but not one alignit-probe wrote (its root has no format attribute)",
                "pass a store written by `alignit-probe record` (or Probe.record)",
            )
        if fmt != FORMAT:
            raise ProbeError(
                f"{path} is a store of format {fmt!r}; this alignit-probe reads {FORMAT!r}",
                "read it with the alignit-probe version that wrote it (root attribute versions), or record it again",
            )
        raise ProbeError(
            f"{path} is an incomplete alignit-probe store (its recording stopped)",
            "rerun the command that wrote it to resume (or with --overwrite / overwrite=True to start over)",
        )


def models(tree: xr.DataTree) -> list[str]:
    """Branches that hold a recorded model: the baseline, the customized models in the order they were given
    (root attribute ``custom_models``), then their AlignIT branches in the same order, then any other."""
    names = [n for n, node in tree.children.items() if "token_id" in node.coords]
    given = [BASELINE] + list(store_attrs(tree).get("custom_models") or [])
    given += [ALIGNIT] + [f"{ALIGNIT}-{m}" for m in given[1:]]
    rank = {n: i for i, n in enumerate(given)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def model_attrs(tree: xr.DataTree, model: str) -> dict:
    return decode_attrs(dict(tree[model].attrs))


def store_attrs(tree: xr.DataTree) -> dict:
    return decode_attrs(dict(tree.attrs))


def token_labels(tree: xr.DataTree, model: str) -> xr.Dataset:
    """The per-token coordinates of one branch."""
    return tree[model].to_dataset(inherit=False)[list(TOKEN_COORDS)]


def group(tree: xr.DataTree, model: str, name: str) -> xr.Dataset:
    """One group of a branch (``text``, ``kv/<path>`` — the attn2 path or its short label, ``kv/down1.0`` —, …) with
    the branch's token labels as coordinates."""
    if model not in tree.children:
        raise ProbeError(f"no model {model!r} in the store", "choose among: " + ", ".join(models(tree)))
    kv = tree[model].children.get("kv")
    if name.startswith("kv/") and (kv is None or name[3:] not in kv.children):  # a short label, or no such layer
        by_label = {label: p for p in kv_paths(tree, model) if (label := short_layer(p, strict=False))}
        if name[3:] not in by_label:
            raise ProbeError(
                f"no attn2 layer {name[3:]!r} recorded for {model}",
                "choose among: " + ", ".join(f"kv/{label}" for label in by_label),
            )
        name = f"kv/{by_label[name[3:]]}"
    elif not name.startswith("kv/") and name not in tree[model].children:
        raise ProbeError(
            f"no group {name!r} under {model}", "choose among: " + ", ".join(tree[model].children) + " (kv/<layer>)"
        )
    ds = tree[f"{model}/{name}"].to_dataset(inherit=True)
    return ds.assign_coords({k: v for k, v in token_labels(tree, model).coords.items() if k in TOKEN_COORDS})


def kv_paths(tree: xr.DataTree, model: str) -> list[str]:
    """attn2 paths recorded for a branch, in UNet order (down blocks, mid block, up blocks)."""
    node = tree[model]
    present = list(node["kv"].children) if "kv" in node.children else []
    return sorted(present, key=unet_order_key)
