"""record_kv is exact: for every customization kind, the K/V it computes from ``encode_prompt`` equal, bit for bit,
the K/V the attn2 layers use inside a real denoising step (classifier-free guidance on, float32), computed over the
same rows ([uncond, cond], as the step batches them); over the prompt's rows alone, as a recording computes them,
within float32 rounding. Every test here also holds under products that round by batch layout (``tests.layout``)."""

import peft
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from safetensors.torch import save_file

from alignit_probe.capture import sites
from alignit_probe.capture.sdpa import intercept_sdpa, recording
from alignit_probe.models.load import load_pair, load_pipeline

DIM = 32
PROMPTS = {
    "baseline": "a photo of a cat",
    "textual_inversion": "a photo of <ti-cat> on a beach",
    "custom_diffusion": "a <new1> cat in the snow",
    "lora": "a photo of a cat",
    "dreambooth": "a photo of sks cat",
}


pytestmark = pytest.mark.usefixtures("one_thread", "layout_sensitive")


def _write_ti(root):
    root.mkdir()
    t = torch.randn(2, DIM, generator=torch.Generator().manual_seed(1))
    save_file({"<ti-cat>": t}, str(root / "learned_embeds.safetensors"))
    return root


def _write_cd(toy_dir, root):
    """As train_custom_diffusion.py: trained processors on attn2, untrained ones on attn1, save_attn_procs."""
    pipe, gen, procs = load_pipeline(toy_dir), torch.Generator().manual_seed(2), {}
    for name in pipe.unet.attn_processors:
        attn = pipe.unet.get_submodule(name[: -len(".processor")])
        cross = name.endswith("attn2.processor")
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=cross,
            train_q_out=False,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features if cross else None,
        )
        with torch.no_grad():
            for p in proc.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        procs[name] = proc
    pipe.unet.set_attn_processor(procs)
    pipe.unet.save_attn_procs(str(root), safe_serialization=True)
    save_file({"<new1>": torch.randn(DIM, generator=gen)}, str(root / "<new1>.safetensors"))
    return root


def _write_lora(toy_dir, root):
    pipe = load_pipeline(toy_dir)
    torch.manual_seed(3)
    pipe.unet.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"], init_lora_weights=False)
    )
    layers = peft.utils.get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(str(root), unet_lora_layers=layers)
    return root


def _write_dreambooth(toy_dir, root):
    pipe, gen = load_pipeline(toy_dir), torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    pipe.save_pretrained(str(root), safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def custom(toy_dir, tmp_path_factory):
    """kind -> customized pipeline, built lazily."""
    root, cache = tmp_path_factory.mktemp("exactness"), {}
    writers = {
        "textual_inversion": lambda: _write_ti(root / "ti"),
        "custom_diffusion": lambda: _write_cd(toy_dir, root / "cd"),
        "lora": lambda: _write_lora(toy_dir, root / "lora"),
        "dreambooth": lambda: _write_dreambooth(toy_dir, root / "db"),
    }

    def get(kind):
        if kind not in cache:
            if kind == "baseline":
                pipe = load_pipeline(toy_dir)
            else:
                pair = load_pair(toy_dir, [str(writers[kind]())], progress=False)
                assert pair.method == kind and pair.warnings == []
                pipe = pair.custom
            pipe.set_progress_bar_config(disable=True)
            cache[kind] = pipe
        return cache[kind]

    return get


def caught_in_step(pipe, prompt, **kwargs):
    """Run one real denoising step (CFG on) and catch, per attn2 site, the K/V its processor hands to SDPA.

    A forward pre-hook marks where each attn2 call starts in the SDPA log, a forward hook where it ends: the calls
    in between are that site's. Returns {site: (key, value)}, each (batch, token, heads*head_dim)."""
    unet, log, spans, handles = pipe.unet, [], {}, []
    for path in sites.attn2_paths(unet):
        module = unet.get_submodule(path)
        handles.append(module.register_forward_pre_hook(lambda m, a, p=path: spans.setdefault(p, []).append(len(log))))
        handles.append(module.register_forward_hook(lambda m, a, o, p=path: spans[p].append(len(log))))
    try:
        with intercept_sdpa(recording(log)):
            pipe(
                prompt,
                num_inference_steps=1,
                guidance_scale=7.5,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                **kwargs,
            )
    finally:
        for h in handles:
            h.remove()
    merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)  # (b, h, s, d) -> (b, s, h*d)
    out = {}
    for path, (start, end) in spans.items():
        assert end - start == 1, f"{path}: {end - start} SDPA calls in one attn2 call"
        _, k, v = log[start]
        out[path] = (merge(k), merge(v))
    return out


