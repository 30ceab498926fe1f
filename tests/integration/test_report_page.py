"""What a reader sees on the report page of a tiny store (toy pipeline, two customized models, 2 prompts): CI
captions and notes as the tables, no debug text, the side-by-side section named for what it shows, a summary store
said to be one, the store's and the report's times labelled, and the CLI's output path as given."""

import html
import re

import pytest

from alignit_probe import store as st
from alignit_probe.alignit.engine import AlignITOptions
from alignit_probe.analysis.metrics import compare_rows
from alignit_probe.cli import main
from alignit_probe.models.load import load_models
from alignit_probe.record.run import RecordOptions, record_store
from alignit_probe.text.concepts import Concept
from alignit_probe.viz.report import report_html

PROMPTS = ["photo of a <new1> cat on the beach", "a <new1> cat wearing a red hat"]


@pytest.fixture(scope="module")
def stores(toy_dir, cd_dir, tmp_path_factory, one_thread):
    """A full store and a summary store of two customized models named as no run's checkpoints."""
    models = load_models(toy_dir, {"first": cd_dir, "second": cd_dir}, progress=False)
    d = tmp_path_factory.mktemp("report-page")
    out = {}
    for summary in (False, True):
        opts = RecordOptions(batch_size=2, alignit=AlignITOptions(), summary=summary)
        path = d / f"{'summary' if summary else 'full'}.zarr"
        out[summary] = record_store(models, [Concept("<new1>", "cat")], PROMPTS, path, opts, progress=False)
    return out


@pytest.fixture(scope="module")
def pages(stores):
    """The report page of the full store, of the summary store, and of the full store told (in memory) that its
    models are checkpoints of one run and when it was recorded."""
    out = {name: page_of(st.open_store(stores[name == "summary"])) for name in ("full", "summary")}
    tree = st.open_store(stores[False])
    rows = compare_rows(tree, n_boot=20)  # (what the models are called does not change a distance)
    for model, step in (("first", 500), ("second", 1000)):
        tree[model].attrs["custom_ids"] = [f"/runs/sks/checkpoint-{step}"]
    tree.attrs["recorded_at"] = "2026-01-02T03:04:05+00:00"
    out["run"] = report_html(tree, rows)
    return out


def page_of(tree):
    return report_html(tree, compare_rows(tree, n_boot=20))


def visible_text(page):
    """The page's text as a reader sees it: no script, no style, no hidden element."""
    page = re.sub(r"<(script|style)\b.*?</\1>|<(\w+)\b[^>]*\bhidden\b[^>]*>.*?</\2>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_page_of_two_prompts_draws_no_ci_and_says_why(pages):
    text = visible_text(pages["full"])
    assert "95% percentile-bootstrap CI" not in text and "95% bootstrap CI" not in text  # no figure claims one
    assert "no error bars: n = 2 prompts, fewer than the 3" in text and "no bands: n = 2 prompts" in text
    assert "No CI where n < 3 prompts" in text  # why the tables' [95% CI] columns hold values alone


def test_self_check_is_hidden_from_readers(pages):
    assert '<pre id="selfcheck" hidden></pre>' in pages["full"]  # still there for the headless check
    text = visible_text(pages["full"])
    assert "self-check" not in text and "broken:" not in text and "selfcheck" not in text


def test_unrelated_models_are_side_by_side_and_checkpoints_a_run(pages):
    page = pages["full"]
    assert '<a href="#side-by-side">models side by side</a>' in page
    assert '<h2 id="side-by-side">5. Customized models side by side</h2>' in page
    assert ">checkpoints</a>" not in page and "not joined" in page
    page = pages["run"]  # the same models, as checkpoints of one run
    assert '<a href="#checkpoints">checkpoints</a>' in page and "5. Checkpoints of one run</h2>" in page
    assert "first 500, second 1000" in page and "side by side" not in page


def test_summary_store_says_so_near_the_top(pages):
    summary, full = visible_text(pages["summary"]), visible_text(pages["full"])
    assert "This is a summary store" in summary and "not the activations" in summary
    assert summary.index("This is a summary store") < summary.index("Models and artifacts")
    assert "summary store" not in full


def test_report_time_and_store_time_are_labelled(pages):
    text = visible_text(pages["full"])
    assert re.search(r"report written \d{4}-\d\d-\d\d \d\d:\d\d", text)
    recorded = re.search(r"store recorded (\d{4}-\d\d-\d\d \d\d:\d\d) UTC · report written", text)
    assert recorded and "· written" not in text  # the time the store was committed, in UTC
    assert "store recorded 2026-01-02 03:04 UTC · report written" in visible_text(pages["run"])


def test_cli_prints_the_output_path_as_given(stores, tmp_path, monkeypatch, capsys):
    import alignit_probe.cli.report as cli_report
    import alignit_probe.viz.report as viz_report

    monkeypatch.setattr(viz_report, "report_html", lambda *a, **k: "<html></html>")  # the path is what is tested
    monkeypatch.setattr(cli_report, "write_folder", lambda *a, **k: [])
    monkeypatch.chdir(tmp_path)
    for out in ("r.html", "rep", "rep2/"):
        capsys.readouterr()
        assert main(["report", str(stores[False]), "--out", out]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"report written to {out.rstrip('/')}"


@pytest.fixture(scope="module")
def summary_md(stores, tmp_path_factory):
    """The summary.md of the report folder of the full store (``write_folder`` also draws its four figures, ~3 s:
    written once for the tests that read it)."""
    from alignit_probe.cli.report import write_folder

    out = tmp_path_factory.mktemp("report-folder")
    tree = st.open_store(stores[False])
    write_folder(tree, compare_rows(tree, n_boot=20), out, [stores[False]])
    return (out / "summary.md").read_text()


def test_summary_md_says_why_its_ci_column_is_empty(summary_md):
    assert "| — | 2 |" in summary_md and "No CI where n < 3 prompts" in summary_md


def test_summary_md_keeps_angle_bracket_tokens_visible(summary_md):
    """``<new1>`` in a path or a warning would be an HTML tag to a Markdown renderer: paths are code spans and
    warnings escape it."""
    lines = [ln for ln in summary_md.splitlines() if ln.startswith(("- **", "  - warning"))]
    assert lines and all("`" in ln for ln in lines if ln.startswith("- **"))
    assert not any("<" in ln.replace("`", "") and "`" not in ln for ln in lines)
