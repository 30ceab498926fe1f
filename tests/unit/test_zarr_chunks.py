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
