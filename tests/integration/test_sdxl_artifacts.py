"""SDXL artifacts in the training scripts' formats: Textual Inversion (learned_embeds + learned_embeds_2, and one
file with clip_l / clip_g) into both text encoders, DreamBooth-LoRA (UNet and both text encoders), each loaded
through diffusers' own loaders, checked by "did it load?" on both encoders, and recorded exactly."""

import warnings

import peft
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from alignit_probe import Concept
from alignit_probe import store as st
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.errors import ProbeError, ProbeWarning
from alignit_probe.models.load import apply_artifact, load_pair, load_pipeline
from alignit_probe.record.batch import stage_tensors
from alignit_probe.record.run import RecordOptions, check_job, record_store
from alignit_probe.text.concepts import tokenize_pair
from alignit_probe.text.tables import tokenize_table
from tests.integration.test_exactness import assert_kv_of_the_step, caught_in_step

W1, W2 = 32, 48  # the tiny SDXL's text-encoder widths
NOTHING = "changed nothing: every stage is bit-identical to the model without it"
pytestmark = pytest.mark.usefixtures("one_thread")


def vectors(n, width, seed):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.1


def write_ti_folder(root, token="<xl-cat>", n=2, first=None, second=None):
    """As textual_inversion_sdxl.py: learned_embeds.safetensors (text_encoder) + learned_embeds_2 (text_encoder_2)."""
    root.mkdir(parents=True, exist_ok=True)
    save_file({token: vectors(n, W1, 1) if first is None else first}, str(root / "learned_embeds.safetensors"))
    if second is not False:
        save_file({token: vectors(n, W2, 2) if second is None else second}, str(root / "learned_embeds_2.safetensors"))
    return root


