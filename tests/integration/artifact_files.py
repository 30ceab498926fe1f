"""Customization artifacts written in the training scripts' own formats, for the loading tests (toy pipeline)."""

from pathlib import Path

import peft
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file, save_file

from alignit_probe.capture import sites
from alignit_probe.models.load import load_pipeline

DIM = 32


def encoder_output(seed=0):
    """A random encoder output c (1 prompt, 77 tokens) of the toy's width."""
    return torch.randn(1, 77, DIM, generator=torch.Generator().manual_seed(seed))


def write_ti(path, token, n, safe=True, value=None, seed=1):
    """As textual_inversion.py: {placeholder: weight[min_id:max_id+1]} -> (n, dim)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = value if value is not None else torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))
    if safe:
        save_file({token: t.contiguous()}, str(path), metadata={"format": "pt"})
    else:
        torch.save({token: t}, str(path))
    return t


def cd_processors(unet, covered, base_weights=False, q_out=False, seed=2):
    """Processors as train_custom_diffusion.py sets them: trained ones on ``covered`` attn2 layers, untrained
    (train_kv=False) everywhere else, so that ``unet.save_attn_procs`` can save them."""
    gen, procs = torch.Generator().manual_seed(seed), {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        train = name[: -len(".processor")] in covered
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=train,
            train_q_out=train and q_out,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features if name.endswith("attn2.processor") else None,
        )
        with torch.no_grad():
            for p in proc.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            if base_weights and train:
                proc.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
                proc.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
        procs[name] = proc
    unet.set_attn_processor(procs)


def write_cd(toy_dir, out, covered=None, safe=True, tokens=("<new1>",), base_weights=False, q_out=False):
    pipe = load_pipeline(toy_dir)
    covered = sites.attn2_paths(pipe.unet) if covered is None else covered
    cd_processors(pipe.unet, covered, base_weights, q_out)
    pipe.unet.save_attn_procs(str(out), safe_serialization=safe)
    for i, tok in enumerate(tokens):  # as save_new_embed: {token: embedding row (dim,)}
        write_ti(
            Path(out) / f"{tok}.{'safetensors' if safe else 'bin'}",
            tok,
            1,
            safe,
            value=torch.randn(DIM, generator=torch.Generator().manual_seed(10 + i)),
        )
    return Path(out)


def write_lora(toy_dir, out, zero=False, seed=3):
    """As train_dreambooth_lora.py: peft adapter on the UNet, saved with save_lora_weights. Returns a function
    giving the trained UNet's K/V on a fixed c, which the loaded LoRA must reproduce exactly: computed when called,
    under the products then in effect, not those of a module-scoped fixture's set-up (which runs before a test's
    own fixtures, ``layout_sensitive`` and the layout audit among them: ``tests.layout``)."""
    pipe = load_pipeline(toy_dir)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"], init_lora_weights=zero)
    )
    layers = peft.utils.get_peft_model_state_dict(pipe.unet)
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers)
    return lambda: sites.record_kv(pipe.unet, encoder_output())


TEXT_LORA_PROMPT = "a photo of sks dog"


def write_text_encoder_lora(toy_dir, out, seed=6, alpha=4):
    """As train_dreambooth_lora.py --train_text_encoder: peft adapters (rank 4) on the UNet's to_k/to_v and on the
    text encoder's q/k/v/out projections, saved with save_lora_weights, with the adapters' configs as LoRA adapter
    metadata when ``alpha`` is not the rank. Returns (the trained text encoder's output on TEXT_LORA_PROMPT, the
    trained UNet's K/V on a fixed c), which the loaded LoRA must reproduce exactly."""
    pipe = load_pipeline(toy_dir)
    torch.manual_seed(seed)
    configs = [
        peft.LoraConfig(r=4, lora_alpha=alpha, target_modules=modules, init_lora_weights=False)
        for modules in (["to_k", "to_v"], ["q_proj", "k_proj", "v_proj", "out_proj"])
    ]
    pipe.unet.add_adapter(configs[0])
    peft.inject_adapter_in_model(configs[1], pipe.text_encoder)  # (transformers' add_adapter may want a newer peft)
    metadata = {}
    if alpha != 4:  # as the training scripts that take --lora_alpha
        for component, config in zip(("unet", "text_encoder"), configs):
            meta = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
            metadata[f"{component}_lora_adapter_metadata"] = meta
    StableDiffusionPipeline.save_lora_weights(
        str(out),
        unet_lora_layers=peft.utils.get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=peft.utils.get_peft_model_state_dict(pipe.text_encoder),
        **metadata,
    )
    ids = pipe.tokenizer(TEXT_LORA_PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], sites.record_kv(pipe.unet, encoder_output())


def to_kohya(diffusers_file, out_file):
    """diffusers/peft LoRA keys renamed by hand to kohya's (lora_unet_<module_path_with_underscores>)."""
    kohya = {}
    for key, value in load_file(str(diffusers_file)).items():
        module, role = key.rsplit(".lora_", 1)
        component, module = module.split(".", 1)
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}[component]
        name = prefix + module.removeprefix("text_model.").replace(".", "_")
        kohya[f"{name}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(kohya, str(out_file))
    return Path(out_file)


def write_dreambooth(toy_dir, out):
    pipe = load_pipeline(toy_dir)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    pipe.save_pretrained(str(out), safe_serialization=True)
    return Path(out)


def write_finetune(base_dir, out, seed=4, scale=0.05):
    """A DreamBooth-style full fine-tune of any supported pipeline (SDXL included): the UNet and every text encoder
    perturbed, saved whole with save_pretrained."""
    pipe = load_pipeline(base_dir)
    gen = torch.Generator().manual_seed(seed)
    modules = [pipe.unet, pipe.text_encoder] + [m for m in [getattr(pipe, "text_encoder_2", None)] if m is not None]
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
    pipe.save_pretrained(str(out), safe_serialization=True)
    return Path(out)
