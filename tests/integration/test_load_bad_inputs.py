"""Bad customization inputs while loading: each is one ProbeError naming the fix, and leaves the model untouched."""

import os
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from alignit_probe.errors import ProbeError
from alignit_probe.models.load import apply_artifact, load_pair, load_pipeline
from alignit_probe.models.toy import UNET_CONFIG
from tests.integration.artifact_files import DIM, write_ti
from tests.integration.load_checks import assert_untouched, err

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------- bad inputs
def test_missing_paths(toy_dir, tmp_path):
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(tmp_path / "nope.safetensors")])
    err(e, "nope.safetensors", "does not exist")
    with pytest.raises(ProbeError) as e:
        load_pipeline(str(tmp_path / "nowhere"))
    err(e, "nowhere")
    with pytest.raises(ProbeError) as e:
        load_pipeline(str(tmp_path))  # a folder, but no model_index.json
    err(e, "model_index.json")
    with pytest.raises(ProbeError) as e:
        load_pipeline("no-such-org/no-such-model")
    err(e, "cannot load pipeline")
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [])
    err(e, "no customized model")


def test_unknown_files(clean, tmp_path, base):
    pipe = clean
    (tmp_path / "notes.txt").write_text("not weights")
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(tmp_path / "unet.safetensors"))
    save_file({"conv_out.weight": torch.zeros(4, 4, 3, 3)}, str(tmp_path / "unet2.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "notes.txt"))
    err(e, "notes.txt", "not a weights file")
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "unet.safetensors"))
    err(e, "no customization this tool knows", "conv_in.weight")
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path))  # two candidate files, none with a known name
    err(e, "no customization weights")
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
    err(e, "refused to unpickle", "safetensors")
    assert not marker.exists()


def test_corrupt_files(clean, base, arts, tmp_path):
    pipe = clean
    for src, name in ((arts["ti3"], "cut.safetensors"), (arts["ti3bin"], "cut.bin")):
        data = src.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ProbeError) as e:
            apply_artifact(pipe, str(tmp_path / name))
        err(e, name, "corrupt or truncated")
    assert_untouched(pipe, base)


def test_nan_and_inf(clean, base, arts, tmp_path):
    pipe = clean
    bad = torch.randn(2, DIM)
    bad[1, 3] = float("nan")
    write_ti(tmp_path / "nan.safetensors", "<nan>", 2, value=bad)
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "nan.safetensors"))
    err(e, "NaN", "<nan>")
    cd = shutil.copytree(arts["cd"], tmp_path / "cd")
    state = load_file(str(cd / "pytorch_custom_diffusion_weights.safetensors"))
    next(iter(state.values()))[0, 0] = float("inf")
    save_file(state, str(cd / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(cd))
    err(e, "NaN or inf", "custom_diffusion")
    assert_untouched(pipe, base)


def test_wrong_widths(clean, base, arts, tmp_path):
    pipe = clean
    write_ti(tmp_path / "wide.safetensors", "<wide>", 1, value=torch.randn(1, 768))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "wide.safetensors"))
    err(e, "768-wide", f"{DIM}-wide")
    lora = load_file(str(arts["lora"] / "pytorch_lora_weights.safetensors"))
    key = next(k for k in lora if "attn2.to_k.lora_A" in k)
    lora[key] = torch.randn(4, 768)
    save_file(lora, str(tmp_path / "lora768.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "lora768.safetensors"))
    err(e, "input width 768", "attn2.to_k")
    cd = load_file(str(arts["cd"] / "pytorch_custom_diffusion_weights.safetensors"))
    key = next(k for k in cd if "to_k_custom_diffusion" in k)
    cd[key] = torch.randn(cd[key].shape[0], 768)
    save_file(cd, str(tmp_path / "cd768.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(tmp_path / "cd768.safetensors"))
    err(e, "768", "to_k_custom_diffusion")
    folder = shutil.copytree(arts["cd"], tmp_path / "cd")  # modifier token fine, weights too wide: nothing applied
    save_file(cd, str(folder / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ProbeError) as e:
        apply_artifact(pipe, str(folder))
    err(e, "768")
    assert_untouched(pipe, base)


def test_duplicate_token_and_misplaced_pipeline(toy_dir, arts):
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(arts["ti1"]), str(arts["ti1"])], progress=False)
    err(e, "<one>", "already in the tokenizer", "another SPEC added the same token")
    word = arts["ti1"].parent / "word" / "learned_embeds.safetensors"  # a token that is a vocabulary word
    word.parent.mkdir(exist_ok=True)
    save_file({"cat": torch.zeros(32)}, str(word))
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(word)], progress=False)
    err(e, "'cat'", "a word of its vocabulary", "rename the token in the file (e.g. <cat>)")
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(arts["ti1"]), str(arts["db"])], progress=False)
    err(e, "must be the first")


def test_different_attn2_layouts(toy_dir, tmp_path):
    pipe = load_pipeline(toy_dir)
    pipe.register_modules(unet=UNet2DConditionModel(**{**UNET_CONFIG, "attention_head_dim": 8}))
    pipe.save_pretrained(str(tmp_path / "other"), safe_serialization=True)
    with pytest.raises(ProbeError) as e:
        load_pair(toy_dir, [str(tmp_path / "other")], progress=False)
    err(e, "different cross-attention layouts")


def test_uncached_hub_id_offline_names_the_cache(tmp_path, monkeypatch):
    """A hub id is looked up in the local cache first; not there and not downloadable, the error says so (no
    library traceback text as the only cause)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ProbeError) as e:
        load_pipeline("someorg/not-cached-model")
    err(
        e,
        "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set",
        "huggingface-cli download someorg/not-cached-model",
    )


def test_uncached_hub_id_without_network_fails_at_once(tmp_path, monkeypatch):
    """Online mode but no network: the hub's host is tried once, and the error names it, before huggingface_hub
    would retry for half a minute (a download attempt fails the test)."""
    import socket

    import diffusers

    load_config = diffusers.DiffusionPipeline.load_config

    def no_network(address, timeout=None):
        raise socket.gaierror(-2, "Name or service not known")

    def cache_only(*a, local_files_only=False, **k):
        assert local_files_only, "a download was tried"
        return load_config(*a, local_files_only=local_files_only, **k)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", cache_only)
    with pytest.raises(ProbeError) as e:
        load_pipeline("someorg/not-cached-model")
    err(e, "huggingface.co cannot be reached from this machine", "huggingface-cli download someorg/not-cached-model")
