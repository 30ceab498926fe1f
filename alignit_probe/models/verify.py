"""Did it load? Every stage of the text path, and one UNet call, before and after a customization is applied.

The probe prompt ``PROBE`` is run through token embeddings, every hidden state, the encoder output, K/V at every
attn2 site (``capture.sites.record_kv``) and one UNet call; for SDXL through both text encoders (the second's stages
prefixed ``text_2.``), their concatenated penultimate states, the pooled embedding, and a UNet call conditioned on
it. Tokens an artifact adds cannot be compared that way
(without them the prompt tokenizes differently), so their embedding rows are checked instead: a row bit-identical
to an existing vocabulary row makes the token a mere alias. When nothing differs the artifact gets the warning
``artifact PATH changed nothing: every stage is bit-identical to the model without it``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ..capture import sites
from .pipes import TEXT, is_xl, text_encoders

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

PROBE = "a photo"


def stages(pipe: StableDiffusionPipeline, prompt: str = PROBE) -> dict[str, torch.Tensor]:
    """Every stage of the text path for ``prompt``, plus one UNet output, keyed by stage name."""
    unet, out, penultimate, pooled = pipe.unet, {}, [], None
    with torch.no_grad():
        for group, tok, te in text_encoders(pipe):
            ids = tok(
                prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(te.device)
            res = te(ids, output_hidden_states=True)
            prefix = "" if group == TEXT else f"{group}."
            out[f"{prefix}token_embeddings"] = te.get_input_embeddings()(ids)
            for i, h in enumerate(res.hidden_states):
                out[f"{prefix}hidden_states.{i}"] = h
            penultimate.append(res.hidden_states[-2])
            if res[0].ndim == 2:
                pooled = out["pooled"] = res[0]
        c = torch.cat(penultimate, dim=-1) if is_xl(pipe) else res[0]
        out["encoder_output"] = c
        for path, (k, v) in sites.record_kv(unet, c.to(unet.dtype)).items():
            out[f"{path}.key"], out[f"{path}.value"] = k, v
        size = max(8, 2 ** (len(unet.config.block_out_channels) - 1))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, unet.config.in_channels, size, size, generator=gen).to(unet.device, unet.dtype)
        extra = {}
        if pooled is not None:  # SDXL's text_time conditioning: pooled embedding and six size/crop ids
            ids = torch.tensor([[8.0 * size, 8.0 * size, 0.0, 0.0, 8.0 * size, 8.0 * size]])
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(unet.dtype), "time_ids": ids.to(unet.device)}
        out["unet_output"] = unet(x, 500, encoder_hidden_states=c.to(unet.dtype), **extra).sample
    return out


def differs(before: dict, after: dict, names: Iterable[str]) -> bool:
    return any(n not in before or n not in after or not torch.equal(before[n], after[n]) for n in names)


def nothing_warning(path: str) -> str:
    return f"artifact {path} changed nothing: every stage is bit-identical to the model without it"


def _aliases_only(weight: torch.Tensor, new_ids: list[int]) -> bool:
    """Whether every new token's row is bit-identical to some other (pre-existing) vocabulary row."""
    for i in new_ids:
        same = (weight == weight[i]).all(dim=1)
        same[new_ids] = False
        if not same.any():
            return False
    return True


def verify(path: str, before: dict, after: dict, new_rows: list[tuple[torch.Tensor, list[int]]]) -> list[str]:
    """Warnings for the artifact at ``path`` from the stages ``before`` and ``after`` it was applied (``new_rows``:
    per text encoder, its embedding matrix after and the token ids it gained: a token matters where any encoder's
    row for it is no mere alias)."""
    text_path = [n for n in after if n != "unet_output"]
    text_changed = differs(before, after, text_path)
    unet_changed = differs(before, after, ["unet_output"])
    tokens_matter = any(ids and not _aliases_only(weight, ids) for weight, ids in new_rows)
    if not (text_changed or unet_changed or tokens_matter):
        return [nothing_warning(path)]
    if not (text_changed or tokens_matter):
        return [
            f"artifact {path} leaves the text path unchanged (token embeddings, encoder, attn2 K/V are "
            "bit-identical): only the UNet outside attn2 K/V differs"
        ]
    return []
