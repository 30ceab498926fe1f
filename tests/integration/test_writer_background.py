"""The store writer's background thread (used where a GPU computes) must leave the same partial store as the inline
path when the caller fails: every batch appended before the failure is committed (root attribute ``written``)
and on disk, so a rerun resumes after it. Forced on CPU with ``StoreWriter(..., background=True)``."""

import threading
import time

import numpy as np
import pytest
import xarray as xr

from alignit_probe.store import decode_attrs, zarr_chunks
from alignit_probe.store.batch import Batch
from alignit_probe.store.writer import StoreWriter

MODELS = ("baseline", "custom")
KV = "kv/down_blocks.0.attentions.0.transformer_blocks.0.attn2"
N_TOKENS, N_CHANNELS = 5, 4


class Failure(RuntimeError):
    """The caller's own failure (a model crashing mid-run), raised inside the ``with`` block."""


def batch(model: str, start: int, n: int) -> Batch:
    """A small recorded batch like ``record_batch`` makes: token coordinates, a ``text`` group and one K/V site,
    with values that identify the model and the prompt."""
    pt, ptc = ("prompt", "token"), ("prompt", "token", "channel")
    prompt = np.arange(start, start + n)
    roles = np.array([["special", "context", "concept", "special", "padding"]] * n, dtype=object)
    coords = xr.Dataset(
        coords={
            "prompt": prompt,
            "token": np.arange(N_TOKENS),
            "prompt_text": ("prompt", np.array([f"prompt {i}" for i in prompt], dtype=object)),
            "token_id": (pt, (prompt[:, None] * 10 + np.arange(N_TOKENS)).astype(np.int64)),
            "token_str": (pt, np.array([[f"t{i}.{j}" for j in range(N_TOKENS)] for i in prompt], dtype=object)),
            "role": (pt, roles),
            "concept": (pt, np.where(roles == "concept", 0, -1).astype(np.int16)),
            "ref_index": (pt, np.tile(np.arange(N_TOKENS, dtype=np.int16), (n, 1))),
        }
    )
    shift = MODELS.index(model) * 1000.0
    x = np.arange(n * N_TOKENS * N_CHANNELS, dtype=np.float32).reshape(n, N_TOKENS, N_CHANNELS) + start * 100 + shift
    index = {"prompt": prompt, "token": np.arange(N_TOKENS)}
    text = xr.Dataset(
        {
            "token_embedding": (ptc, x),
            "encoder_layer": (("prompt", "layer", "token", "channel"), np.stack([x, x + 0.5], 1)),
            "encoder_output": (ptc, x * 2),
        },
        coords={**index, "layer": [0, 1]},
    )
    kv = xr.Dataset({"key": (ptc, x - 1), "value": (ptc, -x)}, coords=index, attrs={"site": KV})
    return Batch(coords, {"text": text, KV: kv})


BATCHES = [(m, batch(m, start, 2)) for start in (0, 2, 4) for m in MODELS]  # as ``record`` interleaves them


@pytest.fixture(autouse=True)
def slow_disk(monkeypatch):
    """Writes in the writer thread are made slower than the caller (as on a GPU, where a batch is computed faster
    than it is written), so batches are still queued when the caller fails, whatever the machine's speed."""
    update = zarr_chunks.update_attributes

    def slow_update(folder, attrs):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.05)
        update(folder, attrs)

    monkeypatch.setattr(zarr_chunks, "update_attributes", slow_update)


def fail_after_appends(out, background: bool) -> None:
    """Append every batch (and a warning after the first ones), then fail in the caller's thread before
    ``commit``."""
    with pytest.raises(Failure):
        with StoreWriter(
            out,
            attrs={"fingerprint": "job", "custom_models": ["custom"]},
            chunk_prompts=2,
            n_prompts=8,
            background=background,
        ) as w:
            for i, (model, b) in enumerate(BATCHES):
                w.append(model, b, {"model_id": model})
                if i == 1:
                    w.add_warnings("baseline", ["noted before the failure"])
            raise Failure("the caller failed")


def open_partial(out) -> xr.DataTree:
    partial = out.with_name(out.name + ".partial")
    assert partial.is_dir() and not out.exists()
    return xr.open_datatree(partial, engine="zarr", consolidated=False, chunks=None)


def appended(model: str, group: str) -> xr.Dataset:
    parts = [b.coords if group == "" else b.groups[group] for m, b in BATCHES if m == model]
    return xr.concat(parts, dim="prompt", data_vars="all", coords="minimal")


def test_background_commits_every_appended_batch_when_the_caller_fails(tmp_path):
    out = tmp_path / "s.zarr"
    fail_after_appends(out, background=True)
    tree = open_partial(out)
    n = {m: sum(b.coords.sizes["prompt"] for mm, b in BATCHES if mm == m) for m in MODELS}
    assert decode_attrs(dict(tree.attrs))["written"] == n
    for model in MODELS:
        for group in ("", "text", KV):
            node = tree[f"{model}/{group}".rstrip("/")].to_dataset(inherit=False)
            want = appended(model, group)
            got = node.isel(prompt=slice(0, n[model])).load()
            for name in want.variables:
                if "prompt" in want[name].dims:
                    np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=f"{model} {name}")
    assert decode_attrs(dict(tree["baseline"].attrs))["warnings"] == ["noted before the failure"]
    with StoreWriter(out, attrs={"fingerprint": "job", "custom_models": ["custom"]}, background=True) as w:
        assert w.resumed and all(w.written(m) == n[m] for m in MODELS)


def test_background_and_inline_leave_the_same_partial_store(tmp_path):
    trees = []
    for background in (False, True):
        out = tmp_path / f"{background}.zarr"
        fail_after_appends(out, background)
        trees.append(open_partial(out))
    a, b = trees
    assert decode_attrs(dict(a.attrs)) == decode_attrs(dict(b.attrs))
    assert sorted(n.path for n in a.subtree) == sorted(n.path for n in b.subtree)
    for node in a.subtree:
        da, db = node.to_dataset(inherit=False).load(), b[node.path].to_dataset(inherit=False).load()
        xr.testing.assert_identical(da, db)
