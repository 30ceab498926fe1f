"""load_pair / apply_artifact on the toy pipeline, with artifacts written in the training scripts' own formats."""

import hashlib
from pathlib import Path

import peft
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file

from alignit_probe.capture import sites
from alignit_probe.models.load import apply_artifact, load_pair, load_pipeline
from alignit_probe.record.batch import stage_tensors
from alignit_probe.text.concepts import tokenize_pair
from tests.integration.artifact_files import (
    DIM,
    TEXT_LORA_PROMPT,
    cd_processors,
    encoder_output,
    to_kohya,
    write_cd,
    write_lora,
    write_text_encoder_lora,
    write_ti,
)
from tests.integration.load_checks import NOTHING

pytestmark = pytest.mark.usefixtures("one_thread")


def _sha(*files):
    h = hashlib.sha256()
    for f in sorted(map(Path, files), key=lambda p: p.name):
        h.update(f.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- textual inversion
@pytest.mark.parametrize(
    "key, token, as_folder", [("ti1", "<one>", False), ("ti3", "<three>", True), ("ti3bin", "<three-bin>", False)]
)
def test_textual_inversion(toy_dir, arts, key, token, as_folder):
    path = arts[key].parent if as_folder else arts[key]
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(path))
    assert (art.kind, art.tokens, art.warnings) == ("textual_inversion", [token], [])
    assert art.sha256 == _sha(arts[key])
    saved = arts[key + "_t"]
    expanded = [token] + [f"{token}_{i}" for i in range(1, saved.shape[0])]
    assert pipe.maybe_convert_prompt(f"a {token}", pipe.tokenizer) == "a " + " ".join(expanded)
    ids = pipe.tokenizer.convert_tokens_to_ids(expanded)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], saved)


def test_textual_inversion_shares_the_baselines_unet(toy_dir, arts):
    """A model of Textual Inversion artifacts only keeps the baseline's UNet and VAE (one copy in memory), with its
    own text encoder, tokenizer and scheduler; the baseline's stay untouched. Anything touching the UNet loads it
    afresh."""
    pair = load_pair(toy_dir, [str(arts["ti1"]), str(arts["ti3"])], progress=False)
    b, c = pair.baseline, pair.custom
    assert c.unet is b.unet and c.vae is b.vae and dict(c.config) == dict(b.config)
    assert c.text_encoder is not b.text_encoder and c.tokenizer is not b.tokenizer and c.scheduler is not b.scheduler
    assert "<three>" in c.tokenizer.get_vocab() and "<three>" not in b.tokenizer.get_vocab()
    assert len(b.tokenizer) == b.text_encoder.get_input_embeddings().weight.shape[0] < len(c.tokenizer)
    with_lora = load_pair(toy_dir, [str(arts["ti1"]), str(arts["lora"])], progress=False)
    assert with_lora.custom.unet is not with_lora.baseline.unet


def test_textual_inversion_keeps_rng_and_baseline(toy_dir, arts, base):
    pipe = load_pipeline(toy_dir)
    torch.manual_seed(123)
    apply_artifact(pipe, str(arts["ti3"]))
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # loading consumed no random numbers
    assert "<three>" not in base.tokenizer.get_vocab()


@pytest.mark.parametrize("name_field", [True, False])
def test_a1111_pt(toy_dir, tmp_path, name_field):
    t = torch.randn(2, DIM)
    state = {
        "string_to_param": {"*": torch.nn.Parameter(t)},
        "string_to_token": {"*": 265},
        "step": 500,
        "sd_checkpoint": "abcdef",
        "sd_checkpoint_name": "toy",
    }
    if name_field:
        state["name"] = "charturner"
    torch.save(state, tmp_path / "myembed.pt")
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(tmp_path / "myembed.pt"))
    token = "myembed"  # the file name, as A1111 names embeddings (verbatim: no <...> added)
    note = [
        "myembed.pt is used as token 'myembed', its file name, as A1111 names embeddings "
        "(the file calls itself 'charturner')"
    ]
    assert (art.kind, art.tokens, art.warnings) == ("a1111_embedding", [token], note if name_field else [])
    ids = pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], t)


