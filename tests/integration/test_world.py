"""The shipped world model: it loads as a diffusers pipeline through the package's loaders, its file round-trips
exactly, it draws what held-out captions ask, and ``world eval`` / ``world pipeline`` behave as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignit_probe.cli import main
from alignit_probe.world.alignment import ROW_KEYS, bootstrap_ci, rows_of
from alignit_probe.world.model import (
    EMBEDDING_SUFFIX,
    load_weights,
    shipped_weights_path,
    untrained_embeddings,
    weights_state,
    world_components,
    world_info,
    world_pipeline,
    world_token_ids,
)


@pytest.fixture(autouse=True)
def world_cache(tmp_path_factory, monkeypatch):
    """The world's pipeline folder (written on first use by ``world eval``) goes to a test folder."""
    monkeypatch.setenv("ALIGNIT_PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "world_cache"))


@pytest.fixture(scope="module")
def world():
    return world_pipeline()


def test_shipped_file_is_small_and_says_how_it_was_made():
    assert shipped_weights_path().stat().st_size < 12 * 2**20
    info = world_info()
    assert info["version"] == "world-1"
    assert {"steps", "batch", "lr", "text_lr"} <= set(info["recipe"])
    assert min(info["accuracy"].values()) >= 0.85, info["accuracy"]


def test_untrained_token_rows_are_the_seeded_initial_values(world):
    matrix = world.text_encoder.get_input_embeddings().weight
    init = untrained_embeddings(int(world_info()["seed"]))
    trained = torch.tensor(world_token_ids())
    rest = torch.ones(matrix.shape[0], dtype=torch.bool)
    rest[trained] = False
    assert torch.equal(matrix[rest], init[rest])
    assert not torch.equal(matrix[trained], init[trained])


def test_weights_round_trip_exactly(world):
    components = dict(
        text_encoder=world.text_encoder, unet=world.unet, vae=world.vae, tokenizer=world.tokenizer, scheduler=None
    )
    tensors, meta = weights_state(components)
    again = load_weights(world_components(int(world_info()["seed"])), tensors, meta)
    for name in ("text_encoder", "unet", "vae"):
        mine, theirs = components[name].state_dict(), again[name].state_dict()
        for key, value in mine.items():
            assert torch.equal(value, theirs[key]), (name, key)
    assert again["vae"].config.scaling_factor == world.vae.config.scaling_factor
    assert any(k.endswith(EMBEDDING_SUFFIX) for k in world.text_encoder.state_dict())


def test_world_pipeline_command_writes_a_folder_the_loaders_take(tmp_path, capsys):
    from alignit_probe.models.load import load_pipeline

    out = tmp_path / "world"
    assert main(["world", "pipeline", "--out", str(out)]) == 0
    pipe = load_pipeline(str(out))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert main(["world", "pipeline", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_world_eval_json_rows_on_held_out_captions(capsys, one_thread):
    """The shipped model draws what held-out captions ask (a small sample; the ≥ 90 % claim is measured with 200
    samples in docs/world.md), and the rows have exactly the documented keys."""
    samples = 20  # sampling is the time here (~0.3 s a sample on one thread); every attribute is still asked ≥ 12×
    assert main(["world", "eval", "--samples", str(samples), "--seed", "3", "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["attribute"] for r in rows} == {"shape", "color", "pattern", "size", "position", "background"}
    for r in rows:
        assert tuple(r) == ROW_KEYS and r["model"] == "baseline"
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"] and 0 < r["n"] <= samples
        assert r["accuracy"] >= 0.75, r
    assert {r["attribute"]: r["n"] for r in rows}["shape"] == samples  # every caption names its shape


def test_world_eval_samples_with_the_steps_and_guidance_it_is_given(capsys, monkeypatch):
    """``world eval --steps N --guidance-scale G`` without ``--custom`` samples the baseline with N steps and
    guidance G (they were checked, then ignored)."""
    from alignit_probe.world import alignment

    seen, real = [], alignment.world_images
    monkeypatch.setattr(alignment, "world_images", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    argv = ["world", "eval", "--samples", "2", "--steps", "3", "--guidance-scale", "2.5", "--json", "--no-progress"]
    assert main(argv) == 0
    assert [(kw["steps"], kw["guidance"]) for kw in seen] == [(3, 2.5)]


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(20) < 0.7, rng.random(2000) < 0.7
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    rows = rows_of("custom", {"background": np.array([1.0, np.nan, 0.0]), "position": np.full(3, np.nan)})
    assert rows == [
        dict(
            model="custom",
            attribute="background",
            accuracy=0.5,
            ci_low=rows[0]["ci_low"],
            ci_high=rows[0]["ci_high"],
            n=2,
        )
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["world", "eval", "--samples", "0"], "--samples 0 is not positive"),
        (["world", "eval", "--alignit"], "--alignit needs a customized model"),
        (["world", "eval", "--custom", "nowhere", "--samples", "2"], "needs the concept's token"),
        (["world", "eval", "--baseline", "/no/such/dir", "--samples", "2"], "/no/such/dir"),
        (["world", "pipeline", "--out", "x", "--weights", "/no/file.safetensors"], "not found"),
        (["world", "pretrain", "--out", "/no/dir/w.safetensors"], "does not exist"),
        (["world", "pretrain", "--out", "w.safetensors", "--batch", "0"], "--batch 0 is not positive"),
    ],
)
def test_bad_world_invocations_fail_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
