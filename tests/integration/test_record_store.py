"""Recording, the store and compare on the toy pipeline with a real Custom Diffusion artifact."""

import json

import numpy as np
import pytest
import torch

from alignit_probe import store as st
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.capture.sites import record_kv
from alignit_probe.cli import main
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.text.concepts import Concept

PROMPTS = ["photo of a <new1> cat on the beach", "a <new1> cat wearing a red hat", "a <new1> in the snow"]
CONCEPTS = [Concept("<new1>", "cat")]


@pytest.fixture(scope="module")
def stores(cd_pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return {
        fmt: record_store(cd_pair, CONCEPTS, PROMPTS, d / f"s.{fmt}", RecordOptions(batch_size=2), progress=False)
        for fmt in ("zarr", "nc")
    }


def batches(prompts: list[str], size: int = 2) -> list[list[str]]:
    """The prompts in the batches ``stores`` recorded them in (batch size 2): a reference computed over the same
    rows as the store is equal bit for bit, whatever the kernels' rounding by batch layout (``tests.layout``)."""
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


def test_encoder_output_equals_pipeline_encode_prompt(cd_pair, stores):
    tree = st.open_store(stores["zarr"])
    for model, pipe in (("custom", cd_pair.custom), ("baseline", cd_pair.baseline)):
        text = st.group(tree, model, "text")
        prompts = [str(p) for p in text.prompt_text.values]
        expected = torch.cat([pipe.encode_prompt(b, "cpu", 1, False)[0].detach() for b in batches(prompts)])
        assert np.array_equal(text.encoder_output.values, expected.numpy())
        assert np.array_equal(text.encoder_layer.isel(layer=-1).values.shape, expected.shape)


def test_recorded_kv_equal_custom_diffusion_projection(cd_pair, stores):
    tree = st.open_store(stores["zarr"])
    cs = [cd_pair.custom.encode_prompt(b, "cpu", 1, False)[0].detach() for b in batches(PROMPTS)]
    kvs = [record_kv(cd_pair.custom.unet, c) for c in cs]
    for path in kvs[0]:
        g = st.group(tree, "custom", f"kv/{path}")
        k, v = (torch.cat([kv[path][i] for kv in kvs]) for i in (0, 1))
        assert np.array_equal(g.key.values, k.numpy()) and np.array_equal(g.value.values, v.numpy())
        proc = cd_pair.custom.unet.attn_processors[path + ".processor"]
        for c, kv in zip(cs, kvs):
            with torch.no_grad():
                assert torch.equal(kv[path][0], proc.to_k_custom_diffusion(c))  # the CD projection, not attn.to_k
                assert not torch.equal(kv[path][0], cd_pair.custom.unet.get_submodule(path).to_k(c))


def test_zarr_and_netcdf_hold_the_same(stores):
    a, b = st.open_store(stores["zarr"]), st.open_store(stores["nc"])
    for model in ("baseline", "custom"):
        assert st.kv_paths(a, model) == st.kv_paths(b, model)
        for name in ["text"] + [f"kv/{p}" for p in st.kv_paths(a, model)]:
            ga, gb = st.group(a, model, name), st.group(b, model, name)
            for var in ga.data_vars:
                assert np.array_equal(ga[var].values, gb[var].values)
        la, lb = st.token_labels(a, model), st.token_labels(b, model)
        assert (la.role.values.astype(object) == lb.role.values.astype(object)).all()
        assert np.array_equal(la.ref_index.values, lb.ref_index.values)


def test_labels_and_attrs(stores, cd_dir):
    tree = st.open_store(stores["zarr"])
    lab = st.token_labels(tree, "custom")
    assert list(lab.token_str.values[0][:7].astype(object)) == [
        "<|startoftext|>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "<new1>",
        "cat</w>",
        "on</w>",
    ]
    assert list(lab.role.values[0][4:6].astype(object)) == ["concept", "concept"]
    attrs = st.model_attrs(tree, "custom")
    assert attrs["method"] == "custom_diffusion" and attrs["artifacts"][0]["path"].startswith(cd_dir[:10])
    assert len(attrs["artifacts"][0]["sha256"]) == 64
    assert st.store_attrs(tree)["versions"]["torch"] == torch.__version__


def test_compare_rows_schema_and_exact_zeros(stores):
    tree = st.open_store(stores["zarr"])
    rows = compare_rows(tree)
    assert all(
        set(r) == {"model", "reference", "stage", "layer", "role", "metric", "value", "ci_low", "ci_high", "n"}
        for r in rows
    )
    assert {r["stage"] for r in rows} == {"token_embedding", "encoder_layer", "encoder_output", "key", "value"}
    assert {r["role"] for r in rows} == {"concept", "context", "special", "padding"}
    emb = {(r["role"], r["metric"]): r for r in rows if r["stage"] == "token_embedding"}
    # Custom Diffusion leaves every embedding but the modifier's untouched
    assert emb[("context", "relative_l2")]["value"] == 0.0 and emb[("special", "cosine_distance")]["value"] == 0.0
    assert emb[("concept", "relative_l2")]["value"] > 0
    key_ctx = [r for r in rows if r["stage"] == "key" and r["role"] == "context" and r["metric"] == "relative_l2"]
    assert len(key_ctx) == 7 and all(r["value"] > 0 for r in key_ctx)  # the other tokens drift too
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows if r["n"])


