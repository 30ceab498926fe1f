"""Streaming, resumable and sharded recording; lazy and distributed analysis (toy pipeline, Textual Inversion)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from alignit_probe import cli
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.store import open_store, store_attrs
from alignit_probe.store.shards import merge_shards, open_shards
from alignit_probe.store.writer import StoreWriter

PROMPTS = [
    f"a photo of a <new1> cat {w}"
    for w in (
        "on the beach",
        "in the snow",
        "wearing a red hat",
        "in the style of van gogh, oil painting, highly detailed",
        "sleeping",
        "jumping over a fence",
        "at night",
        "under a tree",
        "with a dog",
        "in a box",
        "on a table",
        "in space",
    )
]


@pytest.fixture(scope="module")
def job(toy_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    save_file(
        {"<new1>": torch.randn(32, generator=torch.Generator().manual_seed(3))}, str(d / "learned_embeds.safetensors")
    )
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")

    def argv(out, *extra):
        return [
            "record",
            "--baseline",
            toy_dir,
            "--custom",
            str(d / "learned_embeds.safetensors"),
            "--concept",
            "<new1>",
            "--class-word",
            "cat",
            "--prompts",
            str(d / "prompts.txt"),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--no-progress",
            *extra,
        ]

    return d, argv


@pytest.fixture(scope="module")
def reference(job):
    """The store of one uninterrupted, unsharded run."""
    d, argv = job
    assert cli.main(argv(d / "ref.zarr")) == 0
    return d / "ref.zarr"


def assert_same_data(a: xr.DataTree, b: xr.DataTree) -> None:
    """Same nodes, and in each the same variables and coordinates with exactly equal values (attrs aside)."""
    assert sorted(n.path for n in a.subtree) == sorted(n.path for n in b.subtree)
    for node in a.subtree:
        da, db = node.to_dataset(inherit=False).load(), b[node.path].to_dataset(inherit=False).load()
        assert set(da.variables) == set(db.variables), node.path
        xr.testing.assert_equal(da, db)


def same_rows(r1: list[dict], r2: list[dict]) -> bool:
    eq = lambda x, y: x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    return len(r1) == len(r2) and all(
        r1[i].keys() == r2[i].keys() and all(eq(r1[i][k], r2[i][k]) for k in r1[i]) for i in range(len(r1))
    )


def written(partial: Path) -> dict:
    try:
        return json.loads(json.loads((partial / "zarr.json").read_text())["attributes"]["written"])
    except (OSError, ValueError, KeyError):
        return {}


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
def test_resume_after_sigkill(job, reference, capsys):
    d, argv = job
    out = d / "resumed.zarr"
    partial = out.with_name(out.name + ".partial")
    threads = str(torch.get_num_threads())  # same arithmetic as this process, for bit-equal data
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignit_probe.cli", *argv(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and written(partial).get("baseline", 0) < 2:
            assert time.monotonic() < deadline, "the recording never wrote its first batch"
            time.sleep(0.005)
        killed_at = written(partial)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 2 <= killed_at["baseline"] < len(PROMPTS)
    # a partly written store is never taken for a complete one
    assert not out.exists() and partial.is_dir()
    with pytest.raises(Exception, match="rerun the same record command"):
        open_store(out)
    with pytest.raises(Exception, match="unfinished recording"):
        open_store(partial)

    capsys.readouterr()
    assert cli.main(argv(out)) == 0  # the same command again
    assert "resuming" in capsys.readouterr().err
    assert not partial.exists()
    tree, ref = open_store(out), open_store(reference)
    for model in ("baseline", "custom"):
        np.testing.assert_array_equal(tree[model].prompt.values, np.arange(len(PROMPTS)))
    assert_same_data(tree, ref)
    assert store_attrs(tree)["written"] == {"baseline": 12, "custom": 12}


def test_other_job_on_partial_starts_afresh(tmp_path):
    import io

    out = tmp_path / "s.zarr"
    with StoreWriter(out, attrs={"fingerprint": "a"}) as w:
        assert not w.resumed
    log = io.StringIO()
    with StoreWriter(out, attrs={"fingerprint": "a"}, log=log) as w:
        assert w.resumed and "resuming" in log.getvalue()
    log = io.StringIO()
    with StoreWriter(out, attrs={"fingerprint": "b"}, log=log) as w:
        assert not w.resumed and "different recording job" in log.getvalue()


def test_other_jobs_unfinished_prompts_are_kept_without_overwrite(tmp_path):
    """A partial store holding another job's prompts is that job's work: refused, replaced only with overwrite."""
    from alignit_probe.errors import ProbeError
    from tests.integration.test_writer_background import batch

    out = tmp_path / "s.zarr"
    a = {"fingerprint": "a", "options": {"batch_size": 2, "summary": False}}
    with pytest.raises(RuntimeError), StoreWriter(out, attrs=a, n_prompts=4) as w:
        w.append("baseline", batch("baseline", 0, 2))
        raise RuntimeError("interrupted")
    b = {"fingerprint": "b", "options": {"batch_size": 8, "summary": False}}
    with pytest.raises(ProbeError, match=r"of a different job \(batch_size 2 → 8\) — rerun .* --overwrite to delete"):
        StoreWriter(out, attrs=b)
    assert StoreWriter(out, attrs=a).written("baseline") == 2  # still there, resumable
    with StoreWriter(out, attrs={"fingerprint": "b"}, overwrite=True) as w:
        assert not w.resumed and w.written("baseline") == 0


@pytest.fixture(scope="module")
def shards(job):
    d, argv = job
    paths = [d / f"shard{i}.zarr" for i in range(2)]
    for i, p in enumerate(paths):
        assert cli.main(argv(p, "--shard", f"{i}/2")) == 0
    return paths


def test_shards_open_together_equal_single_run(shards, reference, capsys):
    parts = [open_store(p) for p in shards]
    assert [list(t["custom"].prompt.values) for t in parts] == [list(range(6)), list(range(6, 12))]
    tree = open_shards(shards[::-1])  # any order
    assert_same_data(tree, open_store(reference))
    capsys.readouterr()
    assert cli.main(["compare", "--json", "--no-progress", str(reference)]) == 0
    single = json.loads(capsys.readouterr().out)
    assert cli.main(["compare", "--json", "--no-progress", *map(str, shards)]) == 0
    assert same_rows(json.loads(capsys.readouterr().out), single)
    with pytest.raises(Exception, match="shard 0/2 given twice; shard 1/2 missing"):
        open_shards([shards[0], shards[0]])
    from alignit_probe.errors import ProbeWarning

    with pytest.warns(ProbeWarning, match=r"is shard 1/2 of a recording job \(prompts 6–11 only\): pass all 2"):
        open_shards([shards[1]])


def test_merge_shards_equals_single_run(shards, reference, tmp_path):
    merged = merge_shards(shards, tmp_path / "merged.zarr")
    tree = open_store(merged)
    assert_same_data(tree, open_store(reference))
    enc = tree["custom/text"]["encoder_layer"].encoding
    assert enc["chunks"][0] == 2 and enc["preferred_chunks"]["prompt"] == 2  # one batch per chunk, as recorded
    assert "shard" not in store_attrs(tree)


def test_interrupted_merge_leaves_nothing_that_reads_as_a_store(shards, tmp_path, monkeypatch):
    """The merged store's attributes come from complete shards: its partial store must not say it is complete."""
    from alignit_probe.errors import ProbeError

    put, calls = StoreWriter.put, []

    def interrupted(self, group, ds):
        calls.append(group)
        if len(calls) == 4:
            raise KeyboardInterrupt
        put(self, group, ds)

    monkeypatch.setattr(StoreWriter, "put", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_shards(shards, tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists() and (tmp_path / "m.zarr.partial").is_dir()
    with pytest.raises(ProbeError, match="unfinished merge — rerun the same merge command, then pass m.zarr"):
        open_store(tmp_path / "m.zarr.partial")


def test_compare_on_local_cluster_equals_eager(reference, capsys):
    from distributed import Client, LocalCluster

    eager = open_store(reference)
    eager.load()
    rows = compare_rows(eager)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        lazy = open_store(reference, chunks={})
        assert lazy["custom/text"]["encoder_layer"].chunks is not None
        assert same_rows(compare_rows(lazy), rows)
        capsys.readouterr()
        assert (
            cli.main(["compare", "--json", "--no-progress", "--scheduler", cluster.scheduler_address, str(reference)])
            == 0
        )
    assert same_rows(json.loads(capsys.readouterr().out), json.loads(json.dumps(rows).replace("NaN", "null")))


def test_drop_padding_keeps_the_longest_prompt(job, reference):
    d, argv = job
    assert cli.main(argv(d / "short.zarr", "--drop-padding")) == 0
    tree, ref = open_store(d / "short.zarr"), open_store(reference)
    attrs = store_attrs(tree)
    roles = np.concatenate([ref[m].role.values for m in ("baseline", "custom")])
    n = int(((roles != "padding").sum(-1)).max())  # = last end token + 1: padding only follows it
    assert attrs["n_tokens"] == n < attrs["n_tokens_full"] == 77
    for node in ref.subtree:
        full = node.to_dataset(inherit=False)
        if "token" not in full.dims:
            continue
        cut = full.isel(token=slice(0, n)).load()
        if "ref_index" in cut.coords:
            cut = cut.assign_coords(ref_index=cut.ref_index.where(cut.ref_index < n, -1).astype(np.int16))
        xr.testing.assert_equal(tree[node.path].to_dataset(inherit=False).load(), cut)
    rows = {(r["model"], r["stage"], r["layer"], r["role"], r["metric"]): r for r in compare_rows(tree)}
    full_rows = compare_rows(ref)
    for r in full_rows:  # the concept/context/special summaries do not change (up to summation order)
        if r["role"] != "padding":
            short = rows[(r["model"], r["stage"], r["layer"], r["role"], r["metric"])]
            assert short["n"] == r["n"] and short["value"] == pytest.approx(r["value"], rel=1e-9, nan_ok=True)


def test_store_dtype_float16(job, reference):
    d, argv = job
    assert cli.main(argv(d / "half.zarr", "--store-dtype", "float16")) == 0
    tree, ref = open_store(d / "half.zarr"), open_store(reference)
    for path in ("custom/text", "baseline/kv/mid_block.attentions.0.transformer_blocks.0.attn2"):
        for name, var in tree[path].to_dataset(inherit=False).data_vars.items():
            assert var.dtype == np.float16
            np.testing.assert_array_equal(var.values, ref[path][name].values.astype(np.float16))
    assert store_attrs(tree)["options"]["store_dtype"] == "float16"
    assert all(r["n"] > 0 for r in compare_rows(tree) if r["role"] == "concept")


@pytest.mark.parametrize(
    "value, message",
    [
        ("3/2", "shard index 3 is not in 0..1"),
        ("x", "bad shard 'x'"),
        ("1/0", "at least one shard"),
        ("0/8", "shard 0/8 has no prompts"),
    ],
)
def test_bad_shard(job, capsys, value, message):
    d, argv = job
    assert cli.main(argv(d / "never.zarr", "--shard", value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (d / "never.zarr").exists()


def test_shard_ranges_are_contiguous_whole_batches():
    from alignit_probe.store.shards import shard_range

    for n_prompts, batch, n in [(12, 2, 2), (12, 2, 5), (101, 8, 3), (7, 3, 3), (1000, 64, 7)]:
        spans = [shard_range(n_prompts, batch, (i, n)) for i in range(n)]
        assert [k for s in spans for k in s] == list(range(n_prompts))
        assert all(s.start % batch == 0 for s in spans)


def test_background_writer_equals_inline(cd_pair, tmp_path):
    """The writer thread (used where a GPU computes) stores exactly what inline writes store."""
    from alignit_probe.record.batch import record_batch
    from alignit_probe.text.concepts import Concept
    from alignit_probe.text.tables import tokenize_table

    prompts = PROMPTS[:5]
    custom, base, _ = tokenize_table(
        prompts, range(5), cd_pair.custom, cd_pair.baseline.tokenizer, [Concept("<new1>", "cat")]
    )
    batches = [
        (m, record_batch(pipe, t[i : i + 2], i))
        for i in range(0, 5, 2)
        for m, pipe, t in (("baseline", cd_pair.baseline, base), ("custom", cd_pair.custom, custom))
    ]
    trees = []
    for background in (False, True):
        with StoreWriter(tmp_path / f"{background}.zarr", chunk_prompts=2, n_prompts=5, background=background) as w:
            for model, batch in batches:
                w.append(model, batch, {"model_id": model})
            trees.append(open_store(w.commit()))
    assert_same_data(*trees)
    assert trees[0]["custom/text"].encoder_layer.shape[0] == 5


def test_alignit_branch_shards_and_resumes(job, monkeypatch, capsys):
    """--alignit with --shard and --drop-padding: the shards merge into the single run's store, and a run that
    fails inside the alignit branch resumes it where it stopped. The longest prompt has no class word, so its
    AlignIT sequence (the dummy's span "<new1> cat") is one token longer than either tokenization of it."""
    import alignit_probe.record.run as run_module  # where record_store calls alignit_kv

    d, argv = job
    prompts = d / "a_prompts.txt"
    prompts.write_text(
        "\n".join(PROMPTS[:3] + ["a <new1> in the style of van gogh, oil painting, highly detailed"] + PROMPTS[4:6])
        + "\n"
    )

    def run(out, *extra):
        args = argv(out, "--alignit", "--drop-padding", *extra)
        args[args.index("--prompts") + 1] = str(prompts)
        return cli.main(args)

    assert run(d / "a_ref.zarr") == 0
    ref = open_store(d / "a_ref.zarr")
    fills = {m: int((ref[m].role.values != "padding").sum(-1).max()) for m in ("baseline", "custom", "alignit")}
    assert store_attrs(ref)["n_tokens"] == fills["alignit"] == max(fills["baseline"], fills["custom"]) + 1
    assert ref["alignit"].prompt.size == 6

    paths = [d / f"a_shard{i}.zarr" for i in range(3)]
    for i, p in enumerate(paths):
        assert run(p, "--shard", f"{i}/3") == 0
    assert_same_data(open_store(merge_shards(paths, d / "a_merged.zarr")), ref)

    calls, real = [], run_module.alignit_kv

    def fail_second_batch(*args, **kwargs):
        calls.append(kwargs.get("first"))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "alignit_kv", fail_second_batch)
    out = d / "a_resumed.zarr"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(out)
    assert written(out.with_name(out.name + ".partial"))["alignit"] == 2
    capsys.readouterr()
    assert run(out) == 0
    assert "resuming" in capsys.readouterr().err
    assert calls[2] == 2  # the rerun starts after the stored batch
    assert_same_data(open_store(out), ref)
