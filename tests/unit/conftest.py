import pytest

from alignit_probe.models.toy import clip_tokenizer


@pytest.fixture(scope="module")
def base_tok():
    """The real CLIP tokenizer (no weights)."""
    return clip_tokenizer()
