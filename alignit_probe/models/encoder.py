"""The text encoders' stages for tokenized prompts, and the conditioning the UNet gets, exactly as the pipeline's
``encode_prompt`` builds it (clip skip respected). Stages are grouped as the store keeps them:

* SD1.x / SD2.x (one encoder): ``text`` = ``token_embedding``, ``encoder_layer`` (every layer's hidden state) and
  ``encoder_output`` (the last hidden state; with clip skip, the final layer norm of an earlier one).
* SDXL (two encoders): ``text`` (the first) and ``text_2`` (the second) = ``token_embedding``, ``encoder_layer``
  each (their widths differ); ``text_out`` = ``encoder_output`` (both encoders' penultimate hidden states, or with
  clip skip earlier ones, concatenated along channels: the ``prompt_embeds`` the pipeline hands the UNet) and
  ``pooled`` (the second encoder's projected pooled output: ``add_text_embeds``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..text.concepts import TokenizedPrompt, ids_for
from .pipes import TEXT, is_xl, placement, text_encoders

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerBase

TEXT_OUT = "text_out"


def token_ids(
    tokenizer: PreTrainedTokenizerBase, first: PreTrainedTokenizerBase, tokenized: list[TokenizedPrompt]
) -> torch.Tensor:
    """(prompt, token) ids of ``tokenized`` as ``tokenizer`` numbers them (``first``: the tokenizer they came
    from; SDXL's second tokenizer pads differently)."""
    if tokenizer is first:
        return torch.tensor([t.ids for t in tokenized])
    return torch.tensor([ids_for(tokenizer, t) for t in tokenized])


def encode_groups(
    pipe: StableDiffusionPipeline, tokenized: list[TokenizedPrompt], clip_skip: int | None = None, layers: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {stage: tensor}} (see the module docstring) on the text encoders' devices; (prompt, [layer,] token,
    channel), ``pooled`` (prompt, channel). ``layers=False`` leaves out token embeddings and layers (the
    conditioning alone)."""
    xl, groups, penultimate, pooled = is_xl(pipe), {}, [], None
    with torch.no_grad():
        for group, tok, te in text_encoders(pipe):
            ids = token_ids(tok, pipe.tokenizer, tokenized).to(te.device)
            mask = None
            if not xl and getattr(te.config, "use_attention_mask", False):
                mask = torch.tensor([[r != "padding" for r in t.role] for t in tokenized], dtype=torch.long)
                mask = mask.to(te.device)
            out = te(ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states
            stages = groups[group] = {}
            if layers:
                stages["token_embedding"] = te.get_input_embeddings()(ids)
                stages["encoder_layer"] = torch.stack(hidden[1:], dim=1)
            if xl:  # encode_prompt: penultimate state (clip skip counts back from it); pooled of the 2-D output
                penultimate.append(hidden[-2] if clip_skip is None else hidden[-(clip_skip + 2)])
                if pooled is None and out[0].ndim == 2:
                    pooled = out[0]
            elif clip_skip is None:
                stages["encoder_output"] = out[0].to(te.dtype)
            else:  # transformers 5 flattened CLIPTextModel (no .text_model); 4.x keeps it
                c = getattr(te, "text_model", te).final_layer_norm(hidden[-(clip_skip + 1)])
                stages["encoder_output"] = c.to(te.dtype)
        if xl:
            groups[TEXT_OUT] = {"encoder_output": torch.cat(penultimate, dim=-1).to(pipe.text_encoder_2.dtype)}
            groups[TEXT_OUT]["pooled"] = pooled
    return groups


def output_group(groups: dict) -> dict:
    """The group holding ``encoder_output`` (and SDXL's ``pooled``)."""
    return groups[TEXT_OUT] if TEXT_OUT in groups else groups[TEXT]


def conditioning(
    pipe: StableDiffusionPipeline, tokenized: list[TokenizedPrompt], clip_skip: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder states c, pooled embedding or None) for tokenized prompts, on the UNet's device and dtype: what the
    pipeline is called with (``prompt_embeds=``, SDXL's ``pooled_prompt_embeds=``)."""
    out = output_group(encode_groups(pipe, tokenized, clip_skip, layers=False))
    device, dtype = placement(pipe.unet)
    c = out["encoder_output"].to(device=device, dtype=dtype)
    pooled = out.get("pooled")
    return c, None if pooled is None else pooled.to(device=device, dtype=dtype)


def encoder_states(
    pipe: StableDiffusionPipeline, tokenized: list[TokenizedPrompt], clip_skip: int | None = None
) -> torch.Tensor:
    """The conditional encoder output c for tokenized prompts, on the UNet's device and dtype."""
    return conditioning(pipe, tokenized, clip_skip)[0]
