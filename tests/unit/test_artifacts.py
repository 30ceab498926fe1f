"""Reading and recognizing customization files, without any pipeline (a bare toy UNet at most)."""

import hashlib
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from alignit_probe.errors import ProbeError
from alignit_probe.models.artifacts import Parsed, classify, parse_artifact, read_weights, sha256_files
from alignit_probe.models.install import build_custom_diffusion, install_custom_diffusion


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _raises(fn, *words):
    with pytest.raises(ProbeError) as e:
        fn()
    msg = str(e.value)
    assert e.value.fix and "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# ---------------------------------------------------------------------------------------------------- reading
def test_reads_safetensors_zip_and_legacy_torch_files(tmp_path):
    t = torch.randn(2, 8)
    save_file({"<a>": t}, str(tmp_path / "a.safetensors"))
    torch.save({"<a>": t}, tmp_path / "a.bin")
    torch.save({"<a>": t}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({"<a>": t}, str(tmp_path / "<a>.bin"))  # safetensors bytes under .bin, as save_new_embed wrote
    for name in ("a.safetensors", "a.bin", "legacy.pt", "<a>.bin"):
        state = read_weights(tmp_path / name)
        assert list(state) == ["<a>"] and torch.equal(state["<a>"], t), name


@pytest.mark.parametrize("how", ["torch.save", "pickle.dumps"])
def test_crafted_pickle_is_refused_and_not_executed(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = {"<x>": _Evil(marker)}
    path = tmp_path / "learned_embeds.bin"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    _raises(lambda: read_weights(path), "refused to unpickle", str(path))
    _raises(lambda: parse_artifact(tmp_path), "refused to unpickle")
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    save_file({"<a>": torch.randn(3, 8)}, str(tmp_path / "a.safetensors"))
    torch.save({"<a>": torch.randn(3, 8)}, tmp_path / "a.bin")
    for name in ("a.safetensors", "a.bin"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) - 40])
        _raises(lambda n=name: read_weights(tmp_path / f"cut_{n}"), "corrupt or truncated", f"cut_{name}")
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 64)
    _raises(lambda: read_weights(tmp_path / "x.safetensors"), "not a weights file")
    (tmp_path / "y.bin").write_bytes(b"hello")
    _raises(lambda: read_weights(tmp_path / "y.bin"), "not a weights file")
    torch.save(torch.randn(3), tmp_path / "tensor.pt")
    _raises(lambda: read_weights(tmp_path / "tensor.pt"), "not a dict")
    _raises(lambda: read_weights(tmp_path / "missing.bin"), "does not exist")


def test_sha256_concatenates_sorted_files(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"BBB")
    (tmp_path / "a.bin").write_bytes(b"AA")
    want = hashlib.sha256(b"AABBB").hexdigest()
    assert sha256_files([tmp_path / "b.bin", tmp_path / "a.bin"]) == want


# ------------------------------------------------------------------------------------------------ recognition
def test_classify_each_kind(tmp_path):
    p = tmp_path / "emb.pt"
    t = torch.randn(2, 8)
    kind, emb, weights = classify({"<cat>": t}, p)
    assert (kind, list(emb), weights) == ("textual_inversion", ["<cat>"], {}) and torch.equal(emb["<cat>"], t)
    kind, emb, _ = classify({"string_to_param": {"*": t}, "name": "turner", "step": 3}, p)
    assert (kind, list(emb)) == ("a1111_embedding", ["emb"])  # the file stem, as A1111 names it; verbatim
    kind, emb, _ = classify({"string_to_param": {"*": t}}, p)
    assert list(emb) == ["emb"]
    kind, emb, _ = classify({"emb_params": t}, p)
    assert (kind, list(emb)) == ("a1111_embedding", ["emb"]) and torch.equal(emb["emb"], t)
    cd = {"down.attn2.processor.to_k_custom_diffusion.weight": t, "down.attn1.processor": {}}
    kind, emb, weights = classify(cd, p)  # the untrained layer's {} entry is dropped
    assert (kind, emb, list(weights)) == ("custom_diffusion", {}, ["down.attn2.processor.to_k_custom_diffusion.weight"])
    for key in ("unet.a.to_k.lora_A.weight", "lora_unet_a_attn2_to_k.lora_down.weight", "a.to_k_lora.down.weight"):
        assert classify({key: t}, p)[0] == "lora", key
    _raises(lambda: classify({"conv_in.weight": t}, p), "no customization this tool knows", "conv_in.weight")
    _raises(lambda: classify({"<a>": torch.randn(2, 3, 4)}, p), "no customization")
    _raises(lambda: classify({"down.attn2.processor.to_k_custom_diffusion.weight": t, "step": 3}, p), "unexpected")


