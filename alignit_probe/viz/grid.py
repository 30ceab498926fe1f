"""Labeled image grids (PIL; the font is DejaVu Sans, which matplotlib ships, so text renders the same everywhere).
The grid's PNG carries its row labels and caption as text chunks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageFont


def font(size: int = 14) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def image_grid(
    columns: dict[str, list], row_labels: list[str], path: str | Path, cell: int = 256, caption: str | None = None
) -> Path:
    """A labeled grid PNG: one column per key of ``columns`` (e.g. baseline/custom/alignit), one row per prompt,
    ``caption`` (the options that made it) below the column titles."""
    from PIL import Image, ImageDraw, PngImagePlugin

    title, small = font(15), font(12)
    names = list(columns)
    label_h, top = 22, 28 + (20 if caption else 0)
    rows = len(row_labels)
    grid = Image.new("RGB", (cell * len(names), top + rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((j * cell + 4, 4), name, fill="black", font=title)
        for i, img in enumerate(columns[name]):
            y = top + i * (cell + label_h)
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (j * cell, y + label_h))
    if caption:
        draw.text((4, 26), caption[: 24 * len(names)], fill="dimgray", font=small)
    for i, label in enumerate(row_labels):
        draw.text((4, top + i * (cell + label_h) + 3), label[: 30 * len(names)], fill="black", font=small)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompts", "\n".join(row_labels))
    if caption:
        info.add_itxt("caption", caption)
    path = Path(path)
    grid.save(path, pnginfo=info)
    return path
