"""load_pair / apply_artifact on the toy pipeline, with artifacts written in the training scripts' own formats."""

import hashlib
import os
import shutil
from pathlib import Path

import peft
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file, save_file

from alignit_probe.capture import sites
from alignit_probe.errors import ProbeError
from alignit_probe.models.load import apply_artifact, load_pair, load_pipeline
from alignit_probe.models.toy import UNET_CONFIG
from tests.integration.artifact_files import (
    DIM,
    cd_processors,
    encoder_output,
    to_kohya,
    write_cd,
    write_dreambooth,
    write_lora,
    write_ti,
)

NOTHING = "changed nothing: every stage is bit-identical to the model without it"
pytestmark = pytest.mark.usefixtures("one_thread")


def _sha(*files):
    h = hashlib.sha256()
    for f in sorted(map(Path, files), key=lambda p: p.name):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def arts(toy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    a = {"root": root}
    a["ti1"] = root / "ti1" / "learned_embeds.safetensors"
    a["ti1_t"] = write_ti(a["ti1"], "<one>", 1)
    a["ti3"] = root / "ti3" / "learned_embeds.safetensors"
    a["ti3_t"] = write_ti(a["ti3"], "<three>", 3)
    a["ti3bin"] = root / "ti3bin" / "learned_embeds.bin"
    a["ti3bin_t"] = write_ti(a["ti3bin"], "<three-bin>", 3, safe=False)
    a["cd"] = write_cd(toy_dir, root / "cd")
    a["cdbin"] = write_cd(toy_dir, root / "cdbin", safe=False, tokens=("<new1>", "<new2>"))
    a["lora"] = root / "lora"
    a["lora_kv"] = write_lora(toy_dir, a["lora"])
    a["db"] = write_dreambooth(toy_dir, root / "db")
    return a


@pytest.fixture(scope="module")
def base(toy_dir):
    return load_pipeline(toy_dir)


@pytest.fixture(scope="module")
def clean(toy_dir):
    """One pipeline shared by the bad-input tests: each also checks that a refused artifact left it untouched."""
    return load_pipeline(toy_dir)


def assert_untouched(pipe, base):
    assert len(pipe.tokenizer) == len(base.tokenizer)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight)
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), base.unet.state_dict().values()))
    assert pipe.unet.state_dict().keys() == base.unet.state_dict().keys()


def _err(excinfo, *words):
    msg = str(excinfo.value)
    assert excinfo.value.fix, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


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
    token = "charturner" if name_field else "myembed"  # verbatim, as diffusers does; no <...> added
    assert (art.kind, art.tokens, art.warnings) == ("a1111_embedding", [token], [])
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
    assert (art.kind, art.tokens, art.warnings) == ("custom_diffusion", [], [])


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
    for path, (k, v) in arts["lora_kv"].items():
        assert torch.equal(kv[path][0], k) and torch.equal(kv[path][1], v)
        assert not torch.equal(k, kv_base[path][0])


def test_lora_kohya_format(toy_dir, arts, tmp_path):
    kohya = to_kohya(arts["lora"] / "pytorch_lora_weights.safetensors", tmp_path / "kohya.safetensors")
    pipe = load_pipeline(toy_dir)
    art = apply_artifact(pipe, str(kohya))
    assert (art.kind, art.warnings) == ("lora", [])
    kv = sites.record_kv(pipe.unet, encoder_output())
    for path, (k, v) in arts["lora_kv"].items():  # alpha == rank: the same adapter as the diffusers file
        assert torch.allclose(kv[path][0], k, atol=1e-6) and torch.allclose(kv[path][1], v, atol=1e-6)


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
    assert torch.equal(first, arts["lora_kv"][path][0])
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


# --------------------------------------------------------------------------------------------------- bad inputs
def test_missing_paths(toy_dir, tmp_path):
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(tmp_path / "nope.safetensors")])
    _err(e, "nope.safetensors", "does not exist")
    with pytest.raises(ProbeError) as e:
        load_pipeline(str(tmp_path / "nowhere"))
    _err(e, "nowhere")
    with pytest.raises(ProbeError) as e:
        load_pipeline(str(tmp_path))  # a folder, but no model_index.json
    _err(e, "model_index.json")
    with pytest.raises(ProbeError) as e:
        load_pipeline("no-such-org/no-such-model")
    _err(e, "cannot load pipeline")
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [])
    _err(e, "no customized model")


