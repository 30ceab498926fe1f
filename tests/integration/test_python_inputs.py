"""The Python front door checks its arguments as the CLI checks flags: one string is one item, anything else of the
wrong kind is a one-line ProbeError naming the argument; stores of someone else, of another format or unfinished
are told apart; maps from Python carry their token labels."""

import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from alignit_probe import AlignITOptions, Concept, Probe, ProbeError, ProbeWarning, compare, open_store
from alignit_probe.schema import ATTENTION_STAGE, STAGES

PROMPTS = ["a photo of a <new1> cat", "a <new1> cat on the beach", "a <new1> cat in the snow"]


@pytest.fixture(scope="module")
def probe(toy_dir, cd_dir):
    return Probe(toy_dir, custom=str(cd_dir), concepts=[Concept("<new1>", "cat")], device="cpu", progress=False)


@pytest.fixture(scope="module")
def store(probe, tmp_path_factory):
    return probe.record(PROMPTS, tmp_path_factory.mktemp("py") / "s.zarr")


def one_line(call, match: str) -> ProbeError:
    with pytest.raises(ProbeError, match=match) as e:
        call()
    assert "\n" not in str(e.value) and e.value.fix
    return e.value


def test_compare_checks_its_arguments(store):
    rows = compare(store, stages="key", n_boot=10)  # one stage as a string: that stage, not its letters
    assert set(rows.stage) == {"key"} and len(rows)
    one_line(lambda: compare(store, stages=["keys"]), "unknown stage 'keys' — choose among: token_embedding")
    one_line(lambda: compare(store, reference="nope"), "no model 'nope' in the store — choose among: baseline")
    for bad in (123, None):
        one_line(lambda bad=bad: compare(bad), "store takes a store path, a list of shard paths or a DataTree")
    one_line(lambda: compare(store, n_boot="100"), "n_boot must be a whole number")
    one_line(lambda: compare(store, n_boot=0), "n_boot must be at least 1")
    assert set(compare(store, n_boot=10).stage) <= set(STAGES) | {ATTENTION_STAGE}


def test_probe_arguments_of_the_wrong_kind_are_named(probe, toy_dir, store):
    one_line(lambda: Probe(toy_dir, custom=123), "custom= takes a SPEC, .* not int")
    assert AlignITOptions(blocks="up").blocks == ["up"] and AlignITOptions(resolutions=16).resolutions == [16]
    one_line(lambda: AlignITOptions(blocks=3), "blocks takes a string or a list of strings, not int 3")
    one_line(lambda: AlignITOptions(layers=["down1.0", 2]), "layers holds int 2")
    one_line(lambda: Concept(123, "cat"), "Concept takes strings: got token 123")
    one_line(lambda: probe.alignit_kv(PROMPTS[:1], {"alfa": 0.5}), "AlignITOptions has no field 'alfa' — use template")
    one_line(lambda: probe.alignit(PROMPTS[:1], steps=0), "steps must be at least 1, not 0")
    one_line(lambda: probe.swap(["a dog"], "a cat"), "key_prompt takes one prompt, not list")
    one_line(lambda: probe.record([], store.parent / "e.zarr"), "no prompts given")
    one_line(lambda: probe.record([1], store.parent / "e.zarr"), "prompts holds int 1")
    as_dict = probe.alignit_kv(PROMPTS[0], {"alpha": 0.5})  # one prompt as a string; options as a dict
    assert as_dict.options.alpha == 0.5 and len(as_dict.custom) == 1
    assert as_dict.custom[0].text == PROMPTS[0]