def assert_kv_of_the_step(pipe, caught, uncond, cond, recorded):
    """The K/V caught in a guided step equal, bit for bit, ``record_kv`` of the step's own rows in its own layout
    ([uncond, cond] in one product, as the pipeline batches them); ``recorded`` (the prompt's rows alone, as a
    recording computes them) equal them within float32 rounding, since a matrix product over other rows may round
    differently (``tests.layout``)."""
    step = sites.record_kv(pipe.unet, torch.cat([uncond, cond]))
    assert caught.keys() == step.keys() == recorded.keys()
    for path, (k, v) in caught.items():
        assert k.shape[0] == 2  # [uncond, cond], as the pipeline concatenates them
        assert (k - step[path][0]).abs().max().item() == 0, path
        assert (v - step[path][1]).abs().max().item() == 0, path
        torch.testing.assert_close(k[1:], recorded[path][0])
        torch.testing.assert_close(v[1:], recorded[path][1])


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_record_kv_equals_kv_inside_a_denoising_step(custom, kind):
    pipe = custom(kind)
    prompt = PROMPTS[kind]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
    caught = caught_in_step(pipe, prompt)
    assert len(caught) == len(sites.attn2_paths(pipe.unet))
    assert_kv_of_the_step(pipe, caught, uncond, cond, sites.record_kv(pipe.unet, cond))


def test_each_kind_really_differs_from_the_baseline(custom):
    """Otherwise the exactness test above could pass by recording the baseline for every kind."""
    base = custom("baseline")
    with torch.no_grad():
        c = base.encode_prompt("a photo of a cat", "cpu", 1, False)[0]
    kv_base = sites.record_kv(base.unet, c)
    for kind in ("custom_diffusion", "lora", "dreambooth"):
        kv = sites.record_kv(custom(kind).unet, c)
        assert all(not torch.equal(kv[p][0], kv_base[p][0]) for p in kv), kind
    ti = custom("textual_inversion")
    with torch.no_grad():
        c_ti = ti.encode_prompt(PROMPTS["textual_inversion"], "cpu", 1, False)[0]
        c_words = ti.encode_prompt("a photo of cat cat on a beach", "cpu", 1, False)[0]
    assert not torch.equal(c_ti, c_words)


def test_custom_diffusion_trap_hooks_on_to_k_miss_its_kv(custom):
    """Custom Diffusion computes K/V with its own to_k_custom_diffusion: a hook on attn.to_k never sees them
    (it is not even called), and attn.to_k(c) is the baseline's K; record_kv asks the processor and is exact."""
    pipe = custom("custom_diffusion")
    prompt = PROMPTS["custom_diffusion"]
    seen, handles = {}, []
    for path in sites.attn2_paths(pipe.unet):
        to_k = pipe.unet.get_submodule(path).to_k
        handles.append(to_k.register_forward_hook(lambda m, a, o, p=path: seen.setdefault(p, []).append(o)))
    try:
        caught = caught_in_step(pipe, prompt)
    finally:
        for h in handles:
            h.remove()
    assert seen == {}  # the naive hook records nothing at all
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
        recorded = sites.record_kv(pipe.unet, torch.cat([uncond, cond]))  # the step's rows, in its layout
        for path, (k, _) in caught.items():
            naive = pipe.unet.get_submodule(path).to_k(cond)
            assert not torch.allclose(naive, k[1:], atol=1e-3), path
            assert torch.equal(recorded[path][0], k), path


