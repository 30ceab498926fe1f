"""Small CLI helpers: prompt templates with several concepts, labeled grids with their options in PNG text."""

import pytest
from PIL import Image

from alignit_probe.cli.common import fill_template
from alignit_probe.errors import ProbeError
from alignit_probe.text.concepts import Concept
from alignit_probe.viz.grid import image_grid

CONCEPTS = [Concept("<new1>", "cat"), Concept("<new2>", "dog")]


def test_braces_fill_the_concepts_in_order_and_by_index():
    assert fill_template("a {} next to a {}", CONCEPTS) == "a <new1> cat next to a <new2> dog"
    assert fill_template("{1} chasing {0}, {1} wins", CONCEPTS) == "<new2> dog chasing <new1> cat, <new2> dog wins"
    assert fill_template("no placeholder", CONCEPTS) == "no placeholder"
    assert fill_template("a {}", [Concept("sks")]) == "a sks"
    with pytest.raises(ProbeError, match="more concept placeholders"):
        fill_template("{} {} {}", CONCEPTS)
    with pytest.raises(ProbeError, match="more concept placeholders"):
        fill_template("{2}", CONCEPTS)


def test_grid_keeps_prompts_and_caption_in_png_text(tmp_path):
    images = {name: [Image.new("RGB", (32, 32), c)] for name, c in (("baseline", "red"), ("alignit", "blue"))}
    path = image_grid(images, ["photo of a <new1> cat on the beach"], tmp_path / "g.png", cell=64, caption="alpha 1")
    with Image.open(path) as im:
        assert im.info["prompts"] == "photo of a <new1> cat on the beach" and im.info["caption"] == "alpha 1"
        assert im.size[0] == 128
