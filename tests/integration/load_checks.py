"""Checks shared by the loading tests (their fixtures, ``arts``/``base``/``clean``, are in conftest.py)."""

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

NOTHING = "changed nothing: every stage is bit-identical to the model without it"


def assert_untouched(pipe, base):
    assert len(pipe.tokenizer) == len(base.tokenizer)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight)
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), base.unet.state_dict().values()))
    assert pipe.unet.state_dict().keys() == base.unet.state_dict().keys()


def err(excinfo, *words):
    msg = str(excinfo.value)
    assert excinfo.value.fix, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg
