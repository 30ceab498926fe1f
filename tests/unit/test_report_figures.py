"""The report's figures read as the tables do: no CI drawn below ``MIN_CI`` prompts, legends outside the data,
points at exactly 0 clear of the x axis, attention metrics under readable names, and lines only between checkpoints
of one run. Drawn from hand-made ``compare`` rows (no store, no model); each figure is caught before it is encoded."""

import pytest
from matplotlib.container import ErrorbarContainer

from alignit_probe.analysis.stats import MIN_CI
from alignit_probe.schema import ATTENTION_METRICS
from alignit_probe.viz import attention, drift, stages
from alignit_probe.viz.drift import run_steps
from alignit_probe.viz.figures import metric_label
from alignit_probe.viz.notes import ci_caption, ci_table_note

KV = ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2")
LAYERS = {"token_embedding": [None], "encoder_layer": [0, 1], "encoder_output": [None], "key": KV, "value": KV}


def rows(n, models=("db", "lora", "alignit-db")):
    """Rows of every stage and role; the AlignIT branch has K/V only, its context exactly 0 (as AlignIT's is)."""
    out = []
    for i, model in enumerate(models):
        for stage, layers in LAYERS.items():
            if model.startswith("alignit") and stage not in ("key", "value"):
                continue
            for layer in layers:
                for role in ("concept", "context"):
                    for metric in ("relative_l2", "cosine_distance"):
                        v = 0.0 if model.startswith("alignit") and role == "context" else 0.8 - 0.1 * i
                        out.append(row(model, stage, layer, role, metric, v, n))
        for role in ("concept", "context"):
            for metric in ATTENTION_METRICS:
                out.append(row(model, "attention_map", None, role, metric, 0.1 + 0.01 * i, n))
    return out


def row(model, stage, layer, role, metric, value, n):
    low, high = max(value - 0.1, 0.0), value + 0.1
    return dict(model=model, reference="baseline", stage=stage, layer=layer, role=role, metric=metric, value=value,
                ci_low=low, ci_high=high, n=n)  # fmt: skip


@pytest.fixture
def caught(monkeypatch):
    """Every figure drawn, caught where it would be encoded (PNG bytes) or saved (a file)."""
    figures = []

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return b"png"

    for module in (stages, attention):
        monkeypatch.setattr(module, "png_bytes", keep)
    monkeypatch.setattr(drift, "save", keep)
    return figures


def draw_all(data, tmp_path, steps=None):
    stages.stage_figure(data)
    stages.kv_layer_figure(data)
    attention.attention_divergence_figure(data)
    drift.drift_figure(data, tmp_path / "d.png")
    drift.checkpoint_figure(data, tmp_path / "c.png", steps=steps)


def error_bars(fig):
    return sum(isinstance(c, ErrorbarContainer) and c.has_yerr for ax in fig.axes for c in ax.containers)


def bands(fig):
    return sum(len(ax.collections) for ax in fig.axes)  # fill_between's PolyCollections (no other collections)


@pytest.mark.parametrize("n", [2, MIN_CI])
def test_figures_draw_a_ci_only_from_min_ci_prompts(caught, tmp_path, n):
    draw_all(rows(n), tmp_path)
    stage, kv, att, every, side = caught
    for fig in (stage, kv, att, side):
        assert (error_bars(fig) > 0) == (n >= MIN_CI), fig
    assert (bands(every) > 0) == (n >= MIN_CI)
    caption = ci_caption(rows(n))
    assert ("no error bars" in caption) == (n < MIN_CI) and ("95%" in caption) == (n >= MIN_CI)
    assert bool(ci_table_note(rows(n))) == (n < MIN_CI)


def test_a_mix_of_prompt_counts_draws_bars_where_n_allows(caught, tmp_path):
    mixed = [dict(r, n=2) if r["model"] == "lora" else r for r in rows(MIN_CI)]
    stages.stage_figure(mixed)
    assert error_bars(caught[0]) == 2 * 2  # db and alignit-db, in each role panel
    assert "drawn only where n ≥ 3" in ci_caption(mixed) and ci_table_note(mixed)


def test_legends_outside_the_data_and_zero_points_whole(caught, tmp_path):
    draw_all(rows(2), tmp_path)
    for fig in caught:
        assert fig.legends and not any(ax.get_legend() for ax in fig.axes), fig  # one legend, above the panels
        for ax in fig.axes:
            if ax.lines:
                assert ax.get_ylim()[0] < 0, ax.get_title()  # a margin below 0: zero points clear of the x axis
                assert not any(line.get_clip_on() for line in ax.lines if len(line.get_xdata()) > 2)
    # the AlignIT context points at exactly 0 are drawn (markers, unclipped) in the stage figure
    context = caught[0].axes[1]
    zeros = [ln for ln in context.lines if ln.get_label() == "alignit-db"]
    assert zeros and all(y == 0 for y in zeros[0].get_ydata() if y == y) and not zeros[0].get_clip_on()