def test_a_concept_without_class_word_is_said_and_kept(toy_dir, cd_dir, tmp_path):
    probe = Probe(toy_dir, custom=str(cd_dir), concepts=[Concept("<new1>")], device="cpu", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = probe.record(PROMPTS, tmp_path / "s.zarr", batch_size=1)
    said = [
        str(w.message) for w in caught if issubclass(w.category, ProbeWarning) and "no class word" in str(w.message)
    ]
    assert said and len(set(said)) == 1
    kept = json.loads(zarr.open_group(str(out), mode="r").attrs["warnings"])
    assert sum("has no class word" in w for w in kept) == 1  # once, not once per batch
    rows = compare(out, stages=["key"], n_boot=10)
    assert (rows[rows.role == "concept"].n == 0).all()


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_foreign_other_format_and_unfinished_stores_are_told_apart(store, tmp_path):
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"x": ("a", np.arange(3))}).to_zarr(foreign)
    err = one_line(lambda: open_store(foreign), "not one alignit-probe wrote")
    assert "overwrite" not in str(err)  # someone else's data: never advised to overwrite it
    import shutil

    for name, attrs, match in (
        ("v99.zarr", {"format": "alignit-probe/99"}, "is a store of format 'alignit-probe/99'; this alignit-probe"),
        ("cut.zarr", {"complete": 0}, "is an incomplete alignit-probe store"),
    ):
        copy = tmp_path / name
        shutil.copytree(store, copy)
        group = zarr.open_group(str(copy), mode="r+")
        group.attrs.update(attrs)
        zarr.consolidate_metadata(str(copy))
        one_line(lambda copy=copy: open_store(copy), match)


def test_maps_from_python_carry_the_branch_token_labels(probe, tmp_path):
    maps = probe.attention(PROMPTS[:2], alignit=True, steps=1, height=32, width=32)
    for ds, _ in maps.values():
        assert ds["token_str"].dims == ("prompt", "token") and ds["role"].dims == ("prompt", "token")
        roles = ds["role"].values
        assert (roles[:, 0] == "special").all() and "context" in roles[0]
    custom = maps["custom"][0]
    concept = [t for t, r in zip(custom["token_str"].values[0], custom["role"].values[0]) if r == "concept"]
    assert concept == ["<new1>", "cat</w>"]
    assert list(maps["baseline"][0]["token_str"].values[0][:6]) == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "cat</w>",
    ]
    nodes = {f"{b}/attention": ds for b, (ds, _) in maps.items()}  # stored: labels once, in the branch's group
    out = probe.record(PROMPTS[:2], tmp_path / "m.zarr", alignit=True, nodes=nodes)
    tree = open_store(out)
    assert "token_str" not in tree["custom/attention"].to_dataset(inherit=False).coords
    assert (tree["custom"].to_dataset()["token_str"].values == custom["token_str"].values).all()


def test_store_group_takes_short_labels_and_names_what_is_there(store):
    from alignit_probe.store import group

    tree = open_store(store)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    by_label, by_path = group(tree, "custom", "kv/down1.0"), group(tree, "custom", f"kv/{path}")
    assert by_label.identical(by_path) and by_label["role"].dims == ("prompt", "token")
    one_line(lambda: group(tree, "cd", "kv/down1.0"), "no model 'cd' in the store — choose among: baseline, custom")
    one_line(
        lambda: group(tree, "custom", "kv/zz"), "no attn2 layer 'zz' recorded for custom — choose among: kv/down0.0"
    )
    one_line(lambda: group(tree, "custom", "txt"), "no group 'txt' under custom — choose among: embedding, kv, text")
    assert json.loads(zarr.open_group(str(store), mode="r").attrs["command"])[0].startswith("Probe.record, Python")


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_data_alignit_probe_did_not_write_is_never_replaced(probe, tmp_path):
    foreign = tmp_path / "theirs.zarr"
    xr.Dataset({"x": ("a", np.arange(3))}).to_zarr(foreign)
    for overwrite in (False, True):
        err = one_line(
            lambda o=overwrite: probe.record(PROMPTS[:1], foreign, overwrite=o), "is not an alignit-probe store"
        )
        assert "someone else's data" in str(err)
    assert xr.open_zarr(foreign)["x"].values.tolist() == [0, 1, 2]
    partial = tmp_path / "mine.zarr.partial"
    xr.Dataset({"y": ("a", np.arange(2))}).to_zarr(partial)
    one_line(lambda: probe.record(PROMPTS[:1], tmp_path / "mine.zarr"), "is not an unfinished alignit-probe store")
    assert xr.open_zarr(partial)["y"].values.tolist() == [0, 1]
    plain = tmp_path / "notes.zarr.partial"  # not even a zarr
    plain.mkdir()
    (plain / "data.txt").write_text("precious")
    one_line(lambda: probe.record(PROMPTS[:1], tmp_path / "notes.zarr"), "is not an unfinished alignit-probe store")
    assert (plain / "data.txt").read_text() == "precious"
    ours = probe.record(PROMPTS[:1], tmp_path / "ours.zarr")
    one_line(lambda: probe.record(PROMPTS[:1], ours), r"already exists — pass --overwrite \(overwrite=True in Python\)")
    assert probe.record(PROMPTS[:1], ours, overwrite=True) == ours


