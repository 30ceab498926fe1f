"""Training checkpoints as customized models: ``checkpoint-N/unet`` (+ ``text_encoder``) as train_dreambooth.py's
save hook writes them, or one component folder: the baseline with those components replaced, exactly."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from alignit_probe.cli import main
from alignit_probe.errors import ProbeError
from alignit_probe.models.load import load_pair, load_pipeline
from alignit_probe.record.batch import stage_tensors
from alignit_probe.text.concepts import tokenize_pair
from tests.integration.artifact_files import write_ti

PROMPT = "a photo of sks dog on the beach"


def write_checkpoint(base_dir, root, text=True, seed=2):
    """As train_dreambooth.py's save_model_hook: each trained model's save_pretrained into unet/ (text_encoder/),
    beside accelerate's own state files."""
    pipe = load_pipeline(base_dir)
    gen = torch.Generator().manual_seed(seed)
    modules = [("unet", pipe.unet)] + ([("text_encoder", pipe.text_encoder)] if text else [])
    with torch.no_grad():
        for name, module in modules:
            for p in module.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
            module.save_pretrained(str(root / name))
    (root / "random_states_0.pkl").write_bytes(b"not read")
    (root / "scheduler.bin").write_bytes(b"not read")
    return root


def recorded(pipe):
    tp = tokenize_pair(PROMPT, pipe, pipe.tokenizer, [], True)[0]
    return stage_tensors(pipe, [tp])


@pytest.mark.parametrize("form", ["checkpoint", "checkpoint-unet-only", "unet-folder"])
def test_checkpoint_replaces_its_components_exactly(toy_dir, tmp_path, form):
    root = write_checkpoint(toy_dir, tmp_path / "checkpoint-500", text=form == "checkpoint")
    spec = root / "unet" if form == "unet-folder" else root
    pair = load_pair(toy_dir, [str(spec)], progress=False)
    assert (pair.method, pair.artifacts, pair.warnings) == ("dreambooth", [], [])
    got, base = recorded(pair.custom), recorded(pair.baseline)
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"))
    want_te = CLIPTextModel.from_pretrained(str(root / "text_encoder")) if form == "checkpoint" else None
    c = got["text"]["encoder_output"]
    if want_te is None:
        assert torch.equal(c, base["text"]["encoder_output"])
    else:
        ids = pair.custom.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(c, want_te(ids)[0])
        assert not torch.equal(c, base["text"]["encoder_output"])
    for path, (k, v) in got["kv"].items():
        attn = unet.get_submodule(path)
        with torch.no_grad():
            assert torch.equal(k, attn.to_k(c)) and torch.equal(v, attn.to_v(c)), path
        assert not torch.equal(k, base["kv"][path][0])


def test_artifacts_stack_on_a_checkpoint(toy_dir, tmp_path):
    root = write_checkpoint(toy_dir, tmp_path / "ckpt")
    write_ti(tmp_path / "ti" / "learned_embeds.safetensors", "<ti>", 1)
    pair = load_pair(toy_dir, [str(root), str(tmp_path / "ti")], progress=False)
    assert pair.method == "dreambooth+textual_inversion" and pair.warnings == []
    with pytest.raises(ProbeError, match="training checkpoint .* must be the first SPEC"):
        load_pair(toy_dir, [str(tmp_path / "ti"), str(root)], progress=False)


def test_unchanged_checkpoint_warns(toy_dir, tmp_path):
    pipe = load_pipeline(toy_dir)
    pipe.unet.save_pretrained(str(tmp_path / "ckpt" / "unet"))
    pair = load_pair(toy_dir, [str(tmp_path / "ckpt")], progress=False)
    assert pair.warnings and "changed nothing" in pair.warnings[0]


def test_bad_checkpoints_are_one_line(toy_dir, sdxl_dir, tmp_path, capsys):
    """No weights; the wrong baseline's UNet; a text encoder of another class; broken config; a component the
    baseline lacks: exit 2, one line."""
    empty = tmp_path / "empty" / "unet"
    empty.mkdir(parents=True)
    (empty / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    xl = write_checkpoint(sdxl_dir, tmp_path / "xl", text=False)
    other = tmp_path / "other"
    load_pipeline(sdxl_dir).text_encoder_2.save_pretrained(str(other / "text_encoder"))
    load_pipeline(sdxl_dir).text_encoder_2.save_pretrained(str(tmp_path / "second" / "text_encoder_2"))
    broken = tmp_path / "broken" / "unet"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    cases = [
        (empty.parent, "has a config.json but no weights"),
        (xl, "differs from the baseline's in cross_attention_dim"),
        (other, "holds a CLIPTextModelWithProjection but the baseline's text_encoder is a CLIPTextModel"),
        (broken.parent, "is not valid JSON"),
        (tmp_path / "second", "is a text_encoder_2, which the baseline (text_encoder, unet) lacks"),
    ]
    for spec, message in cases:
        args = ["record", "--baseline", toy_dir, "--custom", str(spec), "--concept", "sks", "--no-progress"]
        code = main([*args, "--prompt", PROMPT, "--out", str(tmp_path / f"{spec.name}.zarr")])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
        assert "Traceback" not in err and not (tmp_path / f"{spec.name}.zarr").exists()


def test_ema_weights_are_pointed_out(toy_dir, tmp_path):
    """train_text_to_image.py --use_ema checkpoints hold unet/ and unet_ema/: unet/ is used, the EMA one named; the
    unet_ema folder itself loads as a UNet (by its config's class)."""
    root = write_checkpoint(toy_dir, tmp_path / "checkpoint-200", text=False)
    write_checkpoint(toy_dir, tmp_path / "ema", text=False, seed=5)
    (tmp_path / "ema" / "unet").rename(root / "unet_ema")
    pair = load_pair(toy_dir, [str(root)], progress=False)
    assert len(pair.warnings) == 1 and "unet_ema" in pair.warnings[0]
    ema = load_pair(toy_dir, [str(root / "unet_ema")], progress=False)
    assert ema.warnings == [] and ema.method == "dreambooth"
    path = next(iter(recorded(ema.custom)["kv"]))
    assert not torch.equal(recorded(ema.custom)["kv"][path][0], recorded(pair.custom)["kv"][path][0])