# -------------------------------------------------------------------------------------------- custom diffusion
@pytest.mark.parametrize("key, tokens", [("cd", ["<new1>"]), ("cdbin", ["<new1>", "<new2>"])])
def test_custom_diffusion_folder(toy_dir, arts, base, key, tokens):
    folder = arts[key]
    weights_file = next(folder.glob("pytorch_custom_diffusion_weights.*"))
    pair = load_pair(toy_dir, [str(folder)], progress=False)
    (art,) = pair.artifacts
    assert (pair.method, art.kind, art.tokens, art.warnings) == ("custom_diffusion", "custom_diffusion", tokens, [])
    assert art.sha256 == _sha(*folder.glob("*.*"))
    procs = pair.custom.unet.attn_processors
    saved = (
        load_file(str(weights_file))
        if weights_file.suffix == ".safetensors"
        else torch.load(str(weights_file), weights_only=True)
    )
    c = encoder_output()
    kv, kv_base = sites.record_kv(pair.custom.unet, c), sites.record_kv(base.unet, c)
    for path in sites.attn2_paths(pair.custom.unet):
        assert isinstance(procs[path + ".processor"], CustomDiffusionAttnProcessor2_0)
        w_k = saved[f"{path}.processor.to_k_custom_diffusion.weight"]
        assert torch.equal(kv[path][0], torch.nn.functional.linear(c, w_k))
        assert not torch.equal(kv[path][0], kv_base[path][0])
    assert all(isinstance(p, AttnProcessor2_0) for n, p in procs.items() if n.endswith("attn1.processor"))
    for tok in tokens:
        assert tok in pair.custom.tokenizer.get_vocab() and tok not in pair.baseline.tokenizer.get_vocab()


def test_custom_diffusion_weights_file_alone(toy_dir, arts):
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(arts["cd"] / "pytorch_custom_diffusion_weights.safetensors"))
    assert (art.kind, art.tokens) == ("custom_diffusion", [])
    assert len(art.warnings) == 1 and "its modifier-token file(s) <new1>.safetensors beside it" in art.warnings[0]


@pytest.mark.parametrize("safe", [True, False])
def test_custom_diffusion_subset_of_attn2(toy_dir, arts, base, tmp_path, safe):
    all_paths = sites.attn2_paths(base.unet)
    covered = [p for p in all_paths if p.startswith("down_blocks")]
    folder = write_cd(toy_dir, tmp_path / "cd", covered=covered, safe=safe, tokens=())
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(folder))
    assert len(art.warnings) == 1 and "no modifier-token file" in art.warnings[0]  # a folder without its token file
    procs = pipe.unet.attn_processors
    kv, kv_base = sites.record_kv(pipe.unet, encoder_output()), sites.record_kv(base.unet, encoder_output())
    for path in all_paths:
        cd = isinstance(procs[path + ".processor"], CustomDiffusionAttnProcessor2_0)
        assert cd == (path in covered)
        assert torch.equal(kv[path][0], kv_base[path][0]) == (path not in covered)


def test_custom_diffusion_bin_with_attn2_keys_only_and_q_out(toy_dir, base, tmp_path):
    """A .bin holding only attn2 tensors (no {} entries), with to_q/to_out trained too."""
    scratch = load_pipeline(toy_dir)
    cd_processors(scratch.unet, sites.attn2_paths(scratch.unet), q_out=True)
    state = {k: v for k, v in scratch.unet.state_dict().items() if "custom_diffusion" in k}
    assert any("to_out_custom_diffusion.0.bias" in k for k in state)
    torch.save(state, tmp_path / "pytorch_custom_diffusion_weights.bin")
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(tmp_path / "pytorch_custom_diffusion_weights.bin"))  # the file: no token warning
    assert art.warnings == []
    got = {k: v for k, v in pipe.unet.state_dict().items() if "custom_diffusion" in k}
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