def write_ti_file(path, n=2, widths=(W1, W2)):
    """The one-file SDXL embedding: {"clip_l": (n, 768), "clip_g": (n, 1280)}; the token is the file stem."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": vectors(n, widths[0], 3), "clip_g": vectors(n, widths[1], 4)}, str(path))
    return path


def write_lora(base_dir, root, text=True, alpha=4, trained=None):
    """As train_dreambooth_lora_sdxl.py: peft adapters (rank 4) on the UNet (and both text encoders),
    save_lora_weights, with each adapter's config as LoRA adapter metadata when ``alpha`` is not the rank.
    ``trained``: a list that gets the trained pipeline."""
    pipe = load_pipeline(base_dir)
    torch.manual_seed(5)
    unet_config = peft.LoraConfig(
        r=4, lora_alpha=alpha, target_modules=["to_k", "to_q", "to_v", "to_out.0"], init_lora_weights=False
    )
    pipe.unet.add_adapter(unet_config)
    layers = {"unet_lora_layers": peft.utils.get_peft_model_state_dict(pipe.unet)}
    configs = {"unet": unet_config}
    if text:  # (peft directly: transformers' own add_adapter may want a newer peft than is installed)
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, name)
            modules = ["q_proj", "k_proj", "v_proj", "out_proj"]
            configs[name] = peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=modules, init_lora_weights=False)
            peft.inject_adapter_in_model(configs[name], module)
            layers[f"{name}_lora_layers"] = peft.utils.get_peft_model_state_dict(module)
    if alpha != 4:
        for name, config in configs.items():
            meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
            layers[f"{name}_lora_adapter_metadata"] = meta
    StableDiffusionXLPipeline.save_lora_weights(str(root), **layers)
    if trained is not None:
        trained.append(pipe)
    return root


def assert_exact(pipe, prompt, concepts):
    """Recorded encoder output and pooled == encode_prompt's (one prompt alone, both sides); the K/V inside a real
    SDXL UNet step == record_kv of the step's own [uncond, cond] rows, and the recorded K/V (the prompt's rows alone)
    equal them within float32 rounding (``assert_kv_of_the_step``: a product over other rows may round otherwise)."""
    pipe.set_progress_bar_config(disable=True)
    tp = tokenize_pair(prompt, pipe, pipe.tokenizer, concepts, allow_absent=True)[0]
    recorded = stage_tensors(pipe, [tp])
    with torch.no_grad():
        cond, uncond, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=True)
    assert (recorded["text_out"]["encoder_output"] - cond).abs().max().item() == 0
    assert (recorded["text_out"]["pooled"] - pooled).abs().max().item() == 0
    assert_kv_of_the_step(pipe, caught_in_step(pipe, prompt), uncond, cond, recorded["kv"])
    return recorded


@pytest.mark.parametrize("form", ["folder", "first-file", "clip_l_clip_g"])
def test_textual_inversion_goes_into_both_encoders(sdxl_dir, tmp_path, form):
    if form == "clip_l_clip_g":
        spec, token = write_ti_file(tmp_path / "xlcat.safetensors"), "xlcat"
    else:
        folder = write_ti_folder(tmp_path / "ti")
        spec, token = (folder if form == "folder" else folder / "learned_embeds.safetensors"), "<xl-cat>"
    pair = load_pair(sdxl_dir, [str(spec)], progress=False)
    assert pair.method == "textual_inversion" and pair.warnings == [], pair.warnings
    art = pair.artifacts[0]
    assert art.tokens == [token] and len(art.sha256) == 64
    pipe = pair.custom
    assert pipe.unet is pair.baseline.unet and pipe.text_encoder_2 is not pair.baseline.text_encoder_2  # one UNet
    assert dict(pipe.config) == dict(pair.baseline.config)
    for tok, te, width in ((pipe.tokenizer, pipe.text_encoder, W1), (pipe.tokenizer_2, pipe.text_encoder_2, W2)):
        ids = tok.convert_tokens_to_ids([token, f"{token}_1"])
        assert tok.unk_token_id not in ids and te.get_input_embeddings().weight.shape[-1] == width
    prompt = f"a photo of {token} on the beach"
    recorded = assert_exact(pipe, prompt, [Concept(token)])
    base = stage_tensors(
        pair.baseline,
        [tokenize_pair(prompt.replace(token, "cat"), pair.baseline, pair.baseline.tokenizer, [], True)[0]],
    )
    assert not torch.equal(
        recorded["text_2"]["token_embedding"][:, 4:6], base["text_2"]["token_embedding"][:, 4:5].expand(-1, 2, -1)
    )


def test_lora_on_unet_and_both_text_encoders(sdxl_dir, tmp_path):
    """train_dreambooth_lora_sdxl.py --train_text_encoder: loads (text encoders through transformers' own
    ``load_adapter``), exact as everywhere, and every recorded stage equals the stage of the pipeline a user loads
    with diffusers alone (``from_pretrained`` + ``load_lora_weights``): max |diff| 0."""
    lora = write_lora(sdxl_dir, tmp_path / "lora")
    pair = load_pair(sdxl_dir, [str(lora)], progress=False)
    assert pair.method == "lora" and pair.warnings == [], pair.warnings
    adapters = pair.custom.get_list_adapters()
    assert adapters == {"unet": ["artifact_0"], "text_encoder": ["artifact_0"], "text_encoder_2": ["artifact_0"]}
    prompt = "a photo of sks cat"
    recorded = assert_exact(pair.custom, prompt, [])
    tp = tokenize_pair(prompt, pair.baseline, pair.baseline.tokenizer, [], True)[0]
    base = stage_tensors(pair.baseline, [tp])
    for group in ("text", "text_2"):
        assert not torch.equal(recorded[group]["encoder_layer"], base[group]["encoder_layer"]), group
    assert not torch.equal(recorded["text_out"]["pooled"], base["text_out"]["pooled"])
    users = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    users.load_lora_weights(str(lora))
    theirs, ours = stage_tensors(users, [tp]), stage_tensors(pair.custom, [tp])
    assert ours.keys() == theirs.keys() and ours["kv"].keys() == theirs["kv"].keys()
    pairs = [((g, s), v, theirs[g][s]) for g in ours if g != "kv" for s, v in ours[g].items()]
    pairs += [((path, i), kv[i], theirs["kv"][path][i]) for path, kv in ours["kv"].items() for i in (0, 1)]
    for where, a, b in pairs:
        assert (a - b).abs().max().item() == 0, where


def test_pivotal_tuning_folder_loads_lora_and_embeddings(sdxl_dir, tmp_path):
    """train_dreambooth_lora_sdxl_advanced.py --train_text_encoder_ti writes pytorch_lora_weights.safetensors and
    <output_dir>_emb.safetensors ({"clip_l": (n, 768), "clip_g": (n, 1280)}, used as tokens <s0>, <s1> … written
    together in prompts): the folder loads as both, each vector where diffusers' documented loading puts it, exact;
    a concept using none of the added tokens is refused, naming the one to use; one using some of them is said."""
    folder = write_lora(sdxl_dir, tmp_path / "adv", text=False)
    emb = {"clip_l": vectors(2, W1, 7), "clip_g": vectors(2, W2, 8)}
    save_file(emb, str(folder / "adv_emb.safetensors"))
    pair = load_pair(sdxl_dir, [str(folder)], progress=False)
    assert [a.kind for a in pair.artifacts] == ["lora", "textual_inversion"] and pair.warnings == [], pair.warnings
    assert pair.artifacts[1].tokens == ["<s0>", "<s1>"]
    pipe = pair.custom
    for tok, te, key in (
        (pipe.tokenizer, pipe.text_encoder, "clip_l"),
        (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"),
    ):
        ids = tok.convert_tokens_to_ids(["<s0>", "<s1>"])
        assert torch.equal(te.get_input_embeddings().weight[ids].detach(), emb[key])
    prompt = "a photo of <s0><s1> dog"
    recorded = assert_exact(pipe, prompt, [Concept("<s0><s1>", "dog")])
    assert recorded["text"]["token_embedding"].shape[1] == 77
    tables = tokenize_table([prompt], range(1), pipe, pair.baseline.tokenizer, [Concept("<s0><s1>", "dog")])
    assert tables[0][0].role[:7] == ["special", "context", "context", "context", "concept", "concept", "concept"]
    sks = [Concept("sks", "dog")]  # with the LoRA, an instance word may carry what it learned: said, not refused
    with pytest.warns(ProbeWarning, match=r"uses none of the tokens .*measure them with --concept <s0><s1>"):
        check_job(pair, sks, ["a photo of sks dog"], RecordOptions())
    with pytest.warns(ProbeWarning, match=r"uses 1 of the tokens <s0><s1> .*: pass --concept \"<s0><s1>\""):
        check_job(pair, [Concept("<s0>", "dog")], ["a photo of <s0> dog"], RecordOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)  # both: nothing to say
        check_job(pair, [Concept("<s0><s1>", "dog")], [prompt], RecordOptions())
    alone = load_pair(sdxl_dir, [str(folder / "adv_emb.safetensors")], progress=False)  # embeddings alone: refused
    with pytest.raises(ProbeError, match=r"pass --concept <s0><s1>"):
        check_job(alone, sks, ["a photo of sks dog"], RecordOptions())


def test_lora_alpha_from_adapter_metadata(sdxl_dir, tmp_path):
    """lora_alpha ≠ rank, kept in the file's LoRA adapter metadata: the loaded model is the trained one, exactly."""
    trained = []
    pair = load_pair(sdxl_dir, [str(write_lora(sdxl_dir, tmp_path / "lora", alpha=8, trained=trained))], progress=False)
    prompt = "a photo of sks cat"
    tp = tokenize_pair(prompt, pair.custom, pair.custom.tokenizer, [], True)[0]
    got, want = stage_tensors(pair.custom, [tp]), stage_tensors(trained[0], [tp])
    assert torch.equal(got["text_out"]["encoder_output"], want["text_out"]["encoder_output"])
    assert torch.equal(got["text_out"]["pooled"], want["text_out"]["pooled"])
    assert all(torch.equal(got["kv"][p][i], want["kv"][p][i]) for p in want["kv"] for i in (0, 1))