def test_more_arguments_of_the_wrong_kind_are_named(probe, toy_dir, store):
    from alignit_probe import layer_label
    from alignit_probe.arguments import as_concepts, as_shard

    assert as_concepts({"<new1>": "cat"}) == as_concepts([("<new1>", "cat")]) == [Concept("<new1>", "cat")]
    assert as_concepts("<new1>") == [Concept("<new1>")]
    one_line(lambda: as_concepts(123), "concepts= takes Concepts, not int")
    one_line(lambda: as_concepts([None]), "concepts= holds NoneType None")
    one_line(lambda: Probe(123), "baseline= takes a pipeline directory, a hub id or a pipeline, not int")
    one_line(lambda: Probe(toy_dir, custom={"cd": 123}), r"custom\['cd'\] is int")
    assert as_shard("1/4") == (1, 4) == as_shard((1, 4))
    one_line(lambda: as_shard("4/4"), "shard must be")
    one_line(lambda: AlignITOptions(alpha="0.5"), "alpha must be a number")
    one_line(lambda: AlignITOptions(alpha=2), r"alpha 2 is outside \[0, 1\]")
    one_line(lambda: AlignITOptions(blocks="upp"), "unknown block 'upp'")
    for kw, match in (
        (dict(seed="x"), "seed must be a whole number"),
        (dict(guidance_scale="x"), "guidance_scale must be a number"),
        (dict(height=30), "height must be a positive multiple of 8"),
        (dict(width=0), "width must be a positive multiple of 8"),
    ):
        one_line(lambda kw=kw: probe.alignit(PROMPTS[:1], **kw), match)
    one_line(lambda: probe.record(PROMPTS[:1], 5), "out= is int")
    assert len(compare(store, stages=["key", "key"], n_boot=5)) == len(compare(store, stages="key", n_boot=5))
    one_line(lambda: compare(store, stages=[]), "no stages given")
    one_line(lambda: compare(store, stages=["pooled"]), r"no rows match stages=\['pooled'\]")
    one_line(lambda: compare(store, seed="x"), "seed must be a whole number")
    one_line(lambda: compare({"a": 1}), "not dict")
    assert [layer_label(x) for x in ("down1.0", "nonsense", 3, None)] == ["down1.0", "nonsense", "3", ""]


def test_python_errors_name_the_keyword_beside_the_flag(probe, tmp_path):
    err = one_line(lambda: probe.record(PROMPTS[:1], tmp_path / "c.zarr", clip_skip=9), "reaches past")
    assert err.fix == "pass --clip-skip 3 or less (in Python: clip_skip=)"
    err = one_line(lambda: probe.alignit_kv(PROMPTS[:1], AlignITOptions(end_tokens="x")), "end-token source 'x'")
    assert err.fix == "use --end-tokens baseline or dummy (in Python: AlignITOptions(end_tokens=))"
    probe.speaks_cli = True  # the CLI's Probe: flags alone
    try:
        err = one_line(lambda: probe.alignit_kv(PROMPTS[:1], AlignITOptions(end_tokens="x")), "end-token source")
        assert err.fix == "use --end-tokens baseline or dummy"
    finally:
        probe.speaks_cli = False


def test_with_several_models_a_concept_check_names_its_model(toy_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    for name in ("<qa>", "<qb>"):
        save_file(
            {"emb_params": torch.randn(1, 32, generator=torch.Generator().manual_seed(3))},
            str(tmp_path / f"{name}.safetensors"),
        )
    custom = {m: str(tmp_path / f"<q{m}>.safetensors") for m in ("a", "b")}
    probe = Probe(toy_dir, custom=custom, concepts=[Concept("<qb>", "cat")], device="cpu", progress=False)
    err = one_line(
        lambda: probe.record(["a <qb> cat"], tmp_path / "s.zarr"),
        r"^model a: concept token '<qb>' is unknown to the customized model's tokenizer",
    )
    assert "every model of one store shares the concepts: record a in a store of its own" in err.fix
