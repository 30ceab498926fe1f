"""The demo on the world (the default): its live scores are exactly ``world eval``'s rows on the shipped Custom
Diffusion output, its report opens with them (then the stages), and it writes every promised output. The shipped
data is small and says how it was made. (Run on few samples and steps: the default run's time is measured by
``benchmarks/demo_time.sh``, not here.)"""

from __future__ import annotations

import json
import shutil

import pytest
import xarray as xr
from PIL import Image

from alignit_probe.cli import main
from alignit_probe.world.shipped import METHODS, customization_dir, shipped_table

SAMPLES, STEPS = 3, 2


@pytest.fixture(autouse=True)
def world_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ALIGNIT_PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "world_cache"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    cache = tmp_path_factory.getbasetemp() / "world_cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNIT_PROBE_CACHE", str(cache))
        argv = ["demo", "--out", str(out), "--samples", str(SAMPLES), "--steps", str(STEPS), "--no-progress"]
        assert main(argv) == 0
    return out


def test_live_scores_are_world_eval_rows(demo, capsys):
    capsys.readouterr()
    cd = str(customization_dir("custom-diffusion"))
    argv = ["world", "eval", "--custom", cd, "--concept", "<new1>", "--class-word", "triangle", "--alignit"]
    argv += ["--samples", str(SAMPLES), "--steps", str(STEPS), "--seed", "0", "--json", "--no-progress"]
    assert main(argv) == 0
    assert json.loads((demo / "alignment.json").read_text()) == json.loads(capsys.readouterr().out)


def test_report_opens_with_the_alignment_then_the_stages(demo):
    page = (demo / "report.html").read_text()
    assert page.index('id="alignment"') < page.index('id="stages"') < page.index('id="models"')
    section = page[page.index('id="alignment"') : page.index('id="stages"')]
    for r in shipped_table()["rows"]:  # the shipped table, cell by cell
        assert f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" in section
    for r in json.loads((demo / "alignment.json").read_text()):  # and the live one
        assert f"{r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" in section


def test_demo_writes_images_store_and_swap(demo):
    with Image.open(demo / "alignit_grid.png") as grid:
        assert grid.info["prompts"].count("<new1> triangle") == SAMPLES
        notes = json.loads(grid.info["notes"])  # what the scorer read, under every image of every column
    assert len(notes) == 5 and all(
        len(lines) == SAMPLES and all("concept" in x for x in lines) for lines in notes.values()
    )
    assert len(list((demo / "images").rglob("*.png"))) == 5 * SAMPLES
    tree = xr.open_datatree(demo / "probe.zarr", engine="zarr")
    branches = {"baseline", *METHODS, *(f"alignit-{m}" for m in METHODS)}
    assert branches <= set(tree.children)
    assert all("attention" in tree[b].children for b in branches)
    assert (demo / "swap_grid.png").is_file()


def test_shipped_data_is_small_and_says_how_it_was_made():
    files = [f for m in METHODS for f in customization_dir(m).iterdir()]
    assert sum(f.stat().st_size for f in files) <= 2_000_000
    for method in METHODS:
        config = json.loads((customization_dir(method) / "train_config.json").read_text())
        assert (config["method"], config["seed"], config["token"]) == (method, 0, "<new1>")
    table = shipped_table()
    assert table["samples"] >= 200 and table["seed"] == 0
    assert {r["n"] for r in table["rows"]} == {table["samples"]}
    assert {r["method"] for r in table["rows"]} == set(METHODS)
    assert all("--samples 200 --seed 0" in c for c in table["commands"].values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--arch", "sd1", "--samples", "3"], "--samples is for the world demo"),
        (["demo", "--samples", "0"], "--samples 0 is not positive"),
        (["demo", "--alignment", "missing.json"], "cannot be read"),
    ],
)
def test_bad_demo_invocations_are_one_line(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_report_refuses_an_alignment_file_without_rows(demo, capsys, tmp_path):
    bad = tmp_path / "rows.json"
    bad.write_text(json.dumps([{"model": "baseline"}]))
    out = tmp_path / "r.html"
    assert main(["report", str(demo / "probe.zarr"), "--out", str(out), "--alignment", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "holds no world eval rows" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_world_report_renders_in_a_browser(demo, tmp_path):
    """The demo's report in headless Chromium: every image decodes, no script error (its self-check)."""
    from tests.integration.test_report_html import CONSOLE_ERROR, SELFCHECK, chromium

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    dom, log = chromium(exe, tmp_path, "--dump-dom", (demo / "report.html").as_uri())
    found = SELFCHECK.search(dom)
    assert found, dom[-500:] + log[-2000:]
    images, broken, errors, _ = map(int, found.groups())
    assert images >= 10 and broken == 0 and errors == 0, found.group(0)
    assert not [ln for ln in log.splitlines() if CONSOLE_ERROR.search(ln)]
