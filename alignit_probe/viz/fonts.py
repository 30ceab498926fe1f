"""Fonts for text drawn in figures and grids: DejaVu Sans (which matplotlib ships, so text renders the same
everywhere), and for characters it lacks (CJK, …) fonts found on the system, then matplotlib's Last Resort font (a
glyph per Unicode block) — never an empty box, never matplotlib's "Glyph … missing" warning. matplotlib and PIL are
imported when drawing."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

LAST_RESORT = "Last Resort High-Efficiency"
CJK_FAMILIES = (  # tried in this order where installed (matplotlib falls back glyph by glyph)
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Arial Unicode MS",
    "Microsoft YaHei",
    "MS Gothic",
    "Apple SD Gothic Neo",
    "Hiragino Sans",
)


@contextlib.contextmanager
def fallback_fonts() -> Iterator[None]:
    """Inside, matplotlib draws each character the default sans-serif font lacks in a fallback font (it falls back
    along ``font.family``, glyph by glyph), without its log line for a fallback font that has no bold weight."""
    import matplotlib

    log = logging.getLogger("matplotlib.font_manager")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        with matplotlib.rc_context({"font.family": ["sans-serif", *fallback_families()]}):
            yield
    finally:
        log.setLevel(level)


def fallback_families() -> list[str]:
    """Families matplotlib should fall back to after the style's sans-serif fonts, those installed only."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in (*CJK_FAMILIES, LAST_RESORT) if f in installed]


class Text:
    """Text in one size: DejaVu Sans (which matplotlib ships, so text renders the same everywhere), each character
    it lacks (CJK, …) in the first font matplotlib finds on the system that has it, else in matplotlib's Last Resort
    font (a glyph per Unicode block), never as an empty box."""

    def __init__(self, size: int):
        self.size = size

    def runs(self, text: str) -> list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]]:
        """``text`` cut into (piece, face) runs of characters drawn with the same font."""
        out: list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]] = []
        for ch in text:
            face = _face(_file_for(ch), self.size)
            if out and out[-1][1] is face:
                out[-1] = (out[-1][0] + ch, face)
            else:
                out.append((ch, face))
        return out

    def length(self, text: str, draw: ImageDraw.ImageDraw) -> float:
        return sum(draw.textlength(piece, font=face) for piece, face in self.runs(text))

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: str) -> None:
        x, y = xy
        for piece, face in self.runs(text):
            draw.text((x, y), piece, fill=fill, font=face)
            x += draw.textlength(piece, font=face)


@functools.cache
def _font_files() -> tuple[str, ...]:
    try:
        import matplotlib
        from matplotlib import font_manager
    except ImportError:
        return ()
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    first, last = str(ttf / "DejaVuSans.ttf"), str(ttf / "LastResortHE-Regular.ttf")
    upright = {  # regular weights first, then by family
        f.fname: (f.weight not in (400, "normal", "regular"), f.name)
        for f in font_manager.fontManager.ttflist
        if f.style == "normal" and f.fname not in (first, last)
    }
    return tuple(f for f in (first, *sorted(upright, key=upright.get), last) if Path(f).is_file())


@functools.cache
def _glyphs(path: str):
    from matplotlib.ft2font import FT2Font

    return FT2Font(path)


@functools.lru_cache(maxsize=4096)
def _file_for(ch: str) -> str | None:
    files = _font_files()
    for f in files:
        try:
            if _glyphs(f).get_char_index(ord(ch)):
                return f
        except (OSError, RuntimeError, ValueError):  # a font FreeType cannot read
            continue
    return files[0] if files else None


@functools.cache
def _face(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, size) if path else ImageFont.load_default()
    except OSError:
        return ImageFont.load_default()
