"""The world's exact attribute scorer: reads shape, colour, pattern, size, position and background off an image.

Rules, not a network (numpy only):

* background: the median colour of the one-pixel border, nearest of ``BACKGROUNDS``;
* the object: the largest connected region of pixels at least ``ALPHA`` of the way from the background colour to
  their nearest object shade (the four colours and their stripe shades), so a blurred edge counts by its middle;
* colour and pattern: the nearest shade of each object pixel off the edge; the colour is the majority, "striped"
  when more than ``STRIPED_FRACTION`` of those pixels are stripe shades;
* shape: a triangle is much narrower in its top third than in its bottom third; a square fills the corners of its
  bounding box (beyond the lines |u| + |v| = 1.2 in box coordinates in [-1, 1]: a circle fills about a third of
  them, a square with soft corners most), a circle does not;
* size: the bounding box's longer side against ``LARGE_EXTENT``; position: the box's centre against the thirds.

Validated at ≥ 99 % per attribute on ground-truth renders (tests/unit/test_world_scenes.py).
"""

from __future__ import annotations

import numpy as np

from .scenes import ATTRIBUTES, BACKGROUNDS, COLORS, NAMES, SIZE, STRIPE_SHADE

ALPHA = 0.5  # object pixels: at least half-way from the background colour to their nearest object shade
STRIPED_FRACTION = 0.2
LARGE_EXTENT = 11.5
TRIANGLE_TAPER = 0.6
SQUARE_CORNERS = 0.6
_PALETTE = np.concatenate([COLORS.numpy(), COLORS.numpy() * STRIPE_SHADE])
_BACKGROUNDS = BACKGROUNDS.numpy()


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean image (all False if none): every pixel takes the smallest label
    among its neighbours until nothing changes."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        near = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        near = np.where(mask, near, big)
        if np.array_equal(near, labels):
            break
        labels = near
    if not mask.any():
        return mask
    values, counts = np.unique(labels[mask], return_counts=True)
    return labels == values[counts.argmax()]


def score_image(image: np.ndarray) -> dict[str, str | None]:
    """The attributes of one image (height, width, 3) in [0, 1]; ``None`` for those that cannot be read (no
    object found)."""
    image = np.asarray(image, dtype=np.float32)
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    bg = int(_nearest(np.median(border, 0)[None], _BACKGROUNDS)[0])
    out: dict[str, str | None] = dict.fromkeys(NAMES)
    out["background"] = ATTRIBUTES["background"][bg]
    near = _nearest(image.reshape(-1, 3), _PALETTE).reshape(image.shape[:2])
    to_bg = np.sqrt(((image - _BACKGROUNDS[bg]) ** 2).sum(-1))
    alpha = to_bg / np.sqrt(((_PALETTE - _BACKGROUNDS[bg]) ** 2).sum(-1))[near]
    mask = largest_component(close_rows(alpha >= ALPHA))
    if mask.sum() < 6:
        return out
    inner = erode(mask)
    kind = near[inner if inner.sum() >= 4 else mask]
    out["color"] = ATTRIBUTES["color"][int(np.bincount(kind % 4, minlength=4).argmax())]
    out["pattern"] = ATTRIBUTES["pattern"][int((kind >= 4).mean() > STRIPED_FRACTION)]
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = y1 - y0, x1 - x0
    out["size"] = ATTRIBUTES["size"][int(max(h, w) > LARGE_EXTENT)]
    cx = (x0 + x1) / 2
    out["position"] = ATTRIBUTES["position"][0 if cx < SIZE * 0.39 else 2 if cx > SIZE * 0.61 else 1]
    third = max(h // 3, 1)
    box = mask[y0:y1, x0:x1]
    top, bottom = box[:third].sum(1).mean(), box[-third:].sum(1).mean()
    if top < TRIANGLE_TAPER * bottom:
        out["shape"] = "triangle"
    else:
        v = (np.arange(h) + 0.5) / h * 2 - 1
        u = (np.arange(w) + 0.5) / w * 2 - 1
        corners = np.abs(v)[:, None] + np.abs(u)[None, :] > 1.2
        out["shape"] = "square" if box[corners].mean() > SQUARE_CORNERS else "circle"
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are in it too (no blended edge pixels)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def close_rows(mask: np.ndarray, gap: int = 2) -> np.ndarray:
    """``mask`` with gaps of up to ``gap`` pixels between set pixels of a column filled (stripes too close to
    the background to pass the threshold)."""
    out = mask.copy()
    for k in range(1, gap + 1):
        for shift in range(1, k + 1):
            above = np.zeros_like(mask)
            below = np.zeros_like(mask)
            above[shift:] = mask[:-shift]
            below[: -(k + 1 - shift)] = mask[k + 1 - shift :]
            out |= above & below
    return out


def score_images(images: np.ndarray) -> list[dict[str, str | None]]:
    """``score_image`` for each image of a batch (image, height, width, 3) in [0, 1]."""
    return [score_image(im) for im in images]


def correct(scored: dict[str, str | None], values: list[int], named: list[bool]) -> dict[str, bool]:
    """For each attribute the caption names, whether the scored image shows it."""
    return {
        a: scored[a] == ATTRIBUTES[a][v]
        for a, v, says in zip(NAMES, values, named)
        if says
    }  # fmt: skip
