"""Small CLI helpers: prompt templates with several concepts, labeled grids with their options in PNG text."""

import pytest
from PIL import Image

from alignit_probe.cli.common import fill_template
from alignit_probe.errors import ProbeError
from alignit_probe.text.concepts import Concept
from alignit_probe.viz.fonts import Text
from alignit_probe.viz.grid import image_grid

CONCEPTS = [Concept("<new1>", "cat"), Concept("<new2>", "dog")]


def test_braces_fill_the_concepts_in_order_and_by_index():
    assert fill_template("a {} next to a {}", CONCEPTS) == "a <new1> cat next to a <new2> dog"
    assert fill_template("{1} chasing {0}, {1} wins", CONCEPTS) == "<new2> dog chasing <new1> cat, <new2> dog wins"
    assert fill_template("no placeholder", CONCEPTS) == "no placeholder"
    assert fill_template("a {}", [Concept("sks")]) == "a sks"
    with pytest.raises(ProbeError, match="more concept placeholders"):
        fill_template("{} {} {}", CONCEPTS)
    with pytest.raises(ProbeError, match=r"names concept \{2\}, but there are 2"):
        fill_template("{2}", CONCEPTS)


def test_grid_keeps_prompts_and_caption_in_png_text(tmp_path):
    images = {name: [Image.new("RGB", (32, 32), c)] for name, c in (("baseline", "red"), ("alignit", "blue"))}
    path = image_grid(images, ["photo of a <new1> cat on the beach"], tmp_path / "g.png", cell=64, caption="alpha 1")
    with Image.open(path) as im:
        assert im.info["prompts"] == "photo of a <new1> cat on the beach" and im.info["caption"] == "alpha 1"
        assert im.size[0] == 128


def test_grid_caption_wraps_to_the_grid_and_labels_end_in_an_ellipsis(tmp_path):
    from PIL import ImageDraw

    from alignit_probe.viz.grid import fitted, wrapped

    draw, small = ImageDraw.Draw(Image.new("RGB", (1, 1))), Text(12)
    caption = "dummy 'photo of a <new1> cat' · blocks up · keys and values · alpha 0.7 · 30 steps, guidance 7.5, seed 0"
    lines = wrapped(caption, small, 120, draw)
    assert " ".join(lines) == caption and len(lines) > 2  # every word kept, in order
    assert all(small.length(line, draw) <= 120 for line in lines)
    label = fitted("a very long prompt " * 10, small, 120, draw)
    assert label.endswith("…") and small.length(label, draw) <= 120
    assert fitted("short", small, 120, draw) == "short"
    images = {name: [Image.new("RGB", (32, 32), "red")] for name in ("baseline", "alignit")}
    one = image_grid(images, ["p"], tmp_path / "one.png", cell=64, caption="alpha 1")
    many = image_grid(images, ["p"], tmp_path / "many.png", cell=64, caption=caption)
    with Image.open(one) as a, Image.open(many) as b:  # the long caption takes more lines above the images
        assert b.size[1] > a.size[1] and b.info["caption"] == caption


def test_grid_text_draws_every_character_with_a_font_that_has_it():
    """Characters DejaVu Sans lacks (CJK; ⌒, an arc STIX has) come from a font that has them, not as boxes."""
    from matplotlib.ft2font import FT2Font

    text = "a <new1> cat in 東京 \u2312 ok"
    runs = Text(12).runs(text)
    assert "".join(piece for piece, _ in runs) == text
    assert [piece for piece, face in runs if "DejaVuSans.ttf" in face.path][0] == "a <new1> cat in "
    for piece, face in runs:
        assert all(FT2Font(face.path).get_char_index(ord(ch)) for ch in piece), (piece, face.path)
    assert len({face.path for _, face in runs}) >= 2


def test_prompts_file_with_a_bom_crlf_comments_and_blank_lines(tmp_path):
    """As Windows editors save it: the byte-order mark is no part of the first prompt."""
    import argparse

    from alignit_probe.cli.common import read_prompts

    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffphoto of a <new1> cat\r\n# a comment\r\n\r\n  a <new1> on the beach  \r\n".encode())
    args = argparse.Namespace(prompt=None, prompts=str(path), concept=["<new1>"], class_word=["cat"], custom=["x"])
    assert read_prompts(args) == ["photo of a <new1> cat", "a <new1> on the beach"]


def test_concept_flags_that_cannot_be_meant():
    import argparse

    from alignit_probe.cli.common import concepts_from

    def concepts(tokens, words=None):
        return concepts_from(argparse.Namespace(concept=tokens, class_word=words))

    with pytest.raises(ProbeError, match=r"--concept <new1> is given twice"):
        concepts(["<new1>", "<new1>"])
    with pytest.raises(ProbeError, match=r"holds a space.* — pass --concept <new1> --class-word cat$"):
        concepts(["<new1> cat"])
    assert [c.token for c in concepts(["<new1>", "<new2>"], ["cat"])] == ["<new1>", "<new2>"]
    cs = [Concept("<new1>", "cat")]
    with pytest.raises(ProbeError, match=r"names concept \{2\}, but there are 1 --concept values \(\{0\}…\{0\}\)"):
        fill_template("{2} on a table", cs)
    with pytest.raises(ProbeError, match="more concept placeholders than --concept values"):
        fill_template("{} and {}", cs)
    assert fill_template("{0} and {0}", cs) == "<new1> cat and <new1> cat"


def test_concept_and_class_word_are_stripped_and_empty_ones_said():
    import argparse

    from alignit_probe.cli.common import concepts_from
    from alignit_probe.outputs import out_dir

    got = concepts_from(argparse.Namespace(concept=[" <new1> "], class_word=[""]))
    assert got == [Concept("<new1>", None)]  # "" is no class word: the missing-class-word warning applies
    with pytest.raises(ProbeError, match="--concept is empty"):
        concepts_from(argparse.Namespace(concept=["  "], class_word=None))
    with pytest.raises(ProbeError, match=r"named like a \.txt file, but this command writes a folder — name it x$"):
        out_dir("x.txt", False)


def test_output_folders_replace_only_what_alignit_probe_wrote(tmp_path):
    from alignit_probe.outputs import out_dir, staged_folder

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ProbeError, match="holds files alignit-probe did not write"):
            out_dir(str(theirs), overwrite)
    assert (theirs / "thesis.tex").read_text() == "mine"
    ours = out_dir(str(tmp_path / "ours"), False)
    with staged_folder(ours) as tmp:
        (tmp / "grid.png").write_bytes(b"png")
    with pytest.raises(ProbeError, match="is not empty — pass --overwrite"):
        out_dir(str(ours), False)
    assert out_dir(str(ours), True) == ours  # its own earlier output: replaced with --overwrite
    old = tmp_path / "old"  # written before the marker: only what the commands write
    (old / "images").mkdir(parents=True)
    (old / "report.html").write_text("<html>")
    assert out_dir(str(old), True) == old
    (tmp_path / "new.partial").mkdir()
    (tmp_path / "new.partial" / "notes.txt").write_text("mine")
    with pytest.raises(ProbeError, match="new.partial exists and is not an unfinished output of alignit-probe"):
        with staged_folder(tmp_path / "new"):
            pass
    assert (tmp_path / "new.partial" / "notes.txt").read_text() == "mine"
