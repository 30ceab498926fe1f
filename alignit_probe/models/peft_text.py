"""Text-encoder LoRA when transformers refuses the installed peft.

diffusers loads a LoRA's ``text_encoder`` / ``text_encoder_2`` part (``train_dreambooth_lora[_sdxl].py
--train_text_encoder``) through transformers' ``PreTrainedModel.load_adapter``. transformers 5 refuses any peft below
its ``MIN_PEFT_VERSION`` (0.22 for transformers 5.24) although the peft it refuses injects the same LoRA layers; no
such peft may be installable yet. For the length of one ``load_lora_weights`` call, ``peft_load_adapter`` gives the
text encoders a ``load_adapter`` that does what transformers' does for a LoRA state dict (inject the adapter, load its
weights, register its config), with peft's own ``inject_adapter_in_model`` and ``set_peft_model_state_dict``;
everything else (key conversion, network alphas, scaling, several adapters) stays diffusers'. The override is removed
afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def transformers_refuses_peft() -> bool:
    """Whether this transformers' ``load_adapter`` refuses the installed peft."""
    from packaging.version import Version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # transformers 4.x names no minimum there
        return False
    return Version(importlib.metadata.version("peft")) < Version(MIN_PEFT_VERSION)


def _load_adapter(
    self: PreTrainedModel, adapter_name: str, adapter_state_dict: dict, peft_config: object, **_: object
) -> None:
    """``load_adapter`` as diffusers calls it (a LoRA state dict in peft keys and its ``LoraConfig``)."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    if adapter_name in (getattr(self, "peft_config", None) or {}):
        raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
    inject_adapter_in_model(peft_config, self, adapter_name)
    result = set_peft_model_state_dict(self, adapter_state_dict, adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"LoRA weights for layers the text encoder lacks: {', '.join(unexpected[:3])}")
    if not getattr(self, "_hf_peft_config_loaded", False) or not hasattr(self, "peft_config"):
        self.peft_config = {}
    self._hf_peft_config_loaded = True
    self.peft_config[adapter_name] = peft_config
    self.eval()


@contextlib.contextmanager
def peft_load_adapter(encoders: list[PreTrainedModel]) -> Iterator[None]:
    """Within the block, ``encoders`` load LoRA adapters with peft directly when transformers refuses its version."""
    if not transformers_refuses_peft():
        yield
        return
    for te in encoders:
        te.load_adapter = types.MethodType(_load_adapter, te)
    try:
        yield
    finally:
        for te in encoders:
            te.__dict__.pop("load_adapter", None)