# ------------------------------------------------------------------------------------------------------- LoRA
def test_lora_diffusers_format(toy_dir, arts, base):
    pair = load_pair(toy_dir, [str(arts["lora"])], progress=False)
    (art,) = pair.artifacts
    assert (pair.method, art.kind, art.tokens, art.warnings) == ("lora", "lora", [], [])
    assert art.sha256 == _sha(arts["lora"] / "pytorch_lora_weights.safetensors")
    kv, kv_base = sites.record_kv(pair.custom.unet, encoder_output()), sites.record_kv(base.unet, encoder_output())
    for path, (k, v) in arts["lora_kv"]().items():
        assert torch.equal(kv[path][0], k) and torch.equal(kv[path][1], v)
        assert not torch.equal(k, kv_base[path][0])


def test_lora_kohya_format(toy_dir, arts, tmp_path):
    kohya = to_kohya(arts["lora"] / "pytorch_lora_weights.safetensors", tmp_path / "kohya.safetensors")
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(kohya))
    assert (art.kind, art.warnings) == ("lora", [])
    kv = sites.record_kv(pipe.unet, encoder_output())
    for path, (k, v) in arts["lora_kv"]().items():  # alpha == rank: the same adapter as the diffusers file
        assert torch.allclose(kv[path][0], k, atol=1e-6) and torch.allclose(kv[path][1], v, atol=1e-6)


def recorded_encoder_output(pipe):
    tp = tokenize_pair(TEXT_LORA_PROMPT, pipe, pipe.tokenizer, [], True)[0]
    return stage_tensors(pipe, [tp])["text"]["encoder_output"]


@pytest.mark.parametrize("form", ["diffusers", "kohya", "alpha-metadata"])
def test_lora_with_text_encoder_layers(toy_dir, tmp_path, base, form):
    """train_dreambooth_lora.py --train_text_encoder (and its kohya form; and lora_alpha ≠ rank, which diffusers
    keeps in the file's LoRA adapter metadata): the text encoder's LoRA loads, with peft directly where transformers
    refuses the installed peft, and the recorded encoder output and K/V are the trained model's, exactly (diffusers
    files) or to float rounding (kohya's alpha path)."""
    trained, trained_kv = write_text_encoder_lora(toy_dir, tmp_path / "lora", alpha=8 if "alpha" in form else 4)
    spec = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    if form == "kohya":
        spec = to_kohya(spec, tmp_path / "kohya.safetensors")
    assert any(".q_proj." in k or "_q_proj." in k for k in load_file(str(spec)))
    pair = load_pair(toy_dir, [str(spec)], progress=False)
    assert (pair.method, pair.warnings) == ("lora", [])
    assert pair.custom.get_list_adapters() == {"unet": ["artifact_0"], "text_encoder": ["artifact_0"]}
    assert "load_adapter" not in vars(pair.custom.text_encoder)  # the override lasted one load only
    got, kv = recorded_encoder_output(pair.custom), sites.record_kv(pair.custom.unet, encoder_output())
    if form != "kohya":
        assert torch.equal(got[0], trained[0])
        assert all(torch.equal(kv[p][0], k) and torch.equal(kv[p][1], v) for p, (k, v) in trained_kv.items())
    else:
        assert torch.allclose(got[0], trained[0], atol=1e-5)
    assert not torch.allclose(recorded_encoder_output(base)[0], trained[0], atol=1e-3)


def test_text_encoder_lora_mixes_with_a_second_lora(toy_dir, arts, tmp_path):
    """Two LoRAs, one with text-encoder layers: both stay active on the UNet, the text encoder keeps its own."""
    trained, _ = write_text_encoder_lora(toy_dir, tmp_path / "te")
    pair = load_pair(toy_dir, [str(tmp_path / "te"), str(arts["lora"])], progress=False)
    assert sorted(pair.custom.get_active_adapters()) == ["artifact_0", "artifact_1"] and pair.warnings == []
    assert torch.equal(recorded_encoder_output(pair.custom)[0], trained[0])


