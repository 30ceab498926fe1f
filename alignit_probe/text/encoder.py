"""The text encoder's stages for tokenized prompts: token embeddings, every layer's hidden state, and the encoder
output c exactly as ``pipe.encode_prompt`` builds it (clip-skip respected)."""

from __future__ import annotations

import torch

from .concepts import TokenizedPrompt


def encode_stages(pipe, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, clip_skip: int | None = None):
    """Token embeddings, every encoder layer's output and the encoder output (as ``pipe.encode_prompt`` builds it)."""
    te = pipe.text_encoder
    ids = ids.to(te.device)
    if not getattr(te.config, "use_attention_mask", False):
        attention_mask = None
    elif attention_mask is not None:
        attention_mask = attention_mask.to(te.device)
    with torch.no_grad():
        out = te(ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states
        if clip_skip is None:
            c = out[0]
        else:
            # transformers 5 flattened CLIPTextModel (no .text_model); 4.x keeps it
            c = getattr(te, "text_model", te).final_layer_norm(hidden[-(clip_skip + 1)])
        return {
            "token_embedding": te.get_input_embeddings()(ids),
            "encoder_layer": torch.stack(hidden[1:], dim=1),
            "encoder_output": c.to(te.dtype),
        }


def encoder_states(pipe, tokenized: list[TokenizedPrompt], clip_skip: int | None = None) -> torch.Tensor:
    """The conditional encoder output c for tokenized prompts, on the UNet's device and dtype."""
    ids = torch.tensor([t.ids for t in tokenized])
    mask = torch.tensor([[r != "padding" for r in t.role] for t in tokenized], dtype=torch.long)
    c = encode_stages(pipe, ids, mask, clip_skip)["encoder_output"]
    return c.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
