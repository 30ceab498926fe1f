"""The toy world's scenes: one flat shape on a plain background, 32×32 pixels, and captions over real English words.

A scene is a row of attribute indices (``ATTRIBUTES`` order) plus a little jitter. Rendering is vectorised in torch,
so a training batch of thousands of scenes is drawn on the device in one pass. A caption names the shape always and
each other attribute with some probability; the scorer (``world.scorer``) checks only what the caption names.

Held-out captions: ``HELD_OUT`` (colour, shape, background) triples never appear in the pretraining scenes; the
world's accuracy is measured on captions naming them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 32
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "color": ("red", "green", "blue", "yellow"),
    "pattern": ("plain", "striped"),
    "size": ("small", "large"),
    "position": ("left", "center", "right"),
    "background": ("white", "black", "gray", "purple"),
}
NAMES = tuple(ATTRIBUTES)
COLORS = torch.tensor([[0.86, 0.16, 0.16], [0.16, 0.70, 0.24], [0.16, 0.31, 0.86], [0.90, 0.82, 0.16]])
STRIPE_SHADE = 0.4  # stripes are the shape's colour at this brightness
BACKGROUNDS = torch.tensor([[0.96, 0.96, 0.96], [0.06, 0.06, 0.06], [0.50, 0.50, 0.50], [0.55, 0.25, 0.65]])
RADII = (4.5, 7.5)  # small, large: half the extent of a circle or triangle
CENTERS_X = (9.0, 16.0, 23.0)  # left, center, right
JITTER = 1.0
POSITION_WORDS = {"left": "on the left", "center": "in the center", "right": "on the right"}
# (color, shape, background) never drawn in pretraining: the held-out captions name these
HELD_OUT = (("red", "triangle", "gray"), ("green", "circle", "black"), ("blue", "square", "white"),
            ("yellow", "circle", "purple"), ("blue", "triangle", "purple"), ("green", "square", "gray"))  # fmt: skip


def index(attribute: str, value: str) -> int:
    """The index of ``value`` among ``attribute``'s values."""
    return ATTRIBUTES[attribute].index(value)


@dataclass
class Scenes:
    """A batch of scenes: ``values`` (scene, attribute) int64 indices in ``NAMES`` order, ``named`` (scene,
    attribute) bool — which attributes the caption names — and ``jitter`` (scene, 3) in [-1, 1] (x, y, size)."""

    values: torch.Tensor
    named: torch.Tensor
    jitter: torch.Tensor

    def __len__(self) -> int:
        return self.values.shape[0]

    def captions(self, prefix: str = "a photo of a") -> list[str]:
        return [caption(v, n, prefix) for v, n in zip(self.values.tolist(), self.named.tolist())]


def caption(values: list[int], named: list[bool], prefix: str = "a photo of a") -> str:
    """The caption naming the attributes flagged in ``named``: ``a photo of a large red striped circle on the left on
    a white background`` (shape always named; "plain" may be named too)."""
    word = {a: ATTRIBUTES[a][v] for a, v in zip(NAMES, values)}
    says = dict(zip(NAMES, named))
    adjectives = [word[a] for a in ("size", "color", "pattern") if says[a]]
    parts = [prefix, *adjectives, word["shape"]]
    if says["position"]:
        parts.append(POSITION_WORDS[word["position"]])
    if says["background"]:
        parts.append(f"on a {word['background']} background")
    return " ".join(parts)


def held_out_mask(values: torch.Tensor) -> torch.Tensor:
    """True for scenes whose (color, shape, background) is one of ``HELD_OUT``."""
    out = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    c, s, b = (NAMES.index(a) for a in ("color", "shape", "background"))
    for color, shape, bg in HELD_OUT:
        out |= (
            (values[:, c] == index("color", color))
            & (values[:, s] == index("shape", shape))
            & (values[:, b] == index("background", bg))
        )
    return out


def sample_scenes(
    n: int, generator: torch.Generator, split: str = "train", p_named: float = 0.75, fixed: dict | None = None
) -> Scenes:
    """``n`` random scenes. ``split``: "train" (no held-out triple), "held_out" (only held-out triples, all three
    named) or "any". Each attribute other than the shape is named with probability ``p_named``; ``fixed`` pins
    attributes to values ({"background": "white"}) and names them."""
    device = generator.device
    fixed = fixed or {}
    values = torch.stack(
        [torch.randint(len(v), (n,), generator=generator, device=device) for v in ATTRIBUTES.values()], 1
    )
    if split == "held_out":
        pick = torch.randint(len(HELD_OUT), (n,), generator=generator, device=device)
        for k, attr in enumerate(("color", "shape", "background")):
            table = torch.tensor([index(attr, triple[k]) for triple in HELD_OUT], device=device)
            values[:, NAMES.index(attr)] = table[pick]
    elif split == "train":
        bad = held_out_mask(values)
        while bad.any():
            values[bad] = torch.stack(
                [torch.randint(len(v), (int(bad.sum()),), generator=generator, device=device)
                 for v in ATTRIBUTES.values()], 1)  # fmt: skip
            bad = held_out_mask(values)
    named = torch.rand(n, len(NAMES), generator=generator, device=device) < p_named
    named[:, NAMES.index("shape")] = True
    if split == "held_out":
        for attr in ("color", "background"):
            named[:, NAMES.index(attr)] = True
    for attr, value in fixed.items():
        values[:, NAMES.index(attr)] = index(attr, value)
        named[:, NAMES.index(attr)] = True
    jitter = torch.rand(n, 3, generator=generator, device=device) * 2 - 1
    return Scenes(values, named, jitter)


def render(scenes: Scenes) -> torch.Tensor:
    """Images (scene, 3, 32, 32) in [0, 1]: the background colour, the shape in its colour, stripes (every other
    pair of pixel rows) at ``STRIPE_SHADE`` of it."""
    v, j = scenes.values, scenes.jitter
    device = v.device
    col = {a: v[:, i] for i, a in enumerate(NAMES)}
    r = torch.tensor(RADII, device=device)[col["size"]] + 0.5 * j[:, 2]
    cx = torch.tensor(CENTERS_X, device=device)[col["position"]] + JITTER * j[:, 0]
    cy = SIZE / 2 + 2 * JITTER * j[:, 1]
    grid = torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5
    y, x = grid[None, :, None], grid[None, None, :]
    r, cx, cy = r[:, None, None], cx[:, None, None], cy[:, None, None]
    circle = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    half = r * 0.886  # a square of the circle's area
    square = ((x - cx).abs() <= half) & ((y - cy).abs() <= half)
    top = cy - r
    triangle = (y >= top) & (y <= cy + r) & ((x - cx).abs() <= (y - top) / 2)
    shape = col["shape"][:, None, None]
    mask = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    stripes = ((y.long() // 2) % 2 == 1) & (col["pattern"][:, None, None] == 1)
    fg = COLORS.to(device)[col["color"]][:, :, None, None]
    fg = torch.where(stripes[:, None], fg * STRIPE_SHADE, fg)
    bg = BACKGROUNDS.to(device)[col["background"]][:, :, None, None]
    return torch.where(mask[:, None], fg, bg.expand(-1, -1, SIZE, SIZE))
