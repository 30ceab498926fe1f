"""The world trainers write diffusers' training-script formats exactly, and the package's loaders read them back:
each method changes what it trains and nothing else. A few steps on a random-weight world model (or the shipped
one, where present), two references per step."""

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from alignit_probe.capture import sites
from alignit_probe.cli.world_train import add_train_parser
from alignit_probe.errors import ProbeError
from alignit_probe.models.load import load_pair
from alignit_probe.world.concept import CONCEPT_FILE, WorldConcept
from alignit_probe.world.trainers import CONFIG_FILE, DEFAULTS, train_concept

STEPS, REFS, WIDTH = 2, 2, 64
FAST = dict(steps=STEPS, references=REFS, progress=False)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """The world baseline as a pipeline folder: the shipped weights if present, else seeded random weights."""
    from alignit_probe.world.model import assemble, shipped_weights_path, world_components, world_pipeline

    pipe = world_pipeline() if shipped_weights_path().is_file() else assemble(world_components(0))
    out = tmp_path_factory.mktemp("world") / "baseline"
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


def train(root, method, name=None, token=None, **kw):
    concept = WorldConcept(token=token or ("sks" if method in ("dreambooth", "lora") else "<new1>"))
    return train_concept(method, root / (name or method), concept, **{**FAST, **kw})


def cli(*argv):
    """``alignit-probe world …`` through the parser ``add_train_parser`` builds (``cli/world.py`` wires it)."""
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="world_command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def embedding(pipe, token):
    return pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]


def class_row(pipe, word="triangle"):
    return embedding(pipe, word + "</w>")


def same_vocabulary_rows(pair):
    base = pair.baseline.text_encoder.get_input_embeddings().weight
    return torch.equal(pair.custom.text_encoder.get_input_embeddings().weight[: base.shape[0]], base)


def same_params(a, b, skip=()):
    pa = {k.replace("base_layer.", ""): v for k, v in a.named_parameters() if not any(s in k for s in skip)}
    pb = dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def check_outputs(out, method, files):
    assert files <= {p.name for p in out.iterdir()}
    assert not out.with_name(out.name + ".partial").exists()
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["method"] == method and config["steps"] == STEPS and config["references"] == REFS
    assert config["lr"] == DEFAULTS[method][1] and config["seed"] == 0
    assert {"train_s", "s_per_step", "total_s"} <= set(config["timings"])
    assert WorldConcept.load(out).token == config["token"]


def test_textual_inversion(world_dir, root):
    out = train(root, "textual-inversion", baseline=world_dir)
    check_outputs(out, "textual-inversion", {"learned_embeds.safetensors", CONCEPT_FILE, CONFIG_FILE})
    with safe_open(str(out / "learned_embeds.safetensors"), "pt") as f:
        assert list(f.keys()) == ["<new1>"] and f.metadata() == {"format": "pt"}
        vectors = f.get_tensor("<new1>")
    assert vectors.shape == (1, WIDTH)
    pair = load_pair(str(world_dir), [str(out)], progress=False)
    assert pair.method == "textual_inversion" and pair.artifacts[0].tokens == ["<new1>"] and not pair.warnings
    assert torch.equal(embedding(pair.custom, "<new1>"), vectors[0])
    assert not torch.equal(vectors[0], class_row(pair.baseline))  # trained away from its initialisation
    assert same_vocabulary_rows(pair)  # only the new row changed
    assert same_params(pair.custom.unet, pair.baseline.unet) and same_params(pair.custom.vae, pair.baseline.vae)


def test_training_is_seeded(world_dir, root):
    one = dict(baseline=world_dir, seed=3, steps=1, references=1)
    a, b = (train(root, "textual-inversion", name, **one) for name in ("ti-a", "ti-b"))
    ta, tb = (load_file(str(x / "learned_embeds.safetensors"))["<new1>"] for x in (a, b))
    assert torch.equal(ta, tb)


