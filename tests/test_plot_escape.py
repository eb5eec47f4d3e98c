"""User-chosen names in Plotly figures are drawn as text: every chart module's real figure,
built with a run, task, class and metric-column name full of the markup plotly.js draws
(links, styled spans, a hovertemplate placeholder), holds only its escaped form
(`ui.text.plot_text`) in every rendered string of its JSON; and in Chromium, plotly.js draws
that escaped form as the name's own characters."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import pytest

from mtl_core.baselines import Comparison, TaskComparison
from ui import baselines_view, charts, vision_charts
from ui import compare_charts as cc
from ui import sweep_charts as sc
from ui.text import plot_text

EVIL = '<a href="http://evil.example/">x</a><span style="font-size:99px">big</span>%{x}'
SAFE = plot_text(EVIL)
# Figure keys plotly.js never draws: a group id and the zoom-keeping token.
NOT_DRAWN = {"legendgroup", "uirevision"}
COLUMNS = ["id", "step", "epoch", "split", "task", "name", "value"]


def strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) for every string in a figure's JSON, outside the keys never drawn."""
    if key in NOT_DRAWN:
        return
    if isinstance(node, str):
        yield key, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, k)
    elif isinstance(node, (list, tuple)) or (isinstance(node, np.ndarray)
                                              and node.dtype.kind in "OUS"):
        for v in node:
            yield from strings(v, key)


def assert_shown_as_text(fig: Any, where: set[str] | None = None) -> set[str]:
    """No drawn string of `fig` holds a raw link, span or unescaped `%{x}` of EVIL, and its
    escaped form is there; returns the keys it is under (name, text, ...)."""
    found = set()
    for key, s in strings(fig.to_plotly_json()):
        assert "<a" not in s and "<span" not in s, (key, s)
        assert "</span>%{x}" not in s and "&gt;%{x}" not in s, (key, s)
        if SAFE in s:
            found.add(key)
    assert found, "the escaped name is nowhere in the figure"
    if where is not None:
        assert where <= found, (where, found)
    return found


def metrics(task: str, splits=("train", "val"), name: str = "loss") -> pd.DataFrame:
    rows = [(step, 0, split, t, name, 1.0 / step) for step in (1, 2, 3) for split in splits
            for t in (task, "total")]
    return pd.DataFrame([(i, *r) for i, r in enumerate(rows)], columns=COLUMNS)


# ---------------------------------------------------------------- ui.charts


@pytest.mark.parametrize("splits", [("train",), ("train", "val")])
def test_loss_curves_legend_names_are_text(splits) -> None:
    fig = charts.loss_figure(metrics(EVIL, splits), [EVIL, "total"], splits, smoothing=0.5)
    assert_shown_as_text(fig, {"name"})
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert (SAFE in names) if len(splits) == 1 else (f"{SAFE} · val" in names)


def test_a_stacked_runs_band_and_seed_lines_are_text() -> None:
    df = pd.concat([metrics(EVIL).assign(replica=r, value=lambda d, r=r: d["value"] + r)
                    for r in (0, 1)])
    for band in ("sd", "lines"):
        assert_shown_as_text(charts.loss_figure(df, [EVIL], ("train",), band=band), {"name"})


def test_metric_weight_and_grad_norm_figures_name_tasks_as_text() -> None:
    assert_shown_as_text(charts.metric_figure(metrics(EVIL, ("val",), "accuracy"), [EVIL],
                                              "accuracy"), {"name"})
    assert_shown_as_text(charts.weights_figure(metrics(EVIL, ("train",), "weight"), [EVIL]))
    assert_shown_as_text(charts.grad_norm_figure(metrics(EVIL, ("diag",), "grad_norm"),
                                                 [EVIL]))


def test_cosine_curves_and_heatmap_name_tasks_as_text() -> None:
    pair = f"{EVIL}{charts.PAIR_SEP}b"
    df = pd.DataFrame([(i, s, 0, "diag", pair, "cosine", 0.5) for i, s in enumerate((1, 2))],
                      columns=COLUMNS)
    assert_shown_as_text(charts.cosine_figure(df), {"name"})
    heat = charts.cosine_heatmap(df)
    assert_shown_as_text(heat, {"x", "y"})
    assert list(heat.data[0].x) == [SAFE, "b"]