def test_unknown_files(clean, tmp_path, base):
    pipe = clean
    (tmp_path / "notes.txt").write_text("not weights")
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(tmp_path / "unet.safetensors"))
    save_file({"conv_out.weight": torch.zeros(4, 4, 3, 3)}, str(tmp_path / "unet2.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "notes.txt"))
    _err(e, "notes.txt", "not a weights file")
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "unet.safetensors"))
    _err(e, "no customization this tool knows", "conv_in.weight")
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path))  # two candidate files, none with a known name
    _err(e, "no customization weights")
    assert_untouched(pipe, base)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_is_refused_not_run(toy_dir, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "ti").mkdir()
    torch.save({"<evil>": _Evil(marker)}, tmp_path / "ti" / "learned_embeds.bin")
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(tmp_path / "ti")], progress=False)
    _err(e, "refused to unpickle", "safetensors")
    assert not marker.exists()


def test_corrupt_files(clean, base, arts, tmp_path):
    pipe = clean
    for src, name in ((arts["ti3"], "cut.safetensors"), (arts["ti3bin"], "cut.bin")):
        data = src.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ProbeError) as e:
            apply_artifact(pipe, str(tmp_path / name))
        _err(e, name, "corrupt or truncated")
    assert_untouched(pipe, base)


def test_nan_and_inf(clean, base, arts, tmp_path):
    pipe = clean
    bad = torch.randn(2, DIM)
    bad[1, 3] = float("nan")
    write_ti(tmp_path / "nan.safetensors", "<nan>", 2, value=bad)
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "nan.safetensors"))
    _err(e, "NaN", "<nan>")
    cd = shutil.copytree(arts["cd"], tmp_path / "cd")
    state = load_file(str(cd / "pytorch_custom_diffusion_weights.safetensors"))
    next(iter(state.values()))[0, 0] = float("inf")
    save_file(state, str(cd / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(cd))
    _err(e, "NaN or inf", "custom_diffusion")
    assert_untouched(pipe, base)


def test_wrong_widths(clean, base, arts, tmp_path):
    pipe = clean
    write_ti(tmp_path / "wide.safetensors", "<wide>", 1, value=torch.randn(1, 768))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "wide.safetensors"))
    _err(e, "768-wide", f"{DIM}-wide")
    lora = load_file(str(arts["lora"] / "pytorch_lora_weights.safetensors"))
    key = next(k for k in lora if "attn2.to_k.lora_A" in k)
    lora[key] = torch.randn(4, 768)
    save_file(lora, str(tmp_path / "lora768.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "lora768.safetensors"))
    _err(e, "input width 768", "attn2.to_k")
    cd = load_file(str(arts["cd"] / "pytorch_custom_diffusion_weights.safetensors"))
    key = next(k for k in cd if "to_k_custom_diffusion" in k)
    cd[key] = torch.randn(cd[key].shape[0], 768)
    save_file(cd, str(tmp_path / "cd768.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "cd768.safetensors"))
    _err(e, "768", "to_k_custom_diffusion")
    folder = shutil.copytree(arts["cd"], tmp_path / "cd")  # modifier token fine, weights too wide: nothing applied
    save_file(cd, str(folder / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(folder))
    _err(e, "768")
    assert_untouched(pipe, base)


def test_duplicate_token_and_misplaced_pipeline(toy_dir, arts):
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(arts["ti1"]), str(arts["ti1"])], progress=False)
    _err(e, "<one>", "already in the tokenizer")
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(arts["ti1"]), str(arts["db"])], progress=False)
    _err(e, "must be the first")


def test_different_attn2_layouts(toy_dir, tmp_path):
    pipe = load_pipeline(toy_dir)
    pipe.register_modules(unet=UNet2DConditionModel(**{**UNET_CONFIG, "attention_head_dim": 8}))
    pipe.save_pretrained(str(tmp_path / "other"), safe_serialization=True)
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(tmp_path / "other")], progress=False)
    _err(e, "different cross-attention layouts")