def test_unet_only_lora(sdxl_dir, tmp_path):
    """Exact as everywhere; recorded, the store says that its text-stage differences are the prompt edit's (the
    text encoders are the baseline's), and lists no learned vector for the unchanged instance word."""
    pair = load_pair(sdxl_dir, [str(write_lora(sdxl_dir, tmp_path / "lora", text=False))], progress=False)
    assert pair.method == "lora" and pair.warnings == []
    assert_exact(pair.custom, "a photo of sks cat", [])
    concepts, prompts = [Concept("sks", "cat")], ["a photo of sks cat"]
    with pytest.warns(ProbeWarning, match="UNet-only customization"):
        out = record_store(pair, concepts, prompts, tmp_path / "s.zarr", RecordOptions(), progress=False)
    tree = st.open_store(out)
    assert any("UNet-only" in w for w in st.model_attrs(tree, "custom")["warnings"])
    assert tree["custom/embedding"].sizes["vector"] == tree["custom/embedding_2"].sizes["vector"] == 0
    trained = load_pair(sdxl_dir, [str(write_lora(sdxl_dir, tmp_path / "lora_te", text=True))], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)  # text encoders trained too: no such note
        record_store(trained, concepts, prompts, tmp_path / "t.zarr", RecordOptions(), progress=False)