def test_formats_this_tool_cannot_apply_are_named(tmp_path):
    p, t = tmp_path / "x.safetensors", torch.randn(4, 8)
    for key, kind in (("lora_unet_a_attn2_to_k.hada_w1_a", "LoHa"), ("lora_te_a_q_proj.lokr_w1", "LoKr")):
        _raises(lambda key=key: classify({key: t, "lora_unet_a.alpha": torch.tensor(1.0)}, p), f"LyCORIS {kind} file")
    old = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": t}
    _raises(lambda: classify(old, p), "old attention-processor format", "save_lora_weights")
    for state, cls in (
        ({"model.diffusion_model.input_blocks.0.0.weight": t}, "StableDiffusionPipeline.from_single_file"),
        ({"state_dict": {"first_stage_model.encoder.conv_in.weight": t}}, "StableDiffusionPipeline.from_single_file"),
        ({"conditioner.embedders.0.transformer.x": t, "model.diffusion_model.x": t}, "StableDiffusionXLPipeline"),
    ):
        _raises(lambda state=state: classify(state, p), "single-file Stable Diffusion checkpoint", cls)
    _raises(lambda: classify({"emb_params": t}, tmp_path / "My Cat.pt"), "'My Cat', which holds a space", "My_Cat.pt")
    assert list(classify({"clip_l": t, "clip_g": t}, tmp_path / "xl-cat.safetensors")[1]) == ["xl-cat"]


def test_files_given_alone_say_what_they_leave_beside_them(tmp_path):
    from alignit_probe.models.artifacts import first_line

    token, weights = tmp_path / "<new1>.safetensors", tmp_path / "pytorch_custom_diffusion_weights.safetensors"
    save_file({"<new1>": torch.randn(8)}, str(token))
    save_file({"down.attn2.processor.to_k_custom_diffusion.weight": torch.randn(4, 8)}, str(weights))
    alone = parse_artifact(token)
    assert alone.kind == "textual_inversion" and "Custom Diffusion weights beside it" in alone.warnings[0]
    assert f"pass the folder {tmp_path}" in alone.warnings[0]
    alone = parse_artifact(weights)
    assert alone.kind == "custom_diffusion" and "<new1>.safetensors beside it are not" in alone.warnings[0]
    both = parse_artifact(tmp_path)
    assert both.warnings == [] and list(both.embeddings) == ["<new1>"]
    torch.save({"string_to_param": {"*": torch.randn(1, 8)}, "name": "charturner"}, tmp_path / "mine.pt")
    assert "used as token 'mine', its file name" in parse_artifact(tmp_path / "mine.pt").warnings[0]
    miniz = "failed reading zip archive: not a ZIP archive. This is an internal miniz error. If you are seeing"
    assert first_line(RuntimeError(miniz)) == "failed reading zip archive: not a ZIP archive"
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _raises(lambda: parse_artifact(empty), "is empty (0 bytes)")
    long = first_line(ValueError("word " * 60))
    assert long.endswith("word …") and len(long) <= 162


def test_parse_folders_prefer_known_names_and_safetensors(tmp_path):
    ti = tmp_path / "ti"
    ti.mkdir()
    save_file({"<s>": torch.ones(1, 8)}, str(ti / "learned_embeds.safetensors"))
    torch.save({"<b>": torch.ones(1, 8)}, ti / "learned_embeds.bin")
    (ti / "README.md").write_text("hi")
    parsed = parse_artifact(ti)
    assert (parsed.kind, parsed.tokens, [f.name for f in parsed.files]) == (
        "textual_inversion",
        ["<s>"],
        ["learned_embeds.safetensors"],
    )
    cd = tmp_path / "cd"
    cd.mkdir()
    save_file(
        {
            "a.attn2.processor.to_k_custom_diffusion.weight": torch.ones(4, 8),
            "a.attn2.processor.to_v_custom_diffusion.weight": torch.ones(4, 8),
        },
        str(cd / "pytorch_custom_diffusion_weights.safetensors"),
    )
    save_file({"<new1>": torch.ones(8)}, str(cd / "<new1>.safetensors"))
    torch.save({"<new1>": torch.zeros(8)}, cd / "<new1>.bin")  # same token twice: safetensors wins
    torch.save({"<new2>": torch.full((8,), 2.0)}, cd / "<new2>.bin")
    torch.save({"optimizer": {"lr": 1.0}}, cd / "optimizer.bin")
    parsed = parse_artifact(cd)
    assert parsed.kind == "custom_diffusion" and parsed.tokens == ["<new1>", "<new2>"]
    assert torch.equal(parsed.embeddings["<new1>"], torch.ones(8))
    assert sorted(f.name for f in parsed.files) == [
        "<new1>.safetensors",
        "<new2>.bin",
        "pytorch_custom_diffusion_weights.safetensors",
    ]
    assert parsed.sha256 == sha256_files(parsed.files)
    assert parsed.warnings == [f"ignored {cd / 'optimizer.bin'}: not a modifier-token embedding"]
    save_file({"unet.x.lora_A.weight": torch.ones(2, 8)}, str(cd / "pytorch_lora_weights.safetensors"))
    _raises(lambda: parse_artifact(cd), "several customizations")