def test_inspect_figures_label_tasks_as_text() -> None:
    figs = dict(charts.inspect_figures({"mixing": [[[0.9, 0.1], [0.2, 0.8]]],
                                        "gates": {EVIL: [0.5, 0.5], "b": [0.1, 0.9]},
                                        "masks": {EVIL: [0.9, 0.5]}}, [EVIL, "b"]))
    assert_shown_as_text(figs["mixing0"], {"x", "y"})
    assert_shown_as_text(figs["gates"], {"name"})
    assert_shown_as_text(figs["masks"], {"name"})


def test_prediction_figures_title_tasks_and_classes_as_text() -> None:
    cm = charts.confusion_figure([[8, 2], [1, 9]], [EVIL, "dog"], EVIL)
    assert_shown_as_text(cm, {"text", "x", "y"})  # title.text and the class axes
    assert cm.layout.title.text.startswith(f"{SAFE} — accuracy")
    assert_shown_as_text(charts.confusion_figure([[0, 0], [0, 0]], None, EVIL), {"text"})
    assert_shown_as_text(charts.scatter_figure([1.0, 2.0, 3.0], [1.1, 2.0, 2.9], EVIL),
                         {"text"})
    grid = {"xs": [0.0, 1.0], "ys": [0.0, 1.0], "values": {EVIL: [[0.1, 0.9], [0.4, 0.6]]},
            "points": {"x": [0.2], "y": [0.8]}, "targets": {EVIL: [1]}}
    boundary = charts.boundary_figure(grid, EVIL, "binary")
    assert_shown_as_text(boundary, {"text"})
    assert boundary.layout.title.text == SAFE


def test_empty_figures_quote_the_name_as_text() -> None:
    fig = cc.overlay_figure({}, {}, {}, EVIL, "loss", ("train",))
    assert_shown_as_text(fig, {"text"})  # the title and the "no loss logged for …" note


# ---------------------------------------------------------------- ui.compare_charts


def runs() -> list[SimpleNamespace]:
    config = {"tasks": [{"name": EVIL, "weight": 1.0}, {"name": "b", "weight": 0.5}],
              "weighting": {"method": "static"}, "model": {"architecture": "hard_sharing"}}
    summary = {"test": {EVIL: {"accuracy": 0.9}, "b": {"accuracy": 0.8}}}
    return [SimpleNamespace(id=f"run-000{i}", name=EVIL, status="finished", config=config,
                            summary=summary) for i in (1, 2)]


def test_compare_overlay_names_runs_and_tasks_as_text() -> None:
    rs = runs()
    labels, colors = cc.run_labels(rs), cc.run_colors([r.id for r in rs])
    frames = {r.id: metrics(EVIL) for r in rs}
    fig = cc.overlay_figure(frames, labels, colors, EVIL, "loss", ("train", "val"))
    assert_shown_as_text(fig, {"name", "text"})
    assert f"{SAFE} · 0001 · train" in {t.name for t in fig.data}
    assert labels["run-0001"] == f"{EVIL} · 0001"  # the page's own labels stay raw


def test_compare_bars_and_parcoords_name_runs_tasks_and_columns_as_text() -> None:
    rs = runs()
    table = cc.final_table(rs)
    bars = cc.bars_figure(table, "accuracy", cc.run_labels(rs), cc.run_colors([r.id for r in rs]))
    assert_shown_as_text(bars, {"name", "x"})
    par = cc.parcoords_figure(table, cc.run_tasks(rs))
    found = assert_shown_as_text(par, {"label"})
    assert "text" in found  # the colour bar's title: a metric column of the task
    assert par.data[0].dimensions[0].label == f"w {SAFE}"


# ---------------------------------------------------------------- ui.sweep_charts


def sweep_table(tasks: list[str]) -> pd.DataFrame:
    rows = []
    for i, (w, v) in enumerate([(0.2, 0.9), (0.5, 0.8), (0.8, 0.6)]):
        row: dict[str, Any] = {"run_id": f"r{i}", "name": EVIL, "method": "static",
                               "status": "finished"}
        for j, t in enumerate(tasks):
            row[f"w_{t}"] = w if j == 0 else (1 - w) / (len(tasks) - 1)
            row[f"val_{t}"] = v if j == 0 else 1 - v
            row[f"test_{t}"] = v
            row[f"valsd_{t}"] = float("nan")
        rows.append(row)
    rows.append({**rows[0], "run_id": "r9", "method": EVIL})
    table = pd.DataFrame(rows)
    table["on_front"] = [True, True, True, False]
    table["on_test_front"] = [True, False, False, False]
    table["chosen"] = [False, True, False, False]
    table.attrs.update(tasks=tasks, metrics=dict.fromkeys(tasks, "accuracy"), sweep_id="s1",
                       higher_is_better=dict.fromkeys(tasks, True))
    return table