def test_two_loras_both_stay_active(toy_dir, arts, tmp_path, base):
    """diffusers activates only the newest adapter; load_pair keeps every LoRA SPEC active."""
    write_lora(toy_dir, tmp_path / "lora2", seed=7)
    pair = load_pair(toy_dir, [str(arts["lora"]), str(tmp_path / "lora2")], progress=False)
    assert pair.method == "lora" and len(pair.artifacts) == 2 and pair.warnings == []
    assert sorted(pair.custom.get_active_adapters()) == ["artifact_0", "artifact_1"]
    path = sites.attn2_paths(base.unet)[0]
    to_k, c = pair.custom.unet.get_submodule(path).to_k, encoder_output()
    with torch.no_grad():
        k_base = base.unet.get_submodule(path).to_k(c)
        both = to_k(c) - k_base
        pair.custom.set_adapters(["artifact_0"])
        first = to_k(c)
        pair.custom.set_adapters(["artifact_1"])
        second = to_k(c) - k_base
    assert torch.equal(first, arts["lora_kv"]()[path][0])
    assert torch.allclose(both, first - k_base + second, atol=1e-6) and not torch.allclose(both, second, atol=1e-3)


# ------------------------------------------------------------------------------------------ pipelines, several
def test_dreambooth_dir(toy_dir, arts, base):
    pair = load_pair(toy_dir, [str(arts["db"])], progress=False)
    assert (pair.method, pair.artifacts, pair.warnings) == ("dreambooth", [], [])
    saved = UNet2DConditionModel.from_pretrained(str(arts["db"]), subfolder="unet")
    kv, kv_saved, kv_base = (sites.record_kv(u, encoder_output()) for u in (pair.custom.unet, saved, base.unet))
    for path in kv:
        assert torch.equal(kv[path][0], kv_saved[path][0]) and not torch.equal(kv[path][0], kv_base[path][0])


def test_several_specs_apply_in_order(toy_dir, arts, capsys):
    pair = load_pair(toy_dir, [str(arts["db"]), str(arts["ti3"]), str(arts["lora"])], progress=True)
    assert pair.method == "dreambooth+textual_inversion+lora"
    assert [a.kind for a in pair.artifacts] == ["textual_inversion", "lora"] and pair.warnings == []
    assert "<three>_2" in pair.custom.tokenizer.get_vocab()
    assert "applying customizations" in capsys.readouterr().err
    load_pair(toy_dir, [str(arts["ti1"])], progress=True)
    assert "applying customizations" not in capsys.readouterr().err  # quiet for a single artifact


# ----------------------------------------------------------------------------------------- zero-effect artifacts
def test_zero_lora_warns(toy_dir, tmp_path):
    write_lora(toy_dir, tmp_path / "zero", zero=True)  # peft's default init: B = 0
    pair = load_pair(toy_dir, [str(tmp_path / "zero")], progress=False)
    expected = f"artifact {tmp_path / 'zero'} {NOTHING}"
    assert pair.artifacts[0].warnings == [expected] and pair.warnings == [expected]


def test_custom_diffusion_equal_to_baseline_warns(toy_dir, tmp_path):
    folder = write_cd(toy_dir, tmp_path / "cd", tokens=(), base_weights=True)
    art = apply_artifact(load_pipeline(toy_dir), str(folder))
    assert "no modifier-token file" in art.warnings[0] and art.warnings[1:] == [f"artifact {folder} {NOTHING}"]


def test_ti_aliasing_a_vocabulary_word_warns(toy_dir, base, tmp_path):
    emb = base.text_encoder.get_input_embeddings().weight
    cat = emb[base.tokenizer.convert_tokens_to_ids("cat</w>")].detach().clone()
    write_ti(tmp_path / "learned_embeds.safetensors", "<alias>", 1, value=cat[None])
    art = apply_artifact(load_pipeline(toy_dir), str(tmp_path))
    assert art.warnings == [f"artifact {tmp_path} {NOTHING}"]


def test_lora_off_the_text_path_is_told(toy_dir, tmp_path):
    pipe = load_pipeline(toy_dir)
    torch.manual_seed(0)
    pipe.unet.add_adapter(peft.LoraConfig(r=2, target_modules=["conv1"], init_lora_weights=False))
    layers = peft.utils.get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=layers)
    art = apply_artifact(load_pipeline(toy_dir), str(tmp_path))
    assert len(art.warnings) == 1 and "leaves the text path unchanged" in art.warnings[0]