def test_did_it_load_covers_both_encoders(sdxl_dir, tmp_path):
    base = load_pipeline(sdxl_dir)
    cat1 = base.text_encoder.get_input_embeddings().weight[base.tokenizer.convert_tokens_to_ids("cat</w>")]
    cat2 = base.text_encoder_2.get_input_embeddings().weight[base.tokenizer_2.convert_tokens_to_ids("cat</w>")]
    alias = write_ti_folder(tmp_path / "alias", "<alias>", 1, cat1[None].detach(), cat2[None].detach())
    art = apply_artifact(load_pipeline(sdxl_dir), str(alias))
    assert any(NOTHING in w for w in art.warnings), art.warnings
    half = write_ti_folder(tmp_path / "half", "<half>", 1, cat1[None].detach(), vectors(1, W2, 9))
    art = apply_artifact(load_pipeline(sdxl_dir), str(half))
    assert art.warnings == []  # the first encoder's row is an alias, the second's is new: it loaded


@pytest.mark.parametrize(
    "case, message",
    [
        ("first-encoder-only", "token vectors for one text encoder: an SD 1.x embedding, or the first half"),
        ("sd1-custom-diffusion", "Custom Diffusion artifact of a one-text-encoder model .* but the baseline is SDXL"),
        ("sd1-custom-diffusion-weights", "which this SDXL UNet lacks .diffusers trains Custom Diffusion for SD 1"),
        ("counts-differ", r"2 vector\(s\) for the first text encoder, 3 for the second"),
        ("second-other-tokens", "does not hold the tokens"),
        ("clip_g-too-narrow", "is 40-wide but the text encoder is 48-wide"),
        ("swapped", r"the first encoder's vectors \(clip_l\) are 48-wide .* the two look swapped"),
        ("second-file-alone", "second text encoder only: learned_embeds.safetensors .* is missing"),
        ("other-model-width", f"holds 1024-wide token vectors, but this SDXL model's text encoders are {W1} and {W2}"),
    ],
)
def test_bad_sdxl_textual_inversion_is_one_line(sdxl_dir, toy_dir, tmp_path, case, message):
    if case == "first-encoder-only":
        spec = write_ti_folder(tmp_path / "ti", second=False)
    elif case == "sd1-custom-diffusion":  # its token is as wide as SDXL's first encoder, as in real models (768)
        from tests.integration.artifact_files import write_cd

        spec = write_cd(toy_dir, tmp_path / "cd")
    elif case == "sd1-custom-diffusion-weights":  # the weights file alone: no token to tell its encoder's width
        from tests.integration.artifact_files import write_cd

        spec = write_cd(toy_dir, tmp_path / "cd") / "pytorch_custom_diffusion_weights.safetensors"
    elif case == "counts-differ":
        spec = write_ti_folder(tmp_path / "ti", n=2, second=vectors(3, W2, 5))
    elif case == "second-other-tokens":
        spec = write_ti_folder(tmp_path / "ti")
        save_file({"<other>": vectors(2, W2, 6)}, str(spec / "learned_embeds_2.safetensors"))
    elif case == "second-file-alone":
        spec = write_ti_folder(tmp_path / "ti")
        (spec / "learned_embeds.safetensors").unlink()
    elif case == "other-model-width":  # an SD 2.x embedding
        spec = write_ti_folder(tmp_path / "ti", first=vectors(2, 1024, 1), second=False)
    elif case == "swapped":
        spec = write_ti_file(tmp_path / "zqxswap.safetensors", widths=(W2, W1))
    else:
        spec = write_ti_file(tmp_path / "zqxnarrow.safetensors", widths=(W1, 40))
    pipe = load_pipeline(sdxl_dir)
    n1, n2 = len(pipe.tokenizer), len(pipe.tokenizer_2)
    with pytest.raises(ProbeError, match=message) as e:
        apply_artifact(pipe, str(spec))
    assert e.value.fix and "\n" not in str(e.value)
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == (n1, n2)  # refused before anything was loaded


def test_sdxl_artifacts_on_a_one_encoder_model_are_refused(toy_dir, tmp_path):
    pipe = load_pipeline(toy_dir)
    with pytest.raises(ProbeError, match="second text encoder .* one text encoder"):
        apply_artifact(pipe, str(write_ti_file(tmp_path / "xlcat.safetensors")))
    with pytest.raises(ProbeError, match="targets 'text_encoder_2', which this pipeline lacks"):
        apply_artifact(pipe, str(write_lora_for_sd1_with_second_encoder(toy_dir, tmp_path / "lora")))


