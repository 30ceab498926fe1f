"""Labeled image grids (PIL; fonts as :class:`fonts.Text` picks them). The grid's PNG carries its row labels, caption
and notes as text chunks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .fonts import Text

if TYPE_CHECKING:
    from PIL import ImageDraw


def fitted(text: str, face: Text, width: float, draw: ImageDraw.ImageDraw) -> str:
    """``text`` cut to ``width`` pixels, ending in "…" where cut."""
    if face.length(text, draw) <= width:
        return text
    while text and face.length(text + "…", draw) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def wrapped(text: str, face: Text, width: float, draw: ImageDraw.ImageDraw) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words (a word wider than a line is cut)."""
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and face.length(line, draw) <= width:
            lines[-1] = line
        else:
            lines.append(fitted(word, face, width, draw))
    return lines


def image_grid(
    columns: dict[str, list],
    row_labels: list[str],
    path: str | Path,
    cell: int = 256,
    caption: str | None = None,
    notes: dict[str, list[str]] | None = None,
) -> Path:
    """A labeled grid PNG: one column per key of ``columns`` (e.g. baseline/custom/alignit), one row per prompt,
    ``caption`` (the options that made it) below the column titles; ``notes`` ({column: one line per image}, e.g.
    what a scorer read) under the images."""
    from PIL import Image, ImageDraw, PngImagePlugin

    title, small = Text(15), Text(12)
    names = list(columns)
    width = cell * len(names)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = wrapped(caption, small, width - 8, measure) if caption else []
    label_h, top = 22, 28 + 16 * len(lines) + (4 if lines else 0)
    note_h = 18 if notes else 0
    rows, row_h = len(row_labels), cell + label_h + note_h
    grid = Image.new("RGB", (width, top + rows * row_h), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        title.draw(draw, (j * cell + 4, 4), fitted(name, title, cell - 8, draw), "black")
        for i, img in enumerate(columns[name]):
            y = top + i * row_h
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (j * cell, y + label_h))
            note = (notes or {}).get(name, [])[i : i + 1]
            if note:
                small.draw(
                    draw, (j * cell + 4, y + label_h + cell + 2), fitted(note[0], small, cell - 8, draw), "black"
                )
    for k, line in enumerate(lines):  # the whole caption, wrapped to the grid's width
        small.draw(draw, (4, 26 + 16 * k), line, "dimgray")
    for i, label in enumerate(row_labels):  # one line; the whole prompt is in the PNG's "prompts" text
        small.draw(draw, (4, top + i * row_h + 3), fitted(label, small, width - 8, draw), "black")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompts", "\n".join(row_labels))
    if caption:
        info.add_itxt("caption", caption)
    if notes:  # what is written under the images, per column drawn
        import json

        info.add_itxt("notes", json.dumps({name: list(notes.get(name, [])) for name in names}))
    path = Path(path)
    grid.save(path, pnginfo=info)
    return path