@pytest.mark.parametrize("kind", ["baseline", "custom_diffusion"])
def test_sd2_record_kv_equals_kv_inside_a_denoising_step(sd2_dir, tmp_path, kind):
    """SD2.x (pads with "!", linear projections, per-block head widths, v-prediction): recorded K/V from the
    encoder output recorded as a stage equal, bit for bit, the K/V inside a real guided UNet step."""
    from alignit_probe.record.batch import stage_tensors
    from alignit_probe.text.concepts import Concept, tokenize_pair

    if kind == "baseline":
        pipe, prompt, concepts = load_pipeline(sd2_dir), "a photo of a cat!", []
    else:
        pipe = load_pair(sd2_dir, [str(_write_cd(sd2_dir, tmp_path / "cd"))], progress=False).custom
        prompt, concepts = PROMPTS["custom_diffusion"], [Concept("<new1>", "cat")]
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.pad_token_id == 0 and pipe.scheduler.config.prediction_type == "v_prediction"
    tp = tokenize_pair(prompt, pipe, pipe.tokenizer, concepts, allow_absent=True)[0]
    recorded_stages = stage_tensors(pipe, [tp])
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
    assert (recorded_stages["text"]["encoder_output"] - cond).abs().max().item() == 0
    caught = caught_in_step(pipe, prompt)
    assert_kv_of_the_step(pipe, caught, uncond, cond, recorded_stages["kv"])


SDXL_PROMPT = "a photo of sks cat on the beach"


@pytest.mark.parametrize(
    "kind, clip_skip", [("baseline", None), ("baseline", 1), ("baseline", 2), ("dreambooth", None)]
)
def test_sdxl_record_kv_equals_kv_inside_a_denoising_step(sdxl_dir, tmp_path, kind, clip_skip):
    """SDXL: the recorded encoder output is exactly the pipeline's prompt_embeds (both encoders' penultimate states,
    clip skip respected, up to the deepest one the record job accepts: the toy's first encoder has 3 layers), the
    recorded pooled stage exactly the add_text_embeds the UNet gets, and the recorded K/V exactly those inside a real
    guided SDXL UNet step (with added_cond_kwargs), 0.0 max |diff| in float32."""
    from alignit_probe.errors import ProbeError
    from alignit_probe.record.batch import stage_tensors
    from alignit_probe.record.run import check_clip_skip
    from alignit_probe.text.concepts import ids_for, tokenize_pair
    from tests.integration.artifact_files import write_finetune

    if kind == "baseline":
        pipe = load_pipeline(sdxl_dir)
    else:
        pair = load_pair(sdxl_dir, [str(write_finetune(sdxl_dir, tmp_path / "db"))], progress=False)
        assert pair.method == "dreambooth" and pair.warnings == []
        pipe = pair.custom
    pipe.set_progress_bar_config(disable=True)
    if clip_skip is not None:
        check_clip_skip([pipe], clip_skip)
        if clip_skip == 2:  # one more reaches past the first encoder's first layer: refused before any work
            with pytest.raises(ProbeError, match="--clip-skip 2 or less"):
                check_clip_skip([pipe], 3)
    tp = tokenize_pair(SDXL_PROMPT, pipe, pipe.tokenizer, [], allow_absent=True)[0]
    assert ids_for(pipe.tokenizer_2, tp) == pipe.tokenizer_2(SDXL_PROMPT, padding="max_length").input_ids
    recorded = stage_tensors(pipe, [tp], clip_skip=clip_skip)
    with torch.no_grad():
        cond, uncond, pooled, _ = pipe.encode_prompt(
            SDXL_PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, clip_skip=clip_skip
        )
    assert (recorded["text_out"]["encoder_output"] - cond).abs().max().item() == 0
    assert (recorded["text_out"]["pooled"] - pooled).abs().max().item() == 0
    assert recorded["text"]["encoder_layer"].shape[-1] + recorded["text_2"]["encoder_layer"].shape[-1] == cond.shape[-1]
    added = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: added.append(kw["added_cond_kwargs"]["text_embeds"]), with_kwargs=True
    )
    try:
        caught = caught_in_step(pipe, SDXL_PROMPT, clip_skip=clip_skip)
    finally:
        hook.remove()
    assert len(added) == 1 and (added[0][1:] - recorded["text_out"]["pooled"]).abs().max().item() == 0
    assert len(caught) == 8  # uncond: zeros (force_zeros_for_empty_prompt)
    assert_kv_of_the_step(pipe, caught, uncond, cond, recorded["kv"])