def write_lora_for_sd1_with_second_encoder(toy_dir, root):
    """A LoRA file whose text_encoder_2 keys an SD1 pipeline cannot take (an SDXL LoRA given the wrong baseline)."""
    from safetensors.torch import load_file

    te = load_pipeline(toy_dir).text_encoder
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]), te)
    te = peft.utils.get_peft_model_state_dict(te)
    StableDiffusionXLPipeline.save_lora_weights(str(root), text_encoder_2_lora_layers=te)
    assert any(k.startswith("text_encoder_2.") for k in load_file(str(root / "pytorch_lora_weights.safetensors")))
    return root


def test_record_and_compare_a_textual_inversion(sdxl_dir, tmp_path):
    pair = load_pair(sdxl_dir, [str(write_ti_folder(tmp_path / "ti"))], progress=False)
    concepts = [Concept("<xl-cat>", "cat")]
    prompts = ["a photo of <xl-cat> cat on the beach", "a <xl-cat> cat in the snow"]
    tree = st.open_store(record_store(pair, concepts, prompts, tmp_path / "s.zarr", RecordOptions(), progress=False))
    rows = [r for r in compare_rows(tree, n_boot=10) if r["metric"] == "relative_l2"]
    emb = {(r["layer"], r["role"]): r["value"] for r in rows if r["stage"] == "token_embedding"}
    for layer in (None, "text_2"):  # the learned vectors drift, every other token embedding is the baseline's
        assert emb[layer, "concept"] > 0 and emb[layer, "context"] == 0 and emb[layer, "special"] == 0
    assert {"embedding", "embedding_2"} <= set(tree["custom"].children)
    assert tree["custom/embedding_2"].sizes["vector"] == 2
    from alignit_probe.viz.sections import embedding_section

    tables = {t["model"]: [r["token"] for r in t["rows"]] for t in embedding_section(tree)["tables"]}
    assert tables == {  # the report shows each encoder's learned vectors
        "custom (first text encoder)": ["<xl-cat>", "<xl-cat>_1"],
        "custom (second text encoder, text_2)": ["<xl-cat>", "<xl-cat>_1"],
    }


def sgm_name(path, layers_per_block=1):
    """A diffusers UNet module path with kohya's original SDXL block names (input_blocks / middle_block /
    output_blocks), as kohya's sd-scripts write SDXL LoRAs: an attention is slot 1 of its block."""
    parts = path.split(".")
    if parts[0] == "mid_block":
        return ".".join(["middle_block", "1", *parts[3:]])
    block, index = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return ".".join(["input_blocks", str(1 + block * (layers_per_block + 1) + index), "1", *parts[4:]])
    return ".".join(["output_blocks", str(block * (layers_per_block + 1) + index), "1", *parts[4:]])


def test_kohya_lora_with_sgm_block_names_loads_as_diffusers_names_do(sdxl_dir, tmp_path):
    from safetensors.torch import load_file

    lora = load_file(str(write_lora(sdxl_dir, tmp_path / "lora", text=False) / "pytorch_lora_weights.safetensors"))
    files = {}
    for form, rename in (("diffusers", lambda p: p), ("sgm", sgm_name)):
        kohya = {}
        for key, value in lora.items():  # unet.<path>.lora_A.weight → lora_unet_<path with _>.lora_down.weight
            path, role = key.removeprefix("unet.").rsplit(".lora_", 1)
            name = "lora_unet_" + rename(path).replace(".", "_")
            kohya[f"{name}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value
            kohya[f"{name}.alpha"] = torch.tensor(4.0)
        files[form] = tmp_path / f"{form}.safetensors"
        save_file(kohya, str(files[form]))
    assert any("input_blocks" in k for k in load_file(str(files["sgm"])))
    c = torch.randn(
        1, 77, load_pipeline(sdxl_dir).unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0)
    )
    kv = {}
    for form, path in files.items():
        pair = load_pair(sdxl_dir, [str(path)], progress=False)
        assert pair.method == "lora"
        with torch.no_grad():
            kv[form] = {n: (m.to_k(c), m.to_v(c)) for n, m in pair.custom.unet.named_modules() if n.endswith("attn2")}
    base = load_pipeline(sdxl_dir).unet
    for name, (k, v) in kv["sgm"].items():
        assert torch.equal(k, kv["diffusers"][name][0]) and torch.equal(v, kv["diffusers"][name][1]), name
        assert not torch.equal(k, base.get_submodule(name).to_k(c)), name  # the LoRA is applied at every layer
