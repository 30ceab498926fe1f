"""Any number of customized models in one store: ``--custom NAME=SPEC`` branches, compare rows per model, the
checkpoints figure, and ``Probe`` on pipelines already in memory."""

import json
import re

import numpy as np
import pytest
import torch

from alignit_probe import Concept, Probe, ProbeError, compare, open_store
from alignit_probe import store as st
from alignit_probe.cli import main
from alignit_probe.models.load import parse_custom_specs
from alignit_probe.models.specs import stacking_note
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.viz.drift import checkpoint_order
from tests.integration.artifact_files import write_ti

PROMPTS = ["photo of a <new1> cat on the beach", "a <new1> cat wearing a red hat", "a <new1> cat in the snow"]


def test_custom_specs_parse_names_and_stack():
    got = parse_custom_specs(["step500=a", "step500=b", "step1000=c"])
    assert got == {"step500": ["a", "b"], "step1000": ["c"]}
    assert parse_custom_specs(["some/dir"]) == {"custom": ["some/dir"]}
    assert parse_custom_specs(["a", "b"]) == {"custom": ["a", "b"]}
    note = stacking_note(["a", "b"], ["lora", "lora"])  # said: two LoRAs may be meant as two models
    assert re.match(r"a \+ b are stacked into one model 'custom'.*--custom NAME=SPEC", note)
    assert stacking_note(["a", "a"], ["textual_inversion"] * 2) is not None  # a SPEC twice
    for kinds in (["custom_diffusion", "textual_inversion"], ["textual_inversion"] * 2, ["lora", "textual_inversion"]):
        assert stacking_note(["a", "b"], kinds) is None  # they complement each other: nothing to say
    for bad in ("baseline=x", "alignit-a=x", "a/b=x", "x="):
        with pytest.raises(ProbeError):
            parse_custom_specs([bad])


def test_checkpoint_order_is_numeric():
    assert checkpoint_order(["step1000", "step500", "step20000"]) == ["step500", "step1000", "step20000"]
    assert checkpoint_order(["ti", "cd"]) == ["ti", "cd"]


