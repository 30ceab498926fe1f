"""The world's scenes, captions and exact scorer (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignit_probe.models.toy import clip_tokenizer
from alignit_probe.world.model import world_token_ids, world_words
from alignit_probe.world.scenes import (
    ATTRIBUTES,
    HELD_OUT,
    NAMES,
    held_out_mask,
    index,
    render,
    sample_scenes,
)
from alignit_probe.world.scorer import close_rows, largest_component, score_images


def accuracy(scenes, images) -> dict[str, float]:
    scored = score_images(images.permute(0, 2, 3, 1).numpy())
    values = scenes.values.tolist()
    return {
        a: float(np.mean([s[a] == ATTRIBUTES[a][v[i]] for s, v in zip(scored, values)])) for i, a in enumerate(NAMES)
    }


def test_scorer_reads_ground_truth_renders_at_99_percent_per_attribute():
    scenes = sample_scenes(1500, torch.Generator().manual_seed(3), "any", p_named=1.0)
    acc = accuracy(scenes, render(scenes))
    assert min(acc.values()) >= 0.99, acc


def test_scorer_survives_blur_and_noise_on_colour_pattern_position_background():
    """Generated images are soft: a 3×3 box blur plus noise must not change what the scorer reads off large
    objects (shape and size are read off the blurred middle of the edge)."""
    scenes = sample_scenes(400, torch.Generator().manual_seed(4), "any", p_named=1.0, fixed={"size": "large"})
    images = render(scenes)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    noisy = (blurred + 0.02 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    acc = accuracy(scenes, noisy)
    assert min(acc.values()) >= 0.97, acc


def test_pretraining_scenes_never_show_a_held_out_triple_and_held_out_ones_only_those():
    gen = torch.Generator().manual_seed(0)
    train = sample_scenes(4000, gen, "train")
    assert not held_out_mask(train.values).any()
    held = sample_scenes(500, gen, "held_out")
    assert held_out_mask(held.values).all()
    triples = {
        tuple(ATTRIBUTES[a][v[NAMES.index(a)]] for a in ("color", "shape", "background")) for v in held.values.tolist()
    }
    assert triples == set(HELD_OUT)
    assert held.named[:, [NAMES.index(a) for a in ("shape", "color", "background")]].all()


def test_captions_name_exactly_the_flagged_attributes():
    scenes = sample_scenes(300, torch.Generator().manual_seed(1), "any")
    for caption, values, named in zip(scenes.captions(), scenes.values.tolist(), scenes.named.tolist()):
        words = caption.split()
        for a, v, says in zip(NAMES, values, named):
            word = ATTRIBUTES[a][v]
            if a == "background":
                assert (f"{word} background" in caption) == says
            elif a != "position":
                assert (word in words) == says, (caption, a)
        assert caption.startswith("a photo of a ")


def test_every_caption_word_is_one_clip_token_whose_row_is_trained():
    tok = clip_tokenizer()
    ids = set(world_token_ids())
    for word in world_words():
        pieces = tok(word, add_special_tokens=False).input_ids
        assert len(pieces) == 1 and pieces[0] in ids, word


def test_fixed_attributes_are_drawn_and_named():
    scenes = sample_scenes(50, torch.Generator().manual_seed(2), "any", fixed={"background": "white", "color": "blue"})
    assert (scenes.values[:, NAMES.index("background")] == index("background", "white")).all()
    assert (scenes.values[:, NAMES.index("color")] == index("color", "blue")).all()
    assert all("blue" in c and "white background" in c for c in scenes.captions())


def test_rendering_is_deterministic_per_seed():
    a = render(sample_scenes(20, torch.Generator().manual_seed(5)))
    b = render(sample_scenes(20, torch.Generator().manual_seed(5)))
    assert torch.equal(a, b) and a.shape == (20, 3, 32, 32)


@pytest.mark.parametrize("seed", range(3))
def test_largest_component_is_the_biggest_4_connected_region(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((12, 12)) < 0.35
    out = largest_component(mask)
    assert out.sum() > 0 and not (out & ~mask).any()
    # no pixel outside the region touches it (4-connectivity) and no other region is bigger
    padded = np.pad(out, 1)
    touching = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert not (touching & mask & ~out).any()
    rest = mask & ~out
    while rest.any():
        other = largest_component(rest)
        assert other.sum() <= out.sum()
        rest &= ~other


def test_close_rows_fills_gaps_of_two_rows_only():
    mask = np.zeros((10, 1), bool)
    mask[[0, 3, 7], 0] = True  # gap of 2 between 0 and 3, gap of 3 between 3 and 7
    out = close_rows(mask)[:, 0]
    assert out[:4].all() and not out[4:7].any() and out[7]
