"""SDXL (the tiny SDXL-shaped pipeline: two text encoders, "!" padding in the second, text_time UNet): tokens and
roles per encoder, the store's groups (text, text_2, text_out with pooled), compare rows, AlignIT's invariants, the
pooled-embedding policy, and images / maps / swaps through the SDXL pipeline."""

import json

import numpy as np
import pytest
import torch

from alignit_probe import Concept, Probe
from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions, alignit_kv, generate_alignit
from alignit_probe.alignit.generation import generate_images
from alignit_probe.alignit.plan import BASELINE
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.capture.sites import record_kv
from alignit_probe.errors import ProbeError
from alignit_probe.models.encoder import conditioning
from alignit_probe.models.load import load_pair
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.text.concepts import ids_for, tokenize_pair
from tests.integration.artifact_files import write_finetune

CONCEPTS = [Concept("sks", "cat")]
PROMPTS = ["a photo of sks cat on the beach", "sks cat wearing a red hat"]
GEN = dict(seed=0, steps=2, guidance_scale=7.5, output_type="np")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def xl_db(sdxl_dir, tmp_path_factory):
    """A DreamBooth-style fine-tune of the SDXL toy, written once per module (read, never changed)."""
    return str(write_finetune(sdxl_dir, tmp_path_factory.mktemp("xl") / "db"))


@pytest.fixture(scope="module")
def xl_pair(sdxl_dir, xl_db):
    pair = load_pair(sdxl_dir, [xl_db], progress=False)
    for pipe in (pair.baseline, pair.custom):
        pipe.set_progress_bar_config(disable=True)
    return pair