def test_parse_refuses_pipelines_missing_paths_and_non_finite(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    _raises(lambda: parse_artifact(tmp_path / "pipe"), "full pipeline")
    _raises(lambda: parse_artifact(tmp_path / "nope"), "does not exist")
    save_file({"<a>": torch.tensor([[1.0, float("inf")]])}, str(tmp_path / "inf.safetensors"))
    _raises(lambda: parse_artifact(tmp_path / "inf.safetensors"), "NaN or inf", "<a>")
    torch.save({"string_to_param": {"*": torch.tensor([[float("nan"), 0.0]])}, "name": "n"}, tmp_path / "nan.pt")
    _raises(lambda: parse_artifact(tmp_path / "nan.pt"), "NaN or inf", "string_to_param.*")


# --------------------------------------------------------------------------------------- custom diffusion install
@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    from alignit_probe.models.toy import UNET_CONFIG

    torch.manual_seed(0)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def _cd_weights(unet, layers, width=None):
    out = {}
    for layer in layers:
        attn = unet.get_submodule(layer)
        for kv in ("k", "v"):
            out[f"{layer}.processor.to_{kv}_custom_diffusion.weight"] = torch.randn(
                attn.to_q.out_features, width or attn.to_k.in_features
            )
    return out


def test_install_custom_diffusion_covers_only_its_layers(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0

    from alignit_probe.capture.sites import attn2_paths, record_kv

    paths = attn2_paths(unet)
    before = dict(unet.attn_processors)
    weights = _cd_weights(unet, paths[:2])
    covered = install_custom_diffusion(unet, Parsed("x", "custom_diffusion", [], "", {}, weights))
    try:
        assert covered == sorted(p + ".processor" for p in paths[:2])
        procs = unet.attn_processors
        assert len(procs) == len(before)
        for name, proc in procs.items():
            assert isinstance(proc, CustomDiffusionAttnProcessor2_0 if name in covered else AttnProcessor2_0), name
        c = torch.randn(1, 77, unet.config.cross_attention_dim)
        kv = record_kv(unet, c)
        key = weights[f"{paths[0]}.processor.to_k_custom_diffusion.weight"]
        assert torch.equal(kv[paths[0]][0], torch.nn.functional.linear(c, key))
    finally:
        unet.set_attn_processor(dict(before))


def test_build_custom_diffusion_refuses_mismatches(unet):
    from alignit_probe.capture.sites import attn2_paths

    path = attn2_paths(unet)[0]
    parsed = lambda w: Parsed("cd.safetensors", "custom_diffusion", [], "", {}, w)
    _raises(lambda: build_custom_diffusion(unet, parsed(_cd_weights(unet, [path], width=768))), "768", "cd.safetensors")
    w = _cd_weights(unet, [path])
    w.pop(f"{path}.processor.to_v_custom_diffusion.weight")
    _raises(lambda: build_custom_diffusion(unet, parsed(w)), "incomplete", "to_v_custom_diffusion")
    moved = {k.replace("down_blocks.0", "down_blocks.7"): v for k, v in _cd_weights(unet, [path]).items()}
    _raises(lambda: build_custom_diffusion(unet, parsed(moved)), "lacks", "down_blocks.7")


CD_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"


def _write_cd_weights(folder, name=CD_WEIGHTS):
    state = {
        "a.attn2.processor.to_k_custom_diffusion.weight": torch.ones(4, 8),
        "a.attn2.processor.to_v_custom_diffusion.weight": torch.ones(4, 8),
    }
    if name.endswith(".bin"):
        torch.save(state, folder / name)
    else:
        save_file(state, str(folder / name))


@pytest.mark.parametrize("token_file", ["<new1>.bin", "<new1>.safetensors", "<new1>.bin as safetensors"])
def test_custom_diffusion_folder_without_weights_names_the_missing_file(tmp_path, token_file):
    name = token_file.split(" ")[0]
    if token_file.endswith((".safetensors", "as safetensors")):
        save_file({"<new1>": torch.ones(8)}, str(tmp_path / name))
    else:
        torch.save({"<new1>": torch.ones(8)}, tmp_path / name)
    (tmp_path / "README.md").write_text("hi")
    msg = _raises(lambda: parse_artifact(tmp_path), CD_WEIGHTS, "(or .bin) is missing", name, str(tmp_path))
    assert "Custom Diffusion" in msg
    # several token files: the same, naming them all
    torch.save({"<new2>": torch.zeros(8)}, tmp_path / "<new2>.bin")
    _raises(lambda: parse_artifact(tmp_path), CD_WEIGHTS, name, "<new2>.bin")
    # a token file passed as a file is still a Textual Inversion embedding
    parsed = parse_artifact(tmp_path / name)
    assert (parsed.kind, parsed.tokens) == ("textual_inversion", ["<new1>"])


def test_textual_inversion_folders_are_not_mistaken_for_custom_diffusion(tmp_path):
    for stem, state in (
        ("my_embed", {"<cat>": torch.ones(8)}),  # not a <token> name
        ("<cat>", {"<dog>": torch.ones(8)}),  # key is not the file stem
        ("<cat>", {"<cat>": torch.ones(2, 8)}),  # multi-vector: (n, dim), not a modifier token's (dim,)
    ):
        folder = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        torch.save(state, folder / f"{stem}.bin")
        parsed = parse_artifact(folder)
        assert (parsed.kind, parsed.tokens, parsed.warnings) == ("textual_inversion", list(state), []), stem


@pytest.mark.parametrize("weights", [CD_WEIGHTS, "pytorch_custom_diffusion_weights.bin"])
def test_custom_diffusion_weights_without_token_files_warn(tmp_path, weights):
    _write_cd_weights(tmp_path, weights)
    parsed = parse_artifact(tmp_path)
    assert (parsed.kind, parsed.tokens, [f.name for f in parsed.files]) == ("custom_diffusion", [], [weights])
    assert parsed.warnings == [
        f"no modifier-token file <token>.safetensors (or .bin) found next to {tmp_path / weights}: only the Custom "
        "Diffusion K/V projections are applied, no new token is added"
    ]
    # given as a file, the weights alone are accepted without a warning
    parsed = parse_artifact(tmp_path / weights)
    assert (parsed.kind, parsed.tokens, parsed.warnings) == ("custom_diffusion", [], [])
    # a token file next to them: no warning
    save_file({"<new1>": torch.ones(8)}, str(tmp_path / "<new1>.safetensors"))
    parsed = parse_artifact(tmp_path)
    assert (parsed.tokens, parsed.warnings) == (["<new1>"], [])


def test_pivotal_tuning_embeddings_and_their_folder(tmp_path):
    """The advanced DreamBooth-LoRA scripts' <name>_emb.safetensors: tokens <s0>, <s1> … (SD1.5: clip_l only;
    SDXL: clip_l and clip_g); a shared SDXL embedding keeps its file stem as token; the scripts' output folder
    is read as its LoRA plus its embeddings, and two embedding files there are ambiguous."""
    from pathlib import Path

    from alignit_probe.models.artifacts import artifact_paths

    rows = torch.randn(3, 8)
    kind, emb, _ = classify({"clip_l": rows}, Path("run_emb.safetensors"))
    assert kind == "textual_inversion" and list(emb) == ["<s0>", "<s1>", "<s2>"]
    assert all(torch.equal(emb[f"<s{i}>"], rows[i]) for i in range(3))
    save_file({"clip_l": rows, "clip_g": torch.randn(3, 12)}, str(tmp_path / "run_emb.safetensors"))
    parsed = parse_artifact(tmp_path / "run_emb.safetensors")
    assert parsed.tokens == ["<s0>", "<s1>", "<s2>"] and parsed.embeddings_2["<s2>"].shape == (12,)
    save_file({"clip_l": rows, "clip_g": torch.randn(3, 12)}, str(tmp_path / "style.safetensors"))
    assert parse_artifact(tmp_path / "style.safetensors").tokens == ["style"]
    run = tmp_path / "run"
    run.mkdir()
    assert artifact_paths(run) == [str(run)]  # nothing to expand (parse_artifact says what is missing)
    save_file({"unet.a.lora_A.weight": torch.zeros(2, 2)}, str(run / "pytorch_lora_weights.safetensors"))
    assert artifact_paths(run) == [str(run)]
    (tmp_path / "run_emb.safetensors").rename(run / "run_emb.safetensors")
    assert artifact_paths(run) == [str(run / "pytorch_lora_weights.safetensors"), str(run / "run_emb.safetensors")]
    (tmp_path / "style.safetensors").rename(run / "other_emb.safetensors")
    with pytest.raises(ProbeError, match="several pivotal-tuning embeddings"):
        artifact_paths(run)


def test_training_folders_without_weights_name_what_to_pass(tmp_path):
    """What diffusers' training scripts leave that holds nothing to load: an accelerate state (textual_inversion.py,
    train_custom_diffusion.py checkpoints), an output folder mid-training, its logs. Each error names the fix."""

    def touch(*names):
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"x")

    save_file({"token_embedding.weight": torch.zeros(3, 4)}, tmp_path / "state.safetensors")
    touch("ti/checkpoint-500/optimizer.bin", "ti/checkpoint-500/random_states_0.pkl")
    os.replace(tmp_path / "state.safetensors", tmp_path / "ti/checkpoint-500/model.safetensors")
    with pytest.raises(ProbeError, match="training state saved by accelerate.*learned_embeds-steps-N"):
        parse_artifact(tmp_path / "ti/checkpoint-500")  # one weights file, which is no customization
    touch("cd/checkpoint-2/optimizer.bin", "cd/checkpoint-10/optimizer.bin", "cd/logs/run/events.out.tfevents.1.vm")
    with pytest.raises(ProbeError, match=r"\(checkpoint-2, checkpoint-10\) but no final weights yet — wait until"):
        parse_artifact(tmp_path / "cd")
    touch("db/checkpoint-3/unet/config.json", "db/checkpoint-12/unet/config.json", "db/checkpoint-12/optimizer.bin")
    with pytest.raises(ProbeError, match=r"no final weights yet — pass a checkpoint: --custom .*db/checkpoint-12 \("):
        parse_artifact(tmp_path / "db")
    touch("lora/checkpoint-7/pytorch_lora_weights.safetensors", "lora/logs/events.out.tfevents.2")
    with pytest.raises(ProbeError, match="--custom .*lora/checkpoint-7"):
        parse_artifact(tmp_path / "lora")
    for logs in ("cd/logs", "cd/logs/run"):
        with pytest.raises(
            ProbeError, match="holds training logs, no weights — pass the training output folder \\(.*cd\\)$"
        ):
            parse_artifact(tmp_path / logs)
    touch("empty/notes.txt")
    with pytest.raises(ProbeError, match="found 0 other weights files\\) — pass the folder the training script"):
        parse_artifact(tmp_path / "empty")


def test_textual_inversion_output_without_final_embedding_uses_the_latest_steps_file(tmp_path):
    """textual_inversion.py's output folder while it trains: learned_embeds-steps-N files only (--save_steps)."""
    for step, value in ((2, 1.0), (10, 2.0)):
        save_file({"<x>": torch.full((1, 4), value)}, tmp_path / f"learned_embeds-steps-{step}.safetensors")
    (tmp_path / "checkpoint-10").mkdir()
    parsed = parse_artifact(tmp_path)
    assert parsed.files[0].name == "learned_embeds-steps-10.safetensors" and float(parsed.embeddings["<x>"].sum()) == 8
    assert any("latest intermediate embedding learned_embeds-steps-10.safetensors" in w for w in parsed.warnings)


def test_a_mistyped_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from alignit_probe.models.load import check_pipeline_path
    from alignit_probe.models.specs import resolve_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    _raises(lambda: resolve_spec("out/nonexist"), "out/nonexist does not exist (the folder out/ does", "ls out")
    _raises(lambda: check_pipeline_path("out/nonexist"), "out/nonexist does not exist (the folder out/ does")
    assert resolve_spec("someorg/model") == "pipeline" and check_pipeline_path("someorg/model") == "someorg/model"
