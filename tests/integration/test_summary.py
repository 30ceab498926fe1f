"""``record --summary``: per-token distances computed on the device instead of the activations; ``compare`` gives
the same rows as on the full store of the same job (toy pipeline, Custom Diffusion artifact, AlignIT)."""

import math

import numpy as np
import pytest

from alignit_probe import cli
from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.errors import ProbeError
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.store.shards import merge_shards, open_shards
from alignit_probe.text.concepts import Concept

PROMPTS = [
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a <new1> in the style of van gogh, oil painting, highly detailed",  # no class word: the AlignIT span is longer
    "a <new1> cat in the snow",
    "a <new1> cat sleeping under a tree at night",
]
CONCEPTS = [Concept("<new1>", "cat")]
KEYS = ("model", "reference", "stage", "layer", "role", "metric", "n")


def record(pair, out, summary, **options):
    opts = RecordOptions(batch_size=2, alignit=AlignITOptions(), summary=summary, **options)
    return record_store(pair, CONCEPTS, PROMPTS, out, opts, overwrite=True, progress=False)


def size_of(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def assert_rows_close(full: list[dict], summary: list[dict], rtol: float = 1e-6) -> None:
    assert len(full) == len(summary) > 0
    for a, b in zip(full, summary):
        assert [a[k] for k in KEYS] == [b[k] for k in KEYS], (a, b)
        for k in ("value", "ci_low", "ci_high"):
            if math.isnan(a[k]):
                assert math.isnan(b[k]), (a, b)
            else:
                assert b[k] == pytest.approx(a[k], rel=rtol, abs=0), (k, a, b)


@pytest.fixture(scope="module")
def stores(cd_pair, tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("summary")
    return d, {s: record(cd_pair, d / f"{'summary' if s else 'full'}.zarr", s) for s in (False, True)}


def test_summary_rows_equal_full_rows(stores):
    _, paths = stores
    full, summary = st.open_store(paths[False]), st.open_store(paths[True])
    rows = compare_rows(summary)
    assert_rows_close(compare_rows(full), rows)
    assert {r["model"] for r in rows} == {"custom", "alignit"}
    assert {r["stage"] for r in rows if r["model"] == "alignit"} == {"key", "value"}
    assert any(r["value"] > 0 for r in rows if r["model"] == "alignit")
    assert_rows_close(rows, compare_rows(st.open_store(paths[True], chunks={})), rtol=0)  # lazy (dask) alike


def test_summary_store_layout_and_size(stores):
    _, paths = stores
    tree = st.open_store(paths[True])
    assert st.store_attrs(tree)["summary"] == 1 and st.store_attrs(tree)["options"]["summary"] is True
    assert "summary" not in st.store_attrs(st.open_store(paths[False]))["options"]  # full fingerprints unchanged
    assert not tree["baseline"].children and "token_id" in tree["baseline"].coords
    dist = st.group(tree, "custom", "distance")
    assert set(dist.data_vars) == {"token_embedding", "encoder_layer", "encoder_output", "key", "value"}
    assert dist.key.dims == ("prompt", "site", "token", "metric") and list(dist.metric.values) == [
        "cosine_distance",
        "relative_l2",
    ]
    assert dist.encoder_layer.dims == ("prompt", "layer", "token", "metric")
    assert list(dist.site.values) == st.model_attrs(tree, "custom")["sites"]
    assert set(st.group(tree, "alignit", "distance").data_vars) == {"key", "value"}
    assert "embedding" in tree["custom"].children  # learned-embedding diagnostics as in a full store
    # distances without a partner are NaN; Custom Diffusion leaves every embedding but the modifier's untouched
    emb = dist.token_embedding.sel(metric="relative_l2").values
    ref = st.token_labels(tree, "custom").ref_index.values
    assert np.isnan(emb[ref < 0]).all() and (emb[(ref >= 0) & (dist.token_id.values < 49408)] == 0).all()
    assert size_of(paths[True]) * 4 < size_of(paths[False])


@pytest.mark.parametrize("options", [dict(drop_padding=True), dict(store_dtype="float16")])
def test_summary_with_drop_padding_and_float16(cd_pair, stores, options):
    d, _ = stores
    name = "_".join(options)
    full, summary = (record(cd_pair, d / f"{name}_{s}.zarr", s, **options) for s in (False, True))
    assert_rows_close(compare_rows(st.open_store(full)), compare_rows(st.open_store(summary)))
    if options.get("drop_padding"):
        tree = st.open_store(summary)
        assert st.group(tree, "alignit", "distance").sizes["token"] == st.store_attrs(tree)["n_tokens"] < 77


def test_summary_shards_merge_to_the_unsharded_rows(cd_pair, stores):
    d, paths = stores
    ref = compare_rows(st.open_store(paths[True]))
    shards = [record(cd_pair, d / f"shard{i}.zarr", True, shard=(i, 2)) for i in range(2)]
    assert_rows_close(ref, compare_rows(open_shards(shards)), rtol=0)
    merged = merge_shards(shards, d / "merged.zarr")
    assert_rows_close(ref, compare_rows(st.open_store(merged)), rtol=0)
    assert st.store_attrs(st.open_store(merged))["summary"] == 1


def test_summary_resumes_after_a_failure(cd_pair, stores, monkeypatch, capsys):
    import alignit_probe.record.summary as summary

    d, paths = stores
    calls, real = [], summary.alignit_kv

    def fail_second_batch(*args, **kwargs):
        calls.append(kwargs.get("first"))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(summary, "alignit_kv", fail_second_batch)
    out = d / "resumed.zarr"
    opts = RecordOptions(batch_size=2, alignit=AlignITOptions(), summary=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        record_store(cd_pair, CONCEPTS, PROMPTS, out, opts, progress=False)
    capsys.readouterr()
    record_store(cd_pair, CONCEPTS, PROMPTS, out, opts, progress=False)
    assert "resuming" in capsys.readouterr().err
    assert calls[2] == 2  # the rerun starts after the stored batch
    assert_rows_close(compare_rows(st.open_store(paths[True])), compare_rows(st.open_store(out)), rtol=0)


def test_summary_compares_against_the_baseline_only(stores):
    _, paths = stores
    with pytest.raises(ProbeError, match="distances to baseline only"):
        compare_rows(st.open_store(paths[True]), reference="custom")


def test_record_summary_cli_netcdf(toy_dir, cd_dir, stores, capsys):
    d, paths = stores
    out = d / "cli.nc"
    argv = ["record", "--baseline", toy_dir, "--custom", cd_dir, "--concept", "<new1>", "--class-word", "cat"]
    argv += [x for p in PROMPTS for x in ("--prompt", p)]
    argv += ["--out", str(out), "--batch-size", "2", "--alignit", "--summary", "--no-progress"]
    assert cli.main(argv) == 0
    tree = st.open_store(out)
    assert st.store_attrs(tree)["summary"] == 1 and "distance" in tree["custom"].children
    assert_rows_close(compare_rows(st.open_store(paths[True])), compare_rows(tree))


def test_sites_of_one_width_together_equal_site_by_site():
    """``kv_distances`` with the sites of one width stacked (the GPU path) gives the values site by site gives (the
    CPU path), bit for bit, with sites of two widths and partners missing."""
    import torch

    from alignit_probe.record.summary import kv_distances

    g = torch.Generator().manual_seed(0)

    def kv(width):
        return torch.randn(3, 77, width, generator=g), torch.randn(3, 77, width, generator=g)

    widths = {"a": 8, "b": 16, "c": 8, "d": 16}
    custom, base = {p: kv(w) for p, w in widths.items()}, {p: kv(w) for p, w in widths.items()}
    ref = torch.randint(-1, 77, (3, 60), generator=g)
    one, sites = kv_distances(custom, base, ref, torch.float16, 60, together=False)
    both, sites2 = kv_distances(custom, base, ref, torch.float16, 60, together=True)
    assert sites == sites2 == list(widths)
    for name in ("key", "value"):
        assert one[name][0] == both[name][0]
        np.testing.assert_array_equal(one[name][1], both[name][1])
        assert np.isnan(one[name][1]).any() and not np.isnan(one[name][1]).all()
