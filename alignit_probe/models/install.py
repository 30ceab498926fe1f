"""An artifact checked against the model it is applied to (widths, target layers, new tokens), and Custom Diffusion
processors built and installed for exactly the layers its weights cover."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ProbeError
from .artifacts import RETRAINED, Parsed, first_line
from .pipes import is_xl

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_embeddings(
    parsed: Parsed, tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, embeddings: dict | None = None
) -> None:
    """Widths fit the text encoder; tokens are new to the tokenizer (``embeddings``: the vectors for this encoder,
    default ``parsed.embeddings``)."""
    dim = text_encoder.get_input_embeddings().weight.shape[-1]
    vocab = tokenizer.get_vocab()
    for token, emb in (parsed.embeddings if embeddings is None else embeddings).items():
        if emb.shape[-1] != dim:
            raise ProbeError(
                f"embedding {token!r} in {parsed.path} is {emb.shape[-1]}-wide but the text encoder is {dim}-wide",
                RETRAINED,
            )
        if token in vocab or f"{token}_1" in vocab:
            word = token in vocab and token not in tokenizer.get_added_vocab()
            named_by_file = any(f.stem == token for f in parsed.files)  # A1111 / clip_l-clip_g files
            rename = (
                f"rename the file to <{token.strip('<>')}>{parsed.files[0].suffix} and write <{token.strip('<>')}> "
                "in the prompts"
                if named_by_file
                else "rename the token in the file (e.g. <" + token.strip("<>") + ">)"
            )
            raise ProbeError(
                f"token {token!r} from {parsed.path} is already in the tokenizer"
                + (" (a word of its vocabulary: an embedding cannot redefine it)" if word else ""),
                rename if word else "load each embedding once (another SPEC added the same token), or " + rename,
            )


def _lora_target(key: str) -> tuple[str, str] | None:
    for role in ("lora_A", "lora_B"):
        marker = f".{role}."
        if marker in key:
            return key.split(marker)[0], role
    return None


def check_lora(pipe: StableDiffusionPipeline, parsed: Parsed) -> None:
    """Every LoRA layer targets an existing module with matching widths (after diffusers' own key conversion)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    try:
        # unet_config, as load_lora_weights passes it: kohya's SGM block names (input_blocks_4_1) mapped to the UNet's
        converted, _ = type(pipe).lora_state_dict(dict(parsed.weights), unet_config=pipe.unet.config)
    except Exception as e:
        raise ProbeError(
            f"diffusers cannot read the LoRA in {parsed.path} ({first_line(e)})",
            "export it with save_lora_weights, or in kohya format",
        ) from e
    parts = {"unet": {}, "text_encoder": {}, **({"text_encoder_2": {}} if is_xl(pipe) else {})}
    for key, value in converted.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ProbeError(f"LoRA in {parsed.path} targets {prefix!r}, which this pipeline lacks", RETRAINED)
        parts[prefix][rest] = value
    for component, part in parts.items():
        if not part:
            continue
        if not any("lora_A" in k for k in part):
            part = convert_unet_state_dict_to_peft(part) if component == "unet" else convert_state_dict_to_peft(part)
        root = getattr(pipe, component)
        for key, value in part.items():
            target = _lora_target(key)
            if target is None or value.ndim < 2:
                continue
            path, role = target
            if component != "unet" and not hasattr(root, "text_model"):
                path = path.removeprefix("text_model.")  # as diffusers: transformers 5 flattens CLIPTextModel
            try:
                module = root.get_submodule(path)
            except AttributeError:
                raise ProbeError(
                    f"LoRA in {parsed.path} targets {component}.{path}, which the model lacks", RETRAINED
                ) from None
            base = getattr(module, "base_layer", module)
            n_in = getattr(base, "in_features", getattr(base, "in_channels", None))
            n_out = getattr(base, "out_features", getattr(base, "out_channels", None))
            got, want = (value.shape[1], n_in) if role == "lora_A" else (value.shape[0], n_out)
            if got != want:
                side = "input" if role == "lora_A" else "output"
                raise ProbeError(
                    f"LoRA in {parsed.path} has {side} width {got} at {component}.{path}, which is {want}-wide",
                    RETRAINED,
                )


def build_custom_diffusion(unet: UNet2DConditionModel, parsed: Parsed) -> dict:
    """Validated Custom Diffusion processors, {processor path: processor}, for every layer the weights cover."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in parsed.weights.items():
        layer, _, sub = key.partition(".processor.")
        groups.setdefault(layer, {})[sub] = value
    processors = unet.attn_processors
    new = {}
    for layer, sub in groups.items():
        name = layer + ".processor"
        if name not in processors:
            problem = f"Custom Diffusion weights in {parsed.path} are for layer {layer}, which the UNet lacks"
            raise _not_for(unet, problem)
        attn = unet.get_submodule(layer)
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=any(k.startswith(("to_k_custom", "to_v_custom")) for k in sub),
            train_q_out=any(k.startswith(("to_q_custom", "to_out_custom")) for k in sub),
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features,
            out_bias="to_out_custom_diffusion.0.bias" in sub,
        )
        expected = proc.state_dict()
        if set(expected) != set(sub):
            odd = sorted(set(expected) ^ set(sub))
            raise ProbeError(
                f"Custom Diffusion weights in {parsed.path} for {layer} are incomplete or unexpected "
                f"({', '.join(odd)})",
                "export them again with unet.save_attn_procs",
            )
        for k, t in sub.items():
            if tuple(t.shape) != tuple(expected[k].shape):
                raise _not_for(
                    unet,
                    f"Custom Diffusion weight {layer}.{k} in {parsed.path} has shape {tuple(t.shape)}, "
                    f"the UNet needs {tuple(expected[k].shape)}",
                )
        proc.load_state_dict(sub)
        new[name] = proc.to(device=unet.device, dtype=unet.dtype)
    return new


def _not_for(unet: UNet2DConditionModel, problem: str) -> ProbeError:
    """Custom Diffusion weights that do not fit ``unet``; on an SDXL UNet, most likely an SD 1.x/2.x artifact."""
    if unet.config.get("addition_embed_type") == "text_time":
        problem = problem.replace("the UNet", "this SDXL UNet") + " (diffusers trains Custom Diffusion for SD 1.x/2.x)"
        return ProbeError(problem, "use them with the SD 1.x/2.x baseline they were trained from")
    return ProbeError(problem, RETRAINED)


def fresh_custom_diffusion(unet: UNet2DConditionModel) -> dict:
    """Custom Diffusion processors for every layer, as diffusers' train_custom_diffusion.py starts them: attn2 layers
    with their own K/V projections copied from ``to_k``/``to_v`` (to be trained), the other layers plain."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    procs = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        cross = name.endswith("attn2.processor")
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=cross,
            train_q_out=False,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features if cross else None,
        )
        if cross:
            proc.load_state_dict(
                {"to_k_custom_diffusion.weight": attn.to_k.weight, "to_v_custom_diffusion.weight": attn.to_v.weight}
            )
        procs[name] = proc.to(device=unet.device, dtype=unet.dtype)
    return procs


def set_processors(unet: UNet2DConditionModel, new: dict) -> None:
    """Replace the named processors, keep every other layer's (``set_attn_processor`` pops from the dict it gets
    and wants one entry per layer: hand it a fresh, complete one)."""
    unet.set_attn_processor({name: new.get(name, proc) for name, proc in unet.attn_processors.items()})


def install_custom_diffusion(unet: UNet2DConditionModel, parsed: Parsed) -> list[str]:
    """Install Custom Diffusion processors for every layer the weights cover; other layers keep theirs.

    diffusers 0.42.1's ``unet.load_attn_procs`` installs nothing unless given the private ``_pipeline`` argument,
    and then wants a processor for every layer, which attn2-only weights (all .safetensors files) lack.
    Returns the covered processor paths.
    """
    new = build_custom_diffusion(unet, parsed)
    set_processors(unet, new)
    return sorted(new)
