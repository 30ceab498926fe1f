"""Divergences between attention maps, CLIP word grouping, and the lazy-plotting rule."""

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from alignit_probe.analysis.maps import (
    divergences,
    iou,
    jensen_shannon,
    normalize,
    one_minus_iou,
    one_minus_pearson,
    split_words,
    word_maps,
)


def maps(values, prompt=1, token=1):
    """A (prompt, token, y, x) DataArray holding the same 2-D map everywhere."""
    arr = np.broadcast_to(np.asarray(values, dtype=np.float32), (prompt, token, *np.shape(values))).copy()
    return xr.DataArray(arr, dims=("prompt", "token", "y", "x"))


def scalar(da):
    assert da.dims == ("prompt", "token")
    return float(da.values[0, 0])


def random_maps(seed, shape=(2, 5, 8, 8)):
    return xr.DataArray(np.random.default_rng(seed).random(shape), dims=("prompt", "token", "y", "x"))


def test_identical_maps_have_zero_divergence():
    a = random_maps(0)
    out = divergences(a, a.copy())
    for name in ("one_minus_pearson", "jensen_shannon", "one_minus_iou"):
        assert out[name].dims == ("prompt", "token")
        np.testing.assert_allclose(out[name].values, 0.0, atol=1e-12)
    np.testing.assert_allclose(iou(a, a).values, 1.0)


def test_hand_made_cases():
    one_hot_a, one_hot_b = maps([[1, 0], [0, 0]]), maps([[0, 1], [0, 0]])
    assert scalar(jensen_shannon(one_hot_a, one_hot_b)) == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert scalar(one_minus_iou(one_hot_a, one_hot_b)) == pytest.approx(1.0)
    assert scalar(one_minus_pearson(one_hot_a, one_hot_b)) == pytest.approx(4 / 3)  # r = -1/3
    # p = (.5, .5, 0, 0), q = (.5, 0, .5, 0): m = (.5, .25, .25, 0), KL(p||m) = KL(q||m) = 0.5 bit
    assert scalar(jensen_shannon(maps([[1, 1], [0, 0]]), maps([[2, 0], [2, 0]]))) == pytest.approx(0.5)
    assert scalar(one_minus_pearson(maps([[1, 2], [3, 4]]), maps([[4, 3], [2, 1]]))) == pytest.approx(2.0)
    assert scalar(one_minus_pearson(maps([[1, 2], [3, 4]]), maps([[10, 20], [30, 40]]))) == pytest.approx(0.0)
    a, b = maps([[1.0, 0.6], [0.4, 0.0]]), maps([[1.0, 0.4], [0.6, 0.0]])
    assert scalar(iou(a, b)) == pytest.approx(1 / 3)  # min-max range 0..1, > 0.5: {0, 1} vs {0, 2}
    assert scalar(iou(a, b, level=0.3)) == pytest.approx(1.0)
    assert scalar(iou(maps([[2.0, 1.2], [0, 0]]), maps([[1.0, 0.6], [0, 0]]))) == 1.0  # scale-free
    assert scalar(iou(maps([[7.0, 6.2], [5, 5]]), maps([[1.0, 0.6], [0, 0]]))) == 1.0  # and offset-free


def test_iou_on_min_max_normalized_maps_exact_values():
    # a = 2, 4, …, 18 row-major: (a - 2) / 16 = 0, 1/8, …, 1; b the same pixels in reverse order
    a = maps(np.arange(2.0, 20.0, 2.0).reshape(3, 3))
    b = maps(np.arange(2.0, 20.0, 2.0)[::-1].reshape(3, 3))
    # level 0.5 (strictly above, DAAM's `im > threshold`): a keeps pixels 5..8, b pixels 0..3: disjoint
    assert scalar(iou(a, b)) == 0.0 and scalar(one_minus_iou(a, b)) == 1.0
    # level 0.2: a keeps 2..8, b keeps 0..6 → 5 shared of 9
    assert scalar(iou(a, b, level=0.2)) == pytest.approx(5 / 9)
    assert scalar(one_minus_iou(a, b, level=0.2)) == pytest.approx(4 / 9)
    # level 0.5 on a vs a shifted and scaled copy with one pixel moved: {5, 6, 7, 8} vs {4, 6, 7, 8}
    c = np.arange(2.0, 20.0, 2.0)
    c[4], c[5] = 11.0, 9.0  # pixel 4 at (11-2)/16 = 0.5625 > 0.5, pixel 5 at 0.4375
    assert scalar(iou(a, maps(3.0 * c.reshape(3, 3) + 100.0))) == pytest.approx(3 / 5)
    out = divergences(a, b, level=0.2)
    assert out.attrs["iou_level"] == 0.2
    assert float(out["one_minus_iou"][0, 0]) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="level"):
        iou(a, b, level=1.0)


def test_flat_maps_with_different_peaks_are_told_apart():
    """Real attention maps are flat (min/max 0.7-0.9): a mask at 0.5 x max kept every pixel of both maps."""
    base = np.full((4, 4), 0.8)
    pa, pb = base.copy(), base.copy()
    pa[0, 0], pa[0, 1] = 1.0, 0.95  # peak top left
    pb[3, 3], pb[3, 2] = 1.0, 0.95  # peak bottom right
    a, b = maps(pa), maps(pb)
    old = lambda m: m >= 0.5 * m.max()  # the previous convention
    assert (old(pa) & old(pb)).sum() / (old(pa) | old(pb)).sum() == 1.0  # said "same map"
    assert scalar(iou(a, b)) == 0.0  # {(0,0), (0,1)} vs {(3,3), (3,2)}: (0.95-0.8)/0.2 = 0.75 > 0.5
    assert scalar(one_minus_iou(a, b)) == 1.0
    pc = base.copy()
    pc[0, 0], pc[1, 0] = 1.0, 0.95  # same top-left peak, spread downwards instead of right
    assert scalar(iou(a, maps(pc))) == pytest.approx(1 / 3)
    assert scalar(iou(a, maps(pc), level=0.8)) == 1.0  # only the peak pixel above 0.8 in both