def test_multi_vector_textual_inversion_loads_as_n_tokens(world_dir, root):
    out = train(root, "textual-inversion", "ti3", baseline=world_dir, num_vectors=3)
    vectors = load_file(str(out / "learned_embeds.safetensors"))
    assert list(vectors) == ["<new1>"] and vectors["<new1>"].shape == (3, WIDTH)
    pair = load_pair(str(world_dir), [str(out)], progress=False)
    tokens = ["<new1>", "<new1>_1", "<new1>_2"]
    expanded = pair.custom.maybe_convert_prompt("a <new1> triangle", pair.custom.tokenizer)
    assert expanded == f"a {' '.join(tokens)} triangle"
    for k, token in enumerate(tokens):
        assert torch.equal(embedding(pair.custom, token), vectors["<new1>"][k])
        assert not torch.equal(vectors["<new1>"][k], class_row(pair.baseline))
    assert same_vocabulary_rows(pair)


def test_custom_diffusion(world_dir, root):
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    from alignit_probe import Concept, Probe

    out = train(root, "custom-diffusion", baseline=world_dir)
    weights_file = "pytorch_custom_diffusion_weights.safetensors"
    check_outputs(out, "custom-diffusion", {weights_file, "<new1>.safetensors", CONCEPT_FILE, CONFIG_FILE})
    token = load_file(str(out / "<new1>.safetensors"))
    assert list(token) == ["<new1>"] and token["<new1>"].shape == (WIDTH,)
    weights = load_file(str(out / weights_file))
    probe = Probe(str(world_dir), [str(out)], [Concept("<new1>", "triangle")], progress=False)
    pair = probe.models.pair()
    base_unet, unet = pair.baseline.unet, pair.custom.unet
    paths = sites.attn2_paths(base_unet)
    kv = {f"{p}.processor.to_{x}_custom_diffusion.weight" for p in paths for x in "kv"}
    assert set(weights) == kv
    assert pair.method == "custom_diffusion" and pair.artifacts[0].tokens == ["<new1>"] and not pair.warnings
    for name, proc in unet.attn_processors.items():
        layer = base_unet.get_submodule(name.removesuffix(".processor"))
        if name.endswith("attn2.processor"):
            assert isinstance(proc, CustomDiffusionAttnProcessor2_0)
            for x, base in (("k", layer.to_k), ("v", layer.to_v)):
                mine = getattr(proc, f"to_{x}_custom_diffusion").weight
                assert torch.equal(mine, weights[f"{name}.to_{x}_custom_diffusion.weight"])
                assert mine.shape == base.weight.shape and not torch.equal(mine, base.weight)
        else:
            assert not isinstance(proc, CustomDiffusionAttnProcessor2_0)
    assert same_params(unet, base_unet, skip=("custom_diffusion",))
    assert torch.equal(embedding(pair.custom, "<new1>"), token["<new1>"])
    assert not torch.equal(token["<new1>"], class_row(pair.baseline)) and same_vocabulary_rows(pair)


def test_dreambooth_with_text_encoder(world_dir, root):
    out = train(root, "dreambooth", baseline=world_dir, train_text_encoder=True)
    check_outputs(out, "dreambooth", {"model_index.json", "unet", "text_encoder", "vae", CONCEPT_FILE, CONFIG_FILE})
    assert list((out / "unet").glob("*.safetensors")) and not list(out.rglob("*.bin"))
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["text_lr"] == pytest.approx(config["lr"] / 10)
    pair = load_pair(str(world_dir), [str(out)], progress=False)
    assert pair.method == "dreambooth" and not pair.warnings
    assert not same_params(pair.custom.unet, pair.baseline.unet)
    assert not same_params(pair.custom.text_encoder, pair.baseline.text_encoder)
    assert same_params(pair.custom.vae, pair.baseline.vae)