def test_sweep_front_names_tasks_and_methods_as_text() -> None:
    table = sweep_table([EVIL, "b"])
    for split in ("val", "test"):
        fig = sc.front_figure(table, EVIL, "b", split=split)
        assert_shown_as_text(fig, {"name", "text"})  # the extra method, the hover and titles
        assert fig.layout.xaxis.title.text.startswith(f"{SAFE}: val accuracy")
        hover = fig.data[0].text[0]
        assert hover.startswith("<b>static</b><br>") and f"w {SAFE} = " in hover


def test_sweep_ternary_names_tasks_as_text() -> None:
    fig = sc.ternary_figure(sweep_table([EVIL, "b", "c"]), EVIL)
    assert_shown_as_text(fig, {"name", "text"})
    assert fig.layout.ternary.aaxis.title.text == f"w {SAFE}"
    bar = next(t.marker.colorbar.title.text for t in fig.data if t.marker.showscale)
    assert bar.startswith(f"{SAFE}<br>(")  # our line break stays one


# ---------------------------------------------------------------- vision and baselines


def test_dense_figure_titles_task_and_classes_as_text() -> None:
    mask = [[0, 1], [1, 0]]
    fig = vision_charts.dense_figure([mask], [mask], EVIL, "dense_classification",
                                     [EVIL, "road"])
    assert_shown_as_text(fig, {"text", "ticktext"})
    assert fig.layout.title.text.startswith(f"{SAFE}: segmentation masks")


def test_baseline_terms_name_tasks_as_text() -> None:
    comp = Comparison(rows=[TaskComparison(EVIL, "accuracy", True, 0.9, 0.8, 12.5, -12.5),
                            TaskComparison("b", "mse", False, 0.1, 0.2, -50.0, -50.0)],
                      delta_m=-31.25)
    fig = baselines_view.terms_figure(comp)
    assert_shown_as_text(fig, {"x"})
    assert list(fig.data[0].x) == [SAFE, "b"]


# ---------------------------------------------------------------- what plotly.js draws

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
DRAWN = """f => {
    Plotly.newPlot('g', f.data, f.layout);
    Plotly.Fx.hover('g', [{curveNumber: 0, pointNumber: 0}]);
    const text = sel => [...document.querySelectorAll('#g ' + sel)].map(e => e.textContent);
    return {links: [...document.querySelectorAll('#g a')].map(
                a => a.getAttribute('href') || a.getAttribute('xlink:href')),
            styled: [...document.querySelectorAll('#g tspan[style]')].map(
                t => t.getAttribute('style')),
            legend: text('.legendtext'), title: text('.gtitle'), ticks: text('.xtick text'),
            hover: text('.hovertext text.nums')};
}"""


@pytest.mark.browser
def test_plotly_js_draws_the_escaped_names_as_their_characters(browser) -> None:
    """In Chromium, with the plotly.js that plotly.py ships (Streamlit's bundle has the same
    tag, entity and template rules): legend, title, tick and hover show the name's own
    characters, and a placeholder in a hovertemplate built with it stays as typed."""
    rs = runs()
    bars = cc.bars_figure(cc.final_table(rs), "accuracy", cc.run_labels(rs),
                          cc.run_colors([r.id for r in rs]))
    page = browser.new_page()
    try:
        page.set_content('<div id="g" style="width:900px;height:500px"></div>')
        page.add_script_tag(path=str(PLOTLY_JS))
        for title, escaped in ((EVIL, False), (SAFE, True)):  # raw: the check sees markup
            fig = go.Figure(bars)
            fig.update_layout(title=title)
            fig.data[0].hovertemplate = f"{title} | %{{x}}: %{{y}}<extra></extra>"
            drawn = page.evaluate(DRAWN, json.loads(fig.to_json()))
            evil = [h for h in drawn["links"] if "evil.example" in h]
            if not escaped:
                assert evil and "font-size:99px" in drawn["styled"], drawn
                continue
            assert not evil and not drawn["styled"], drawn
            assert drawn["title"] == [EVIL]
            assert f"{EVIL} · 0001" in drawn["legend"]
            assert drawn["ticks"] == [EVIL, "b"]
            assert drawn["hover"] == [f"{EVIL} | {EVIL}: 0.9"], drawn["hover"]
    finally:
        page.close()
