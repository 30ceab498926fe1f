"""Promised equalities never depend on which prompts share a batch, nor on the thread count: AlignIT's context K/V
are the recorded baseline's (every option that changes how the baseline encodes, clip skip included, changes
AlignIT's branch the same way). These run under ``layout_sensitive`` products (``tests.layout``), which round by
batch layout as some BLAS kernels do, so they fail wherever the two sides of a promise are computed apart.

Where nothing is promised bit for bit — one prompt recorded alone and in a batch — the values agree within float32
rounding: torch's own tolerance for the dtype (``torch.testing.assert_close``: rtol 1.3e-6, atol 1e-5)."""

import numpy as np
import pytest
import torch

from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.text.concepts import Concept

CONCEPTS = [Concept("<new1>", "cat")]
PROMPTS = [
    "photo of a <new1> cat on the beach",
    "a <new1> cat wearing a red hat",
    "a <new1> in the snow",
    "a watercolor painting of a <new1> cat",
    "a <new1> cat next to a tree at night",
]


@pytest.mark.parametrize("summary", [False, True], ids=["full", "summary"])
def test_recorded_alignit_context_is_the_recorded_baseline_with_clip_skip(
    cd_pair, tmp_path, threads, summary, layout_sensitive
):
    """``record --alignit --clip-skip 1`` in batches of 2 (the last one of 1): every context, special and padding
    position of the AlignIT branch is 0 from the baseline branch, in full and summary stores alike."""
    options = RecordOptions(batch_size=2, clip_skip=1, alignit=AlignITOptions(), summary=summary)
    out = record_store(cd_pair, CONCEPTS, PROMPTS[:3], tmp_path / "s.zarr", options, progress=False)
    rows = [r for r in compare_rows(st.open_store(out), n_boot=10) if r["model"] == "alignit"]
    assert {r["stage"] for r in rows} == {"key", "value"} and rows
    for r in rows:
        if r["role"] in ("context", "special", "padding"):
            assert r["value"] == 0.0, r
        else:
            assert r["role"] == "concept" and r["value"] > 0, r


def test_clip_skip_reaches_the_alignit_branch(cd_pair, tmp_path):
    """The AlignIT branch of a clip-skip recording is not the one without it (its concept span is encoded the same
    way too): the stored K/V differ everywhere the text encoder's last layer mattered."""
    keys = {}
    for skip in (None, 1):
        options = RecordOptions(batch_size=2, clip_skip=skip, alignit=AlignITOptions())
        out = record_store(cd_pair, CONCEPTS, PROMPTS[:2], tmp_path / f"s{skip}.zarr", options, progress=False)
        tree = st.open_store(out)
        roles = tree["alignit"].ds["role"].values
        keys[skip] = [node.ds["key"].values for node in tree["alignit/kv"].children.values()]
    for role in ("context", "concept"):
        sel = roles == role
        assert sel.any() and all(not np.array_equal(a[sel], b[sel]) for a, b in zip(keys[None], keys[1])), role


def test_a_prompt_alone_and_in_a_batch_of_five_agree_within_float32_rounding(cd_pair, tmp_path):
    """Every stored array of prompt 0 (token embeddings, encoder layers and output, K/V at every site, AlignIT's
    K/V), recorded alone and in one batch of five."""
    options = RecordOptions(batch_size=5, alignit=AlignITOptions())
    alone = st.open_store(record_store(cd_pair, CONCEPTS, PROMPTS[:1], tmp_path / "a.zarr", options, progress=False))
    batch = st.open_store(record_store(cd_pair, CONCEPTS, PROMPTS, tmp_path / "b.zarr", options, progress=False))
    compared = 0
    for node in alone.subtree:
        for name, var in node.ds.data_vars.items():
            if "prompt" not in var.dims or not np.issubdtype(var.dtype, np.floating):
                continue
            other = batch[node.path].ds[name].isel(prompt=0).values
            torch.testing.assert_close(torch.from_numpy(var.isel(prompt=0).values), torch.from_numpy(other))
            compared += 1
    assert compared > 2 * 16  # K and V of every site of both models, AlignIT's and the text stages


def test_alignit_context_is_the_baseline_under_every_clip_skip(cd_pair, layout_sensitive):
    """``alignit_kv`` under every clip skip the toy's text encoder allows (0 … its layer count): every position
    outside the concept span equals, bit for bit, the baseline's K/V of the prompt without modifier encoded with
    that clip skip; the concept span differs from one clip skip to the next (it is encoded the same way)."""
    from alignit_probe.alignit.engine import alignit_kv
    from alignit_probe.alignit.plan import BASELINE
    from alignit_probe.capture.sites import record_kv
    from alignit_probe.models.encoder import conditioning
    from alignit_probe.record.run import check_clip_skip

    n = cd_pair.baseline.text_encoder.config.num_hidden_layers
    check_clip_skip([cd_pair.baseline, cd_pair.custom], n)
    concept = {}
    for skip in [None, *range(n + 1)]:
        akv = alignit_kv(cd_pair, CONCEPTS, PROMPTS[:2], clip_skip=skip)
        base_kv = record_kv(cd_pair.baseline.unet, conditioning(cd_pair.baseline, akv.baseline, skip)[0])
        for path, (k, v) in akv.kv.items():
            for p, plan in enumerate(akv.plans):
                outside = [i for i, s in enumerate(plan.source) if s == BASELINE]
                pos = torch.tensor([plan.position[i] for i in outside])
                assert torch.equal(k[p, outside], base_kv[path][0][p, pos]), (skip, path)
                assert torch.equal(v[p, outside], base_kv[path][1][p, pos]), (skip, path)
        spans = [i for i, s in enumerate(akv.plans[0].source) if s != BASELINE]
        concept[skip] = next(iter(akv.kv.values()))[0][0, spans]
    assert torch.equal(concept[None], concept[0])  # SD 1.x: clip skip 0 is the last layer's normed output
    values = [concept[skip] for skip in range(n + 1)]
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
