"""File-level zarr writes: what ``zarr_chunks`` writes is read back by zarr itself, for both chunk key separators;
anything it cannot write as whole raw chunks is left to zarr."""

import numpy as np
import pytest
import zarr

from alignit_probe.store import zarr_chunks as zc


def make(tmp_path, sep, dtype="float32", compressors=None, shape=(6, 3, 4), chunks=(2, 3, 2)):
    return zarr.create_array(
        str(tmp_path / f"a{sep}"),
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=compressors,
        chunk_key_encoding={"name": "default", "separator": sep},
        dimension_names=("prompt", "token", "channel"),
        fill_value=0,
    )


@pytest.mark.parametrize("sep", [".", "/"])
def test_raw_chunk_files_read_back_by_zarr(tmp_path, sep):
    arr = make(tmp_path, sep)
    values = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    meta = zc.array_metadata(tmp_path / f"a{sep}")
    files = zc.chunk_files(tmp_path / f"a{sep}", meta, 0, 2, values)
    assert len(files) == 2  # two channel chunks of prompt chunk 1
    assert sorted(p.relative_to(tmp_path / f"a{sep}").as_posix() for p, _, _ in files) == [
        f"c{sep}1{sep}0{sep}0",
        f"c{sep}1{sep}0{sep}1",
    ]
    for f in files:
        zc.write_file(f)
    back = zarr.open_array(str(tmp_path / f"a{sep}"), mode="r")[:]
    np.testing.assert_array_equal(back[2:4], values)
    assert not back[:2].any() and not back[4:].any()
    assert meta.shape == arr.shape


def test_left_to_zarr_when_not_whole_raw_chunks(tmp_path):
    values = np.ones((2, 3, 4), np.float32)
    arr = make(tmp_path, ".", compressors=zarr.codecs.ZstdCodec())
    assert zc.chunk_files(tmp_path / "a.", arr.metadata, 0, 0, values) is None  # compressed
    arr = make(tmp_path, "/")
    assert zc.chunk_files(tmp_path / "a/", arr.metadata, 0, 1, values) is None  # starts mid-chunk
    assert zc.chunk_files(tmp_path / "a/", arr.metadata, 0, 0, values[:1]) is None  # partial chunk
    assert zc.chunk_files(tmp_path / "a/", arr.metadata, 0, 0, values.astype(np.float16)) is None  # other dtype