def test_attention_metrics_have_readable_names_and_units(caught):
    attention.attention_divergence_figure(rows(2))
    titles = [ax.get_title() for ax in caught[0].axes]
    assert titles == ["1 − Pearson r", "Jensen–Shannon divergence (bits)", "1 − IoU"]
    assert [metric_label(m) for m in ATTENTION_METRICS] == titles


@pytest.mark.parametrize(
    ("sources", "steps"),
    [
        ({"db": ["db", "/out/db"], "lora": ["lora", "/out/lora"]}, None),  # unrelated models
        (
            {"step1000": ["step1000", "ckpt-1000"], "step500": ["step500", "ckpt-500"]},
            {"step500": 500, "step1000": 1000},
        ),
        ({"a": ["a", "/run/checkpoint-500"], "b": ["b", "/run/checkpoint-1000"]}, {"a": 500, "b": 1000}),
        ({"a": ["a", "/run1/checkpoint-500"], "b": ["b", "/run2/checkpoint-1000"]}, None),  # two runs
        ({"lora1": ["lora1", "x"], "lora2": ["lora2", "y"]}, None),  # a number in a name is no step
        ({"500": ["500", "x"], "1000": ["1000", "y"]}, {"500": 500, "1000": 1000}),
        ({"a": ["a", "/run/checkpoint-500"], "b": ["b", "/run/checkpoint-500"]}, None),  # the same step twice
        (  # the run's output folder with its checkpoints: last
            {"f": ["f", "/run"], "a": ["a", "/run/checkpoint-5"], "b": ["b", "/run/checkpoint-2"]},
            {"b": 2, "a": 5, "f": 6},
        ),
        ({"f": ["f", "/run"], "a": ["a", "/run/checkpoint-5"]}, None),  # one checkpoint and the output: no run
        ({"f": ["f", "/other"], "a": ["a", "/run/checkpoint-5"], "b": ["b", "/run/checkpoint-2"]}, None),
    ],
)
def test_checkpoints_of_one_run_from_names_or_paths(sources, steps):
    got = run_steps(sources)
    assert got == steps and (got is None or list(got) == list(steps))


@pytest.mark.parametrize("steps", [None, {"lora": 500, "db": 1000}])
def test_side_by_side_joins_models_only_as_checkpoints(caught, tmp_path, steps):
    drift.checkpoint_figure(rows(2), tmp_path / "c.png", steps=steps)
    ax = caught[0].axes[0]
    drawn = [ln for ln in ax.lines if ln.get_label() in ("concept", "context")]
    assert drawn and all((ln.get_linestyle() != "None") == bool(steps) for ln in drawn)
    assert [t.get_text() for t in ax.get_xticklabels()] == (["lora", "db"] if steps else ["db", "lora"])


def test_lines_on_top_of_each_other_at_zero_are_said(caught, tmp_path):
    data = rows(MIN_CI) + [
        row("alignit-db", stage, layer, "special", "relative_l2", 0.0, MIN_CI)
        for stage in ("key", "value")
        for layer in KV
    ]
    drift.drift_figure(data, tmp_path / "d.png")
    (fig,) = caught
    notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert notes["alignit-db vs baseline"] == ["at 0 everywhere (lines overlap): context, special"]
    assert notes["db vs baseline"] == []  # one role at 0 or none: nothing to say


def test_stage_ticks_put_encoder_and_layer_count_on_lines_of_their_own():
    assert stages.stage_label("encoder_layer (text_2)", 4) == "encoder_layer\n(text_2)\n(mean of 4 layers)"
    assert stages.stage_label("token_embedding (text)", 1) == "token_embedding\n(text)"
    assert stages.stage_label("key", 8) == "key\n(mean of 8 layers)" and stages.stage_label("encoder_output", 1) == (
        "encoder_output"
    )
    longest = max(len(line) for s in ("token_embedding (text_2)", "encoder_layer (text_2)", "value") for line in
                  stages.stage_label(s, 40).splitlines())  # fmt: skip
    assert longest <= len("(mean of 40 layers)")  # SDXL's ticks as narrow as SD1's: no overlap