def test_lora_through_the_cli(world_dir, root, capsys):
    out = root / "lora"
    cli("train", "--method", "lora", "--out", out, "--baseline", world_dir, "--steps", STEPS, "--references", REFS,
        "--rank", 2, "--device", "cpu", "--no-progress")  # fmt: skip
    assert "--custom" in capsys.readouterr().out
    check_outputs(out, "lora", {"pytorch_lora_weights.safetensors", CONCEPT_FILE, CONFIG_FILE})
    assert json.loads((out / CONFIG_FILE).read_text())["rank"] == 2
    layers = load_file(str(out / "pytorch_lora_weights.safetensors"))
    pair = load_pair(str(world_dir), [str(out)], progress=False)
    targets = [
        f"{name.removesuffix('.processor')}.{module}"
        for name in pair.baseline.unet.attn_processors
        for module in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    # train_dreambooth_lora.py's keys: peft's lora_A / lora_B converted to diffusers' lora.down / lora.up
    assert set(layers) == {f"unet.{t}.lora.{x}.weight" for t in targets for x in ("down", "up")}
    for t in targets:
        base = pair.baseline.unet.get_submodule(t)
        assert layers[f"unet.{t}.lora.down.weight"].shape == (2, base.in_features)
        assert layers[f"unet.{t}.lora.up.weight"].shape == (base.out_features, 2)
    assert pair.method == "lora" and not pair.warnings and pair.custom.get_list_adapters()["unet"]
    assert same_params(pair.custom.unet, pair.baseline.unet, skip=("lora_",))
    x, c = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.randn(1, 77, WIDTH)
    with torch.no_grad():
        base, custom = pair.baseline.unet(x, 500, c).sample, pair.custom.unet(x, 500, c).sample
        pair.custom.unet.disable_adapters()
        off = pair.custom.unet(x, 500, c).sample
    assert not torch.equal(custom, base) and torch.equal(off, base)


def test_references_cli(root, capsys):
    from PIL import Image

    out = root / "refs"
    cli("references", "--out", out, "--n", 3, "--concept-spec", "shape=circle,color=red,pattern=plain")
    assert "--instance_data_dir" in capsys.readouterr().out
    pngs = sorted((out / "images").iterdir())
    assert [p.name for p in pngs] == ["000.png", "001.png", "002.png"]
    concept = WorldConcept.load(out)
    assert concept.attributes["color"] == "red" and concept.token == "<new1>"
    expected = (concept.reference_images(3, 0).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    got = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in pngs])
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="dream-booth"), "unknown training method"),
        (dict(num_vectors=0), "--num-vectors 0"),
        (dict(method="custom-diffusion", num_vectors=2), "applies to textual-inversion"),
        (dict(method="lora", train_text_encoder=True), "applies to dreambooth"),
        (dict(steps=0), "--steps 0"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(references=0), "--references 0"),
        (dict(rank=0), "--rank 0"),
        (dict(baseline="missing.safetensors"), "does not exist"),
        (dict(token="triangle"), "already in the tokenizer"),
        (dict(token="<a b>"), "spaces"),
    ],
)
def test_bad_inputs(world_dir, tmp_path, kwargs, message):
    method = kwargs.pop("method", "textual-inversion")
    concept = WorldConcept(token=kwargs.pop("token", "<new1>"))
    kwargs.setdefault("baseline", world_dir)
    with pytest.raises(ProbeError, match=message) as e:
        train_concept(method, tmp_path / "out", concept, **{**FAST, **kwargs})
    assert " — " in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bad_cli_inputs(world_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    bad = [
        (["--method", "ti"], "unknown --method"),
        (["--method", "lora", "--concept-spec", "shape=hexagon"], "not in the world"),
        (["--method", "lora", "--concept-spec", "color=blue"], "shape is unknown"),
        (["--method", "lora", "--class-word", "circle", "--concept-spec", "shape=square"], "class word"),
        (["--method", "lora", "--out", tmp_path / "full"], "holds files alignit-probe did not write"),
        (["--method", "lora", "--device", "warp"], "unknown device"),
    ]
    for argv, message in bad:
        if "--out" not in argv:
            argv = [*argv, "--out", tmp_path / "new"]
        with pytest.raises(ProbeError, match=message):
            cli("train", "--baseline", world_dir, *argv)
    with pytest.raises(ProbeError, match="--n 0"):
        cli("references", "--out", tmp_path / "refs", "--n", 0)