def test_two_named_models_two_branches_rows_and_figure(toy_dir, cd_dir, tmp_path, capsys):
    ti = tmp_path / "ti" / "learned_embeds.safetensors"
    write_ti(ti, "<new1>", 1)
    out = tmp_path / "two.zarr"
    argv = [
        "record",
        "--baseline",
        toy_dir,
        "--custom",
        f"step500={ti}",
        "--custom",
        f"step1000={cd_dir}",
        "--concept",
        "<new1>",
        "--class-word",
        "cat",
        "--out",
        str(out),
        "--no-progress",
        "--alignit",
        "--batch-size",
        "2",
    ] + [x for p in PROMPTS for x in ("--prompt", p)]
    assert main(argv) == 0
    tree = open_store(out)
    assert st.models(tree) == ["baseline", "step500", "step1000", "alignit-step500", "alignit-step1000"]
    assert st.store_attrs(tree)["custom_models"] == ["step500", "step1000"]
    assert st.model_attrs(tree, "step500")["method"] == "textual_inversion"
    assert st.model_attrs(tree, "step1000")["method"] == "custom_diffusion"
    capsys.readouterr()
    assert main(["compare", str(out), "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == {"step500", "step1000", "alignit-step500", "alignit-step1000"}
    # TI changes only the concept's token embedding: every context token's embedding equals the baseline's exactly
    ti_ctx = [r for r in rows if r["model"] == "step500" and r["role"] == "context" and r["stage"] == "token_embedding"]
    assert ti_ctx and all(r["value"] == 0.0 for r in ti_ctx)
    cd_ctx = [r for r in rows if r["model"] == "step1000" and r["role"] == "context" and r["stage"] == "key"]
    assert all(r["value"] > 0 for r in cd_ctx)
    # each model's branch equals the store of that model recorded alone
    alone = tmp_path / "alone.zarr"
    assert (
        main(
            argv[:3]
            + ["--custom", cd_dir]
            + argv[7:11]
            + ["--out", str(alone), "--no-progress", "--batch-size", "2"]
            + [x for p in PROMPTS for x in ("--prompt", p)]
        )
        == 0
    )
    one = open_store(alone)
    for name in ["text"] + [f"kv/{p}" for p in st.kv_paths(one, "custom")]:
        a, b = st.group(tree, "step1000", name), st.group(one, "custom", name)
        for var in a.data_vars:
            assert np.array_equal(a[var].values, b[var].values), (name, var)
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    # the folder output: rows, figures and summary.md, and the page
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"rows.json", "summary.md", "drift_relative_l2.png", "report.html"} <= names
    assert json.loads((tmp_path / "rep" / "rows.json").read_text())
    # a Textual Inversion and a Custom Diffusion model: no checkpoints of one run, so side by side (models_*)
    assert (tmp_path / "rep" / "models_relative_l2.png").stat().st_size > 10_000
    assert "models_relative_l2.png" in (tmp_path / "rep" / "summary.md").read_text()
    assert not (tmp_path / "rep" / "checkpoints_relative_l2.png").exists()


def test_probe_on_pipelines_in_memory(toy_dir, tmp_path):
    """The debugging case: a user's own hand-edited pipeline, compared without writing it to disk."""
    from alignit_probe.models.load import load_pipeline

    base, mine = load_pipeline(toy_dir), load_pipeline(toy_dir)
    emb = mine.text_encoder.get_input_embeddings().weight.detach()
    dog = emb[mine.tokenizer.convert_tokens_to_ids("dog</w>")]
    mine.load_textual_inversion(
        {"<x>": dog + 0.3 * torch.randn(dog.shape, generator=torch.Generator().manual_seed(0))}, token="<x>"
    )  # a hand-made embedding
    probe = Probe(base, {"edited": mine}, [Concept("<x>", "dog")], progress=False)
    frame = compare(probe.record(["a photo of a <x> dog on the beach"], tmp_path / "m.zarr"))
    emb_rows = frame[(frame.stage == "token_embedding") & (frame.metric == "relative_l2")].set_index("role").value
    assert emb_rows["context"] == 0.0 and emb_rows["concept"] > 0
    enc = frame[(frame.stage == "encoder_output") & (frame.metric == "relative_l2")].set_index("role").value
    assert enc["context"] > 0  # the causal encoder spreads the new token to the words after it
    with pytest.raises(ProbeError, match="baseline pipeline object itself"):
        _ = Probe(base, {"same": base}).models
    with pytest.raises(ProbeError, match="mixing"):
        _ = Probe(base, {"a": mine, "b": "some/path"}).models


def test_record_store_fingerprint_is_computed_inside(cd_pair, tmp_path):
    """Resume safety by construction: a partial store of other options is replaced, not resumed."""
    out = tmp_path / "s.zarr"
    concepts = [Concept("<new1>", "cat")]
    record_store(cd_pair, concepts, PROMPTS[:2], out, RecordOptions(batch_size=1), progress=False)
    a = st.store_attrs(open_store(out))["fingerprint"]
    record_store(
        cd_pair, concepts, PROMPTS[:2], out, RecordOptions(batch_size=1, clip_skip=1), overwrite=True, progress=False
    )
    assert st.store_attrs(open_store(out))["fingerprint"] != a


def test_instance_word_with_lora_and_dreambooth(toy_dir, tmp_path, capsys):
    """DreamBooth / LoRA models are probed with their own instance word (``sks`` is ``sks</w>`` in CLIP's vocab)."""
    from tests.integration.artifact_files import write_dreambooth, write_lora

    write_lora(toy_dir, tmp_path / "lora")
    write_dreambooth(toy_dir, tmp_path / "db")
    out = tmp_path / "sks.zarr"
    argv = [
        "record",
        "--baseline",
        toy_dir,
        "--custom",
        f"lora={tmp_path / 'lora'}",
        "--custom",
        f"db={tmp_path / 'db'}",
        "--concept",
        "sks",
        "--class-word",
        "dog",
        "--prompt",
        "a photo of sks dog on the beach",
        "--prompt",
        "sks dog in the snow",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    tree = open_store(out)
    custom = st.token_labels(tree, "lora")
    concept = custom.token_str.values[0][custom.role.values[0] == "concept"].tolist()
    assert concept == ["sks</w>", "dog</w>"]
    base = st.token_labels(tree, "baseline")
    assert base.prompt_text.values[0] == "a photo of dog on the beach"
    capsys.readouterr()
    assert main(["compare", str(out), "--json", "--no-progress", "--role", "concept", "--stage", "key"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == {"lora", "db"} and all(r["n"] == 2 for r in rows)