def test_consolidate_writes_what_zarr_writes(tmp_path):
    """The file-level consolidation gives the root ``zarr.json`` zarr's own would (nested and empty groups, string
    and float arrays with NaN fills, attributes), and zarr and xarray open the store through it."""
    import json
    import shutil
    import warnings

    import xarray as xr

    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"key": (("prompt", "token", "channel"), rng.standard_normal((2, 3, 4)).astype(np.float16))},
        coords={"prompt": [0, 1], "token": [0, 1, 2], "text": ("prompt", ["a cat", "a <new1> dog"])},
        attrs={"site": "down_blocks.0.attn2", "nested": json.dumps({"a": [1, 2]})},
    )
    tree = xr.DataTree.from_dict(
        {"/": xr.Dataset(attrs={"format": 3}), "/baseline/kv/x": ds, "/custom/kv/x": ds, "/custom/empty": None}
    )
    tree.to_zarr(tmp_path / "ours.zarr", consolidated=False, zarr_format=3)
    shutil.copytree(tmp_path / "ours.zarr", tmp_path / "zarrs.zarr")
    zc.consolidate(tmp_path / "ours.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(tmp_path / "zarrs.zarr"))
    ours, theirs = (zc.read_node(tmp_path / f"{n}.zarr") for n in ("ours", "zarrs"))
    assert len(theirs["consolidated_metadata"]["metadata"]) > 10
    assert ours == theirs
    assert not (tmp_path / "ours.zarr" / "zarr.json.tmp").exists()
    back = xr.open_datatree(tmp_path / "ours.zarr", engine="zarr", consolidated=True)
    xr.testing.assert_identical(back["custom/kv/x"].to_dataset(), ds)


def test_planned_group_is_a_template_before_its_files_exist(tmp_path):
    """``zarr_layout``: B laid out like A (written by xarray), C like B before B's files are written; written in any
    order, zarr reads both with their own sizes, index values and attributes."""
    import xarray as xr

    from alignit_probe.store import zarr_layout as zl

    def ds(width, site):
        return xr.Dataset(
            {"key": (("prompt", "token", "channel"), np.zeros((2, 3, width), np.float16))},
            coords={"prompt": [0, 1], "token": [0, 1, 2]},
            attrs={"site": site},
        )

    root = tmp_path / "s.zarr"
    ds(4, "a").to_zarr(root, group="m/kv/a", consolidated=False, zarr_format=3)
    cache, index = {}, {"token": np.arange(3)}
    _, plan_b = zl.plan_like(root, "m/kv/b", ds(4, "b"), "m/kv/a", 6, index, cache)
    created_c, plan_c = zl.plan_like(root, "m/kv/c", ds(8, "c"), "m/kv/b", 6, index, cache)
    assert not (root / "m/kv/b").exists() and created_c["key"].shape == (6, 3, 8)
    assert zl.plan_like(root, "m/kv/d", ds(8, "d").rename(key="value"), "m/kv/b", 6, index, cache) is None
    zl.write_plan(plan_c)
    zl.write_plan(plan_b)
    for name, width in (("b", 4), ("c", 8)):
        back = xr.open_zarr(root, group=f"m/kv/{name}", consolidated=False)
        assert back["key"].shape == (6, 3, width) and back.attrs["site"] == name
        np.testing.assert_array_equal(back["token"].values, np.arange(3))


def batch_groups(n: int = 4) -> dict:
    """Groups like a recorded batch's: token coordinates (strings, int16/int64 along prompt), an encoder group
    (float16 with a ``layer`` index, one chunk per layer), a K/V site (float32, attributes) and a pooled stage (a
    dimension without an index)."""
    import xarray as xr

    rng = np.random.default_rng(1)
    pt = ("prompt", "token")
    idx = {"prompt": np.arange(n), "token": np.arange(5)}
    return {
        "m": xr.Dataset(
            coords={
                **idx,
                "prompt_text": ("prompt", np.array([f"a <new1> cat, ü {i}" for i in range(n)], dtype=object)),
                "token_str": (pt, np.array([[f"t{i}{j}" for j in range(5)] for i in range(n)], dtype=object)),
                "role": (pt, np.full((n, 5), "context", dtype=object)),
                "token_id": (pt, rng.integers(0, 49407, (n, 5))),
                "concept": (pt, np.full((n, 5), -1, np.int16)),
            }
        ),
        "m/text": xr.Dataset(
            {"encoder_layer": (("prompt", "layer", "token", "channel"), rng.standard_normal((n, 3, 5, 8), "f4"))},
            coords={**idx, "layer": [0, 1, 2]},
        ).astype("float16"),
        "m/kv/a": xr.Dataset(
            {"key": (("prompt", "token", "channel"), rng.standard_normal((n, 5, 4), "f4"))},
            coords=idx,
            attrs={"site": "down_blocks.0.attn2", "n": 3},
        ),
        "m/text_out": xr.Dataset(
            {"pooled": (("prompt", "pooled_channel"), rng.standard_normal((n, 6)).astype("float32"))},
            coords={"prompt": idx["prompt"]},
        ),
    }


def test_group_laid_out_from_scratch_is_what_xarray_writes(tmp_path):
    """``zarr_layout.plan_new`` writes the ``zarr.json`` documents xarray's ``to_zarr`` writes with the store's
    encoding, and the store reads back identical (values, dtypes, coordinates, attributes), without warnings, also
    for a group laid out like it before its files exist."""
    import json
    import warnings

    import xarray as xr

    from alignit_probe.store import templates as tp
    from alignit_probe.store.arrays import PartialArrays

    groups = batch_groups()
    by_xarray, ours = PartialArrays(tmp_path / "x.zarr", 2), PartialArrays(tmp_path / "o.zarr", 2)
    for arrays in (by_xarray, ours):
        zarr.open_group(str(arrays.root), mode="w-")
    plans = []
    for group, ds in groups.items():
        by_xarray.create(group, ds)
        plan = tp.plan_new(ours, group, ds, None)
        assert plan is not None, group
        plans.append(plan)
    plans.append(tp.plan_like(ours, "m/kv/b", groups["m/kv/a"].assign_attrs(site="b"), "m/kv/a", None))
    ours.write_plans(plans[::-1])  # in any order: parents are made at planning time
    ours.extend([*groups.items(), ("m/kv/b", groups["m/kv/a"])], 0)
    ours.close()
    by_xarray.create("m/kv/b", groups["m/kv/a"].assign_attrs(site="b"))
    docs = {
        name: {p.relative_to(a.root).as_posix(): json.loads(p.read_text()) for p in a.root.rglob("zarr.json")}
        for name, a in (("xarray", by_xarray), ("ours", ours))
    }
    # root; m and its 7 arrays; m/kv; m/kv/a and m/kv/b (3 arrays each); m/text (4 arrays); m/text_out (2)
    assert len(docs["ours"]) == 1 + 8 + 1 + 4 + 4 + 5 + 3
    assert docs["ours"] == docs["xarray"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for group, ds in {**groups, "m/kv/b": groups["m/kv/a"].assign_attrs(site="b")}.items():
            a, b = (xr.open_zarr(s.root, group=group, consolidated=False).load() for s in (by_xarray, ours))
            xr.testing.assert_identical(a, b)
            xr.testing.assert_identical(b.drop_vars([v for v in b.variables if v not in ds.variables]), ds)


def test_unusual_groups_are_left_to_xarray(tmp_path):

    from alignit_probe.store import zarr_layout as zl
    from alignit_probe.store.arrays import PartialArrays

    arrays = PartialArrays(tmp_path / "s.zarr", 2)
    base = batch_groups(2)["m/kv/a"]
    for ds in (
        base.assign(mask=(("prompt", "token"), np.zeros((2, 5), bool))),  # bool (xarray stores int8 + dtype attr)
        base.assign(small=(("prompt", "token"), np.zeros((2, 5), np.int8))),  # 1-byte numbers
        base.assign(role=(("prompt", "token"), np.full((2, 5), "context"))),  # numpy strings (fixed-length UTF-32)
        base.assign_attrs(nested={"a": 1}),  # an attribute that is not plain JSON
        base.assign_coords(token=["a", "b", "c", "d", "e"]),  # a string index
        base.assign(unit=base["key"].assign_attrs(units="m")),  # a variable's own attributes
    ):
        assert zl.plan_new(arrays.root, "m/kv/a", ds, arrays.encoding(ds)[0], None, {}) is None
    assert not arrays.root.exists()
