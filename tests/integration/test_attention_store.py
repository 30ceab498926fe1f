"""Attention maps of baseline, customized and AlignIT generations in one store, and their compare rows."""

import numpy as np

from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions, alignit_kv
from alignit_probe.analysis.attention import attention_rows
from alignit_probe.cli import main
from alignit_probe.record.branches import generation_maps
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.schema import ATTENTION_METRICS
from alignit_probe.text.concepts import Concept

GEN = dict(seed=0, steps=2, guidance_scale=7.5, output_type="np")


def test_maps_in_store_and_zero_divergence_for_identical_generation(cd_pair, tmp_path, layout_sensitive):
    concepts = [Concept("<new1>", "cat")]
    prompts = ["a red car on the beach"]  # no concept: AlignIT on the baseline UNet is the baseline, bit for bit
    akv = alignit_kv(cd_pair, concepts, prompts, AlignITOptions(denoiser="baseline"), allow_absent=True)
    maps = generation_maps(cd_pair, akv, include_alignit=True, **GEN)
    assert np.array_equal(maps["alignit"][0]["map"].values, maps["baseline"][0]["map"].values)
    assert maps["custom"][0]["map"].dims == ("prompt", "token", "y", "x")


def test_rows_compare_each_token_with_its_baseline_partner(cd_pair, tmp_path):
    from alignit_probe.analysis.stats import gather_partners as _gather_maps

    concepts, prompts = [Concept("<new1>", "cat")], ["photo of a <new1> cat on the beach", "a <new1> in the snow"]
    akv = alignit_kv(cd_pair, concepts, prompts)
    maps = generation_maps(cd_pair, akv, include_alignit=False, **GEN)
    base = maps["baseline"][0]
    ref = np.array([p.tokens.ref_index for p in akv.plans])
    partner = base.copy()
    partner["map"] = base["map"].copy(data=np.nan_to_num(_gather_maps(base["map"].values, ref)))  # partner maps

    nodes = {"baseline/attention": base, "custom/attention": maps["custom"][0], "alignit/attention": partner}
    options = RecordOptions(alignit=AlignITOptions())
    tree = st.open_store(
        record_store(cd_pair, concepts, prompts, tmp_path / "s.zarr", options, progress=False, nodes=nodes)
    )
    rows = attention_rows(tree)
    assert {r["metric"] for r in rows} == set(ATTENTION_METRICS)
    assert {r["model"] for r in rows} == {"custom", "alignit"}
    for r in rows:
        if r["model"] == "alignit" and r["n"]:
            assert r["value"] == 0.0, r
    assert any(r["model"] == "custom" and r["n"] and r["value"] > 0 for r in rows)


def test_attention_command(toy_dir, cd_dir, tmp_path, capsys):
    out = tmp_path / "att"
    argv = [
        "attention",
        "--baseline",
        toy_dir,
        "--custom",
        cd_dir,
        "--concept",
        "<new1>",
        "--class-word",
        "cat",
        "--prompt",
        "photo of a <new1> cat on the beach",
        "--alignit",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert len(list((out / "overlays").glob("*.png"))) == 3
    tree = st.open_store(out / "store.zarr")
    for model in ("baseline", "custom", "alignit"):
        m = tree[f"{model}/attention"].to_dataset()["map"]
        assert m.sizes["token"] == st.token_labels(tree, model).sizes["token"]
    capsys.readouterr()
    assert main(["compare", str(out / "store.zarr"), "--json"]) == 0
    assert '"stage": "attention_map"' in capsys.readouterr().out


def test_attention_command_without_custom(toy_dir, tmp_path, capsys):
    """DAAM's use: the baseline's maps alone; a store with the baseline's token labels and baseline/attention; a
    prompt cut to the encoder's window is said, and kept in the store's warnings, as with customized models."""
    out = tmp_path / "att"
    prompts = ["a photo of a cat", "a dog on the beach" + ", at dusk by the lighthouse" * 14]
    argv = ["attention", "--baseline", toy_dir, "--prompt", prompts[0], "--prompt", prompts[1], "--steps", "2"]
    argv += ["--aggregation", "daam", "--map-layers", "daam", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("truncated") == 1 and "warning: prompt 1 truncated: " in err, err
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["000-baseline.png", "001-baseline.png"]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == ["000-baseline.png", "001-baseline.png"]
    tree = st.open_store(out / "store.zarr")
    assert st.models(tree) == ["baseline"] and list(tree["baseline"].children) == ["attention"]
    labels = st.token_labels(tree, "baseline")
    assert labels.prompt_text.values.tolist() == prompts
    assert set(labels.role.values.ravel()) == {"special", "context", "padding"}  # no concept without --custom
    assert labels.token_str.values[0, 5] == "cat</w>"
    ds = tree["baseline/attention"].to_dataset()
    assert ds["map"].dims == ("prompt", "token", "y", "x") and ds.sizes["token"] == labels.sizes["token"]
    assert float(ds["map_raw"].min()) >= 0 and ds.attrs["aggregation"] == "daam"
    assert ds.attrs["layer_selection"] == "daam" and not any(p.startswith("mid_block") for p in ds.attrs["layers"])
    assert st.model_attrs(tree, "baseline")["method"] == "baseline"
    assert [w.split(":")[0] for w in st.store_attrs(tree)["warnings"]] == ["prompt 1 truncated"]
    assert attention_rows(tree) == []  # nothing to compare against
    capsys.readouterr()
    assert main(["compare", str(out / "store.zarr"), "--json", "--no-progress"]) == 0  # said, not an error
    got = capsys.readouterr()
    assert got.out.strip() == "[]" and "holds no model to compare with the baseline" in got.err


def test_attention_command_refuses_customized_flags_without_custom(toy_dir, tmp_path, capsys):
    base = ["attention", "--baseline", toy_dir, "--prompt", "a cat", "--steps", "1", "--no-progress"]
    for extra, flag in (
        (["--alignit"], "--alignit"),
        (["--concept", "sks"], "--concept"),
        (["--alpha", "0.5"], "--alpha"),
    ):
        assert main(base + extra + ["--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag} needs a customized model") and "\n" not in err
        assert not (tmp_path / "x").exists()
    custom = ["--custom", str(tmp_path), "--out", str(tmp_path / "y")]
    assert main(base + custom) == 2
    assert "--custom needs --concept" in capsys.readouterr().err
