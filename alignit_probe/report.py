"""Image grids with labels (PIL only: no matplotlib needed for grids)."""

from __future__ import annotations

from pathlib import Path


def image_grid(columns: dict[str, list], row_labels: list[str], path: str | Path, cell: int = 256) -> Path:
    """A labeled grid PNG: one column per key of ``columns`` (e.g. baseline/custom/alignit), one row per prompt."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = list(columns)
    pad_top, pad_left = 24, 0
    label_h = 18
    rows = len(row_labels)
    grid = Image.new("RGB", (pad_left + cell * len(names), pad_top + rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((pad_left + j * cell + 4, 4), name, fill="black", font=font)
        for i, img in enumerate(columns[name]):
            y = pad_top + i * (cell + label_h)
            grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (pad_left + j * cell, y + label_h))
    for i, label in enumerate(row_labels):
        draw.text((4, pad_top + i * (cell + label_h) + 2), label[:120], fill="black", font=font)
    path = Path(path)
    grid.save(path)
    return path
