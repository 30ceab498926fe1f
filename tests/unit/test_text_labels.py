"""Token labels as the text they stand for (byte-level BPE decoded), drawn in fonts that have their characters."""

import warnings

from alignit_probe import token_text, token_texts
from alignit_probe.analysis.maps import split_words
from alignit_probe.models.toy import clip_tokenizer
from alignit_probe.text.byte_level import bytes_to_unicode, readable


def test_tokens_read_as_written():
    tok = clip_tokenizer()
    tokens = tok.tokenize("a café in 東京")  # 東京 splits into 3 tokens, one cut inside 京
    assert [readable(t) for t in tokens[:4]] == ["a", "café", "in", "東"]
    assert [w for w, _ in split_words(tokens)] == ["a", "café", "in", "東京"]
    assert token_texts(tokens) == ["a", "café", "in", "東", "京…", "…京"]  # each piece of 京 labeled with it
    assert token_text("cafÃ©</w>") == "café" and token_texts(["<new1>", "cat</w>"]) == ["<new1>", "cat"]
    assert readable("<new1>") == "<new1>" and readable("<|endoftext|>") == "<|endoftext|>"
    first_byte_only = bytes_to_unicode()[0xE6]  # a character cut between tokens: its bytes shown as such
    assert readable(first_byte_only) == "\\xe6"


def test_figures_draw_cjk_labels_without_missing_glyph_warnings(tmp_path):
    import numpy as np
    import xarray as xr
    from PIL import Image

    from alignit_probe.viz.figures import drawing, new_figure, png_bytes
    from alignit_probe.viz.overlay import plot_overlay

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with drawing():
            fig = new_figure(2, 2)
            fig.subplots().set_title("東京 cat")
            assert png_bytes(fig)[:4] == b"\x89PNG"
        maps = xr.DataArray(
            np.ones((2, 4, 4)), dims=("token", "y", "x"), coords={"token_text": ("token", ["æĿ±", "cat</w>"])}
        )
        plot_overlay(Image.new("RGB", (8, 8)), maps, ["東", "cat"], tmp_path / "o.png")
    assert not [w for w in caught if "missing from" in str(w.message)], [str(w.message) for w in caught]