@pytest.fixture(scope="module")
def xl_store(xl_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("xlstore") / "s.zarr"
    options = RecordOptions(batch_size=1, alignit=AlignITOptions())
    return st.open_store(record_store(xl_pair, CONCEPTS, PROMPTS, out, options, progress=False))


def test_sdxl_loads_as_sdxl(xl_pair):
    assert type(xl_pair.custom).__name__ == "StableDiffusionXLPipeline" and xl_pair.method == "dreambooth"
    assert xl_pair.custom.tokenizer_2.pad_token == "!" and xl_pair.custom.tokenizer.pad_token == "<|endoftext|>"


def test_roles_hold_for_both_tokenizers(xl_pair):
    ct, bt = tokenize_pair(PROMPTS[0], xl_pair.custom, xl_pair.baseline.tokenizer, CONCEPTS)
    ids2 = ids_for(xl_pair.custom.tokenizer_2, ct)
    assert ids2 == xl_pair.custom.tokenizer_2(PROMPTS[0], padding="max_length").input_ids
    eos = ct.role.index("special", 1)
    assert ids2[: eos + 1] == ct.ids[: eos + 1] and set(ids2[eos + 1 :]) == {0} and set(ct.ids[eos + 1 :]) == {49407}
    assert [ct.role[i] for i in range(4, 6)] == ["concept", "concept"]
    for prompt in ("a photo of sks cat!", "sks cat ! on the beach"):  # "!" alone: the second's pad token, as it reads
        ct = tokenize_pair(prompt, xl_pair.custom, xl_pair.baseline.tokenizer, CONCEPTS)[0]
        assert (
            ids_for(xl_pair.custom.tokenizer_2, ct)
            == xl_pair.custom.tokenizer_2(prompt, padding="max_length").input_ids
        )


def test_prompt_the_two_tokenizers_split_differently_is_refused(xl_pair):
    with pytest.raises(ProbeError, match="SDXL's two tokenizers split prompt") as e:
        tokenize_pair("a photo of sks cat!!", xl_pair.custom, xl_pair.baseline.tokenizer, CONCEPTS)
    assert "'!'" in e.value.fix and "\n" not in str(e.value)


def test_store_groups_equal_the_pipeline(xl_pair, xl_store):
    for model, pipe in (("custom", xl_pair.custom), ("baseline", xl_pair.baseline)):
        assert {"text", "text_2", "text_out"} <= set(xl_store[model].children)
        out = st.group(xl_store, model, "text_out")
        texts = out.prompt_text.values  # the baseline's: the prompts without the modifier
        with torch.no_grad():  # prompt by prompt, as recorded (batch size 1: the same arithmetic)
            enc = [pipe.encode_prompt(str(p), device="cpu", do_classifier_free_guidance=False) for p in texts]
        cond, pooled = torch.cat([e[0] for e in enc]), torch.cat([e[2] for e in enc])
        assert np.array_equal(out.encoder_output.values, cond.numpy())
        assert np.array_equal(out.pooled.values, pooled.numpy())
        t1, t2 = st.group(xl_store, model, "text"), st.group(xl_store, model, "text_2")
        assert t1.sizes["channel"] + t2.sizes["channel"] == out.sizes["channel"]
        assert t1.sizes["layer"] == 3 and t2.sizes["layer"] == 4
        kvs = [record_kv(pipe.unet, e[0]) for e in enc]  # prompt by prompt too
        for path in kvs[0]:
            g = st.group(xl_store, model, f"kv/{path}")
            k, v = (torch.cat([kv[path][i] for kv in kvs]).numpy() for i in (0, 1))
            assert np.array_equal(g.key.values, k) and np.array_equal(g.value.values, v)
    assert len(st.kv_paths(xl_store, "custom")) == 8


def test_compare_rows_cover_both_encoders_and_pooled(xl_store):
    rows = compare_rows(xl_store, n_boot=10)
    custom = [r for r in rows if r["model"] == "custom" and r["metric"] == "relative_l2"]
    layers = {(r["stage"], r["layer"]) for r in custom}
    assert {("token_embedding", None), ("token_embedding", "text_2"), ("encoder_output", None)} <= layers
    assert {("encoder_layer", i) for i in range(3)} | {("encoder_layer", f"text_2.{i}") for i in range(4)} <= layers
    pooled = [r for r in rows if r["stage"] == "pooled"]
    assert {r["model"] for r in pooled} == {"custom"} and {r["role"] for r in pooled} == {"special"}
    assert all(r["layer"] is None and r["n"] == 2 and r["value"] > 0 for r in pooled)
    stages = [r["stage"] for r in custom]
    assert stages.index("pooled") > stages.index("encoder_output") and stages.index("pooled") < stages.index("key")
    for r in rows:  # AlignIT: every token outside the concept takes the baseline's K/V
        if r["model"] == "alignit" and r["role"] in ("context", "special", "padding"):
            assert r["value"] == 0.0, r


def test_report_summarises_each_encoder_and_pooled(xl_store, tmp_path):
    """The report's stage table (and summary.md): each text encoder's token embeddings and layers apart (their means
    over their own layers), SDXL's pooled embedding as the whole prompt's row."""
    from alignit_probe.cli.report import write_folder
    from alignit_probe.viz.report import report_html
    from alignit_probe.viz.stages import WHOLE_PROMPT, stage_summary

    rows = compare_rows(xl_store, n_boot=10)
    cell = {(s["model"], s["stage"], s["role"]): s for s in stage_summary(rows)}
    for encoder, first in (
        ("text", lambda layer: isinstance(layer, int)),
        ("text_2", lambda layer: isinstance(layer, str)),
    ):
        sel = [
            r["value"]
            for r in rows
            if (r["model"], r["stage"], r["role"], r["metric"]) == ("custom", "encoder_layer", "context", "relative_l2")
            and first(r["layer"])
        ]
        got = cell["custom", f"encoder_layer ({encoder})", "context"]
        assert got["layers"] == len(sel) == (3 if encoder == "text" else 4)
        assert got["value"] == pytest.approx(sum(sel) / len(sel), rel=1e-12)
    pooled = [r for r in rows if (r["model"], r["stage"], r["metric"]) == ("custom", "pooled", "relative_l2")]
    assert cell["custom", "pooled", WHOLE_PROMPT]["value"] == pooled[0]["value"]
    assert not any(s["stage"] == "encoder_layer" for s in cell.values())  # no mean across the two encoders
    page = report_html(xl_store, rows)
    assert "token_embedding (text_2)" in page and f"{WHOLE_PROMPT}: relative L2" in page
    write_folder(xl_store, rows, tmp_path, ["s.zarr"])
    summary = (tmp_path / "summary.md").read_text()
    assert (
        f"| custom | pooled | {WHOLE_PROMPT} |" in summary
        and "| custom | encoder_layer (text_2) | context |" in summary
    )
    assert "[" not in summary.split("| custom | pooled")[1].splitlines()[0]  # 2 prompts: no CI (as compare)


@pytest.mark.parametrize("clip_skip", [None, 0, 1, 2])  # every value the toy allows (its first encoder: 3 layers)
def test_alignit_invariants(xl_pair, threads, clip_skip, layout_sensitive):
    """Context K/V and the pooled embeddings equal, bit for bit, a plain encoding of the same prompts, with 1 and 2
    threads, under products that round by batch layout (``tests.layout``), with and without clip skip."""
    akv = alignit_kv(xl_pair, CONCEPTS, PROMPTS, clip_skip=clip_skip)
    base_c, base_pooled = conditioning(xl_pair.baseline, akv.baseline, clip_skip)
    custom_c, custom_pooled = conditioning(xl_pair.custom, akv.custom, clip_skip)
    assert torch.equal(akv.baseline_embeds, base_c) and torch.equal(akv.custom_embeds, custom_c)
    base_kv = record_kv(xl_pair.baseline.unet, base_c)
    for path, (k, v) in akv.kv.items():
        for p, plan in enumerate(akv.plans):
            outside = [i for i, s in enumerate(plan.source) if s == BASELINE]
            pos = torch.tensor([plan.position[i] for i in outside])
            assert torch.equal(k[p, outside], base_kv[path][0][p, pos])
            assert torch.equal(v[p, outside], base_kv[path][1][p, pos])
    assert torch.equal(akv.cond_pooled, base_pooled) and torch.equal(akv.custom_pooled, custom_pooled)
    assert not torch.equal(base_pooled, custom_pooled)
    own = alignit_kv(xl_pair, CONCEPTS, PROMPTS, AlignITOptions(pooled="custom"), clip_skip=clip_skip)
    assert torch.equal(own.cond_pooled, custom_pooled)
    with pytest.raises(ProbeError, match="pooled-embedding policy"):
        alignit_kv(xl_pair, CONCEPTS, PROMPTS, AlignITOptions(pooled="mean"))


def test_empty_concept_span_reproduces_the_baseline_image(xl_pair, layout_sensitive):
    images, akv = generate_alignit(
        xl_pair, CONCEPTS, ["a red car on the beach"], AlignITOptions(denoiser="baseline"), allow_absent=True, **GEN
    )
    assert all(r != "concept" for r in akv.plans[0].tokens.role)
    assert images["alignit"][0].shape == (32, 32, 3)
    assert np.array_equal(images["alignit"], images["baseline"])
    assert not np.array_equal(images["custom"], images["baseline"])


def test_pooled_policy_changes_the_image(xl_pair):
    a, _ = generate_alignit(xl_pair, CONCEPTS, PROMPTS[:1], **GEN)
    b, _ = generate_alignit(xl_pair, CONCEPTS, PROMPTS[:1], AlignITOptions(pooled="custom"), **GEN)
    assert not np.array_equal(a["alignit"], a["custom"]) and not np.array_equal(a["alignit"], b["alignit"])


def test_generation_needs_the_pooled_embedding(xl_pair):
    c, pooled = conditioning(
        xl_pair.baseline, [tokenize_pair("a cat", xl_pair.baseline, xl_pair.baseline.tokenizer, [], True)[0]]
    )
    with pytest.raises(ProbeError, match="pooled text embedding"):
        generate_images(xl_pair.baseline, c, **GEN)
    with torch.no_grad():
        expected = xl_pair.baseline(
            "a cat",
            num_inference_steps=2,
            guidance_scale=7.5,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images
    zeros = torch.zeros_like(c), torch.zeros_like(pooled)
    got = generate_images(
        xl_pair.baseline,
        c,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=zeros[0],
        negative_pooled_prompt_embeds=zeros[1],
        **GEN,
    )
    assert np.array_equal(got, expected)  # the pipeline's own encoding of "a cat", bit for bit


def test_probe_alignit_attention_swap(xl_pair):
    probe = Probe(xl_pair.baseline, {"db": xl_pair.custom}, CONCEPTS, progress=False)
    images = probe.alignit(PROMPTS[:1], steps=2, output_type="np")
    assert set(images) == {"baseline", "db", "alignit"} and images["alignit"][0].shape == (32, 32, 3)
    maps = probe.attention(PROMPTS[:1], steps=2, alignit=True)
    assert set(maps) == {"baseline", "db", "alignit"}
    ds, _ = maps["alignit"]
    assert ds["map"].sizes["token"] == 77 and np.isfinite(ds["map"].values).all()
    swapped = probe.swap("a dog on the grass", "a cat in the snow", tokens=["dog"], steps=2)
    assert set(swapped) == {"A", "B", "keys A + values B"}


def test_summary_store_gives_the_full_store_rows(xl_pair, xl_store, tmp_path):
    """``record --summary`` on SDXL: both encoders' stages (``_2``) and the pooled embedding as distances, and
    compare's rows equal those of the full store of the same job."""
    from tests.integration.test_summary import assert_rows_close

    options = RecordOptions(batch_size=1, alignit=AlignITOptions(), summary=True)
    tree = st.open_store(record_store(xl_pair, CONCEPTS, PROMPTS, tmp_path / "s.zarr", options, progress=False))
    dist = st.group(tree, "custom", "distance")
    assert {"token_embedding_2", "encoder_layer_2", "pooled"} <= set(dist.data_vars)
    assert dist.pooled.dims == ("prompt", "metric") and dist.encoder_layer_2.sizes["layer_2"] == 4
    rows = compare_rows(tree, n_boot=10)
    assert_rows_close(compare_rows(xl_store, n_boot=10), rows)
    assert {r["stage"] for r in rows if r["model"] == "custom"} >= {"pooled", "token_embedding", "encoder_layer"}


def test_cli_on_sdxl(sdxl_dir, xl_db, tmp_path, capsys):
    """record, compare, alignit, attention and swap through the CLI on SDXL directories."""
    from alignit_probe.cli import main

    db = xl_db  # (the fine-tune xl_pair loads: written once)
    models = ["--baseline", sdxl_dir, "--custom", db, "--concept", "sks", "--class-word", "cat", "--no-progress"]
    prompt = ["--prompt", PROMPTS[0]]
    assert main(["record", *models, *prompt, "--out", str(tmp_path / "s.zarr"), "--alignit"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "s.zarr"), "--stage", "pooled", "token_embedding", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["stage"], r["layer"]) for r in rows} == {
        ("pooled", None),
        ("token_embedding", None),
        ("token_embedding", "text_2"),
    }
    assert main(["compare", str(tmp_path / "s.zarr")]) == 0
    assert "text_2.3" in capsys.readouterr().out
    # (an SDXL store's report: test_report_summarises_each_encoder_and_pooled and the SDXL demo below)
    gen = ["--steps", "2", "--height", "32", "--width", "32"]
    assert main(["alignit", *models, *prompt, *gen, "--pooled", "custom", "--out", str(tmp_path / "al")]) == 0
    assert len(list((tmp_path / "al").rglob("*.png"))) >= 3
    assert main(["attention", *models, *prompt, *gen, "--alignit", "--out", str(tmp_path / "maps")]) == 0
    swap = ["swap", "--baseline", sdxl_dir, "--key-prompt", "a dog", "--value-prompt", "a cat", "--no-progress"]
    assert main([*swap, *gen, "--out", str(tmp_path / "sw")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err


def test_drop_padding_keeps_the_first_positions_of_every_group(xl_pair, xl_store, tmp_path):
    options = RecordOptions(batch_size=1, alignit=AlignITOptions(), drop_padding=True)
    small = st.open_store(record_store(xl_pair, CONCEPTS, PROMPTS, tmp_path / "d.zarr", options, progress=False))
    n = small.attrs["n_tokens"]
    assert n < 77
    for group in ("text", "text_2", "text_out"):
        full, cut = st.group(xl_store, "custom", group), st.group(small, "custom", group)
        for var in full.data_vars:
            expected = full[var].isel(token=slice(0, n)) if "token" in full[var].dims else full[var]
            assert np.array_equal(cut[var].values, expected.values), (group, var)


def test_demo_on_the_sdxl_toy(tmp_path, capsys):
    """``demo --arch sdxl``: Custom Diffusion K/V plus a two-encoder Textual Inversion on the SDXL toy, end to end."""
    from alignit_probe.cli import main

    assert main(["demo", "--arch", "sdxl", "--out", str(tmp_path), "--steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr()  # the stacked Textual Inversion adds the token: no "no modifier-token file" note
    assert "warning:" not in out.err and "Traceback" not in out.err, out.err
    assert (tmp_path / "report.html").is_file() and (tmp_path / "alignit_grid.png").is_file()
    tree = st.open_store(tmp_path / "probe.zarr")
    assert {"text", "text_2", "text_out", "attention"} <= set(tree["custom"].children)
    assert st.model_attrs(tree, "custom")["method"] == "custom_diffusion+textual_inversion"
    assert "SDXL's second text encoder" in out.out