def test_compare_json_cli(stores, capsys):
    assert main(["compare", str(stores["nc"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    layers = {r["layer"] for r in rows if r["stage"] == "encoder_layer"}
    assert layers == {0, 1, 2}
    assert {r["layer"] for r in rows if r["stage"] == "encoder_output"} == {None}


def test_bfloat16_recording_is_finite_and_close_to_float32(toy_dir, cd_dir, tmp_path):
    from alignit_probe.models.load import load_pair

    pair = load_pair(toy_dir, [cd_dir], dtype=torch.bfloat16, progress=False)
    out = record_store(pair, CONCEPTS, PROMPTS[:2], tmp_path / "bf16.zarr", progress=False)
    ref = st.open_store(
        record_store(
            load_pair(toy_dir, [cd_dir], progress=False), CONCEPTS, PROMPTS[:2], tmp_path / "f32.zarr", progress=False
        )
    )
    tree = st.open_store(out)
    assert st.model_attrs(tree, "custom")["dtype"] == "bfloat16"
    for name in ["text"] + [f"kv/{p}" for p in st.kv_paths(tree, "custom")]:
        low, high = st.group(tree, "custom", name), st.group(ref, "custom", name)
        for var in low.data_vars:
            a, b = low[var].values, high[var].values
            assert np.isfinite(a).all()
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05, (name, var)


@pytest.mark.gpu
def test_float16_on_gpu_has_no_nans(toy_dir, cd_dir, tmp_path):
    from alignit_probe.models.load import load_pair

    pair = load_pair(toy_dir, [cd_dir], device="cuda", dtype=torch.float16, progress=False)
    tree = st.open_store(record_store(pair, CONCEPTS, PROMPTS, tmp_path / "f16.zarr", progress=False))
    for name in ["text"] + [f"kv/{p}" for p in st.kv_paths(tree, "custom")]:
        for var in st.group(tree, "custom", name).data_vars:
            assert np.isfinite(st.group(tree, "custom", name)[var].values).all()


@pytest.mark.gpu
def test_page_locked_host_copies_equal_pageable_ones(monkeypatch):
    """A batch copied to the host through page-locked buffers (here several: 16 KiB each) holds what per-tensor
    copies hold, in the store's dtype, also from non-contiguous (token-cut) tensors."""
    from alignit_probe.record import batch
    from alignit_probe.record.batch import release_host_copies, to_host, to_host_all

    monkeypatch.setattr(batch, "PINNED_CHUNK", 16 * 2**10)

    g = torch.Generator(device="cuda").manual_seed(0)
    tensors = [
        torch.randn(4, 77, 64, device="cuda", generator=g)[:, :50],
        torch.randn(3, 5, device="cuda", generator=g).half(),
        torch.randn(2, 3, 77, 32, device="cuda", generator=g)[:, :, :20],
    ]
    for dtype in (np.float16, np.float32):
        got = to_host_all(tensors, dtype)
        for a, t in zip(got, tensors):
            assert a.dtype == dtype and a.shape == tuple(t.shape)
            np.testing.assert_array_equal(a, to_host(t, dtype))
        del got
        release_host_copies()  # the cached page-locked blocks given back; the next batch locks new ones


def test_unet_only_note_said_once_and_not_for_a_model_that_changed_nothing(toy_dir, arts, tmp_path):
    """Two UNet-only LoRA models and one that changed nothing: one warning names both LoRA models (each keeps
    its note in the store); the unchanged model is said to have changed nothing, and gets no UNet-only note."""
    import warnings

    from alignit_probe.errors import ProbeWarning
    from alignit_probe.models.load import load_models

    specs = {"same": str(toy_dir), "l1": str(arts["lora"]), "l2": str(arts["lora"])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = load_models(str(toy_dir), specs, progress=False)
        out = record_store(
            models,
            [Concept("sks", "dog")],
            ["a photo of sks dog"],
            tmp_path / "s.zarr",
            RecordOptions(),
            progress=False,
        )
    said = [str(w.message) for w in caught if issubclass(w.category, ProbeWarning) and "UNet-only" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("the text encoder(s) of l1, l2 hold"), said
    assert any("changed nothing" in w for w in models.pairs[0].warnings)
    tree = st.open_store(out)
    notes = {m: [w for w in st.model_attrs(tree, m).get("warnings", []) if "UNet-only" in w] for m in specs}
    assert notes["same"] == [] and len(notes["l1"]) == len(notes["l2"]) == 1, notes