def test_js_symmetric_and_bounded():
    a, b = random_maps(1) ** 4, random_maps(2) ** 4
    ab, ba = jensen_shannon(a, b), jensen_shannon(b, a)
    np.testing.assert_allclose(ab.values, ba.values, atol=1e-15)
    assert float(ab.min()) > 0 and float(ab.max()) <= 1
    assert jensen_shannon(a, 3.0 * a).values == pytest.approx(0.0, abs=1e-12)  # scale-free


def test_degenerate_maps_are_nan():
    flat, zero, some = maps([[1, 1], [1, 1]]), maps([[0, 0], [0, 0]]), maps([[1, 0], [0, 0]])
    assert np.isnan(scalar(one_minus_pearson(flat, some)))
    assert np.isnan(scalar(jensen_shannon(zero, some)))
    assert np.isnan(scalar(iou(zero, zero)))
    assert scalar(iou(zero, some)) == 0.0
    assert np.isnan(scalar(iou(flat, 2.0 * flat)))  # constant maps (max == min): empty masks
    assert scalar(iou(flat, some)) == 0.0


def test_vectorized_over_extra_dims_and_named_spatial_dims():
    a = xr.DataArray(np.random.default_rng(3).random((2, 3, 4, 6, 6)), dims=("prompt", "layer", "token", "y_6", "x_6"))
    b = a.copy(data=a.values[..., ::-1, :].copy())
    out = divergences(a, b, dims=("y_6", "x_6"))
    assert out["jensen_shannon"].dims == ("prompt", "layer", "token")
    single = jensen_shannon(a.isel(prompt=1, layer=2, token=3), b.isel(prompt=1, layer=2, token=3), dims=("y_6", "x_6"))
    assert float(out["jensen_shannon"][1, 2, 3]) == pytest.approx(float(single))


def test_split_words():
    tokens = [
        "<|startoftext|>",
        "a</w>",
        "xy",
        "lo",
        "ph",
        "onist</w>",
        "<new1>",
        "<new1>_1",
        "dog</w>",
        "<|endoftext|>",
        "<|endoftext|>",
    ]
    assert split_words(tokens) == [
        ("a", [1]),
        ("xylophonist", [2, 3, 4, 5]),
        ("<new1>", [6]),
        ("<new1>_1", [7]),
        ("dog", [8]),
    ]
    assert split_words(["<|startoftext|>", "un", "<new1>", "<|endoftext|>"]) == [("un", [1]), ("<new1>", [2])]


def test_word_maps_sum_then_renormalize():
    tokens = ["<|startoftext|>", "sk", "s</w>", "<new1>", "dog</w>", "<|endoftext|>"]
    data = np.zeros((1, 6, 2, 2))
    data[0, 1] = [[1, 0], [0, 0]]
    data[0, 2] = [[0, 3], [0, 0]]
    data[0, 4] = [[0, 0], [2, 1]]
    da = xr.DataArray(data, dims=("prompt", "token", "y", "x"))
    out = word_maps(da, tokens)
    assert out.dims == ("prompt", "word", "y", "x")
    assert out["word_text"].values.tolist() == ["sks", "<new1>", "dog"]
    np.testing.assert_allclose(out.isel(prompt=0, word=0).values, [[1 / 3, 1], [0, 0]])
    np.testing.assert_allclose(out.isel(prompt=0, word=1).values, 0.0)  # all-zero map stays zero
    np.testing.assert_allclose(out.isel(prompt=0, word=2).values, [[0, 0], [1, 0.5]])
    # one token list per prompt: words padded with NaN, labels per (prompt, word)
    two = xr.concat([da, da], dim="prompt")
    per = word_maps(two, [tokens, ["<|startoftext|>", "dog</w>", "<|endoftext|>", "", "", ""]])
    assert per["word_text"].dims == ("prompt", "word")
    assert per["word_text"].values.tolist() == [["sks", "<new1>", "dog"], ["dog", "", ""]]
    assert np.isnan(per.isel(prompt=1, word=2).values).all()


def test_normalize():
    da = maps([[1, 3], [0, 4]])
    np.testing.assert_allclose(normalize(da, "max").values[0, 0], [[0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(normalize(da, "sum").values[0, 0], [[0.125, 0.375], [0, 0.5]])
    assert normalize(da, None) is da
    with pytest.raises(ValueError):
        normalize(da, "l2")


def test_importing_attention_does_not_import_matplotlib():
    code = (
        "import sys, alignit_probe.capture.attention, alignit_probe.analysis.maps; print('matplotlib' in sys.modules)"
    )
    code = code.replace("alignit_probe.analysis.maps", "alignit_probe.analysis.maps, alignit_probe.viz.overlay")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_overlay_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from alignit_probe.viz.overlay import plot_overlay

    rng = np.random.default_rng(0)
    da = xr.DataArray(rng.random((1, 3, 4, 4)), dims=("prompt", "token", "y", "x"))
    da = da.assign_coords(token_text=("token", ["<|startoftext|>", "cat</w>", "<|endoftext|>"]))
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    path = plot_overlay(image, da, ["cat", 2], tmp_path / "overlay.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
