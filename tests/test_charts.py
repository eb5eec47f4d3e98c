"""Pure chart and table functions: downsampling, EMA, figure traces and values."""
from __future__ import annotations

import base64
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ui import charts
from ui.run_table import format_duration, latest_table, metrics_csv, run_json, runs_frame

COLUMNS = ["id", "step", "epoch", "split", "task", "name", "value"]


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Long-format metrics frame as the store returns it (id = write order)."""
    return pd.DataFrame([(i + 1, *r) for i, r in enumerate(rows)], columns=COLUMNS)


def legend_traces(fig) -> list:
    """Traces a user sees in the legend (the faint raw traces under smoothing are not)."""
    return [t for t in fig.data if t.showlegend is not False]


# ---------------------------------------------------------------- downsample / ema


def test_downsample_keeps_short_series_unchanged():
    x, y = charts.downsample([1, 2, 3], [5.0, 6.0, 7.0])
    assert x.tolist() == [1, 2, 3] and y.tolist() == [5.0, 6.0, 7.0]


def test_downsample_caps_points_and_keeps_endpoints_and_extremes():
    n = 100_000
    x = np.arange(n)
    y = np.sin(x / 500.0)
    y[12_345] = 50.0  # a spike and a dip in the middle must survive
    y[67_890] = -50.0
    dx, dy = charts.downsample(x, y, 1500)
    assert len(dx) <= 1500
    assert len(dx) > 1000  # it uses its budget, not a handful of points
    assert dx[0] == 0 and dx[-1] == n - 1
    assert dy[0] == y[0] and dy[-1] == y[-1]
    assert 50.0 in dy and -50.0 in dy
    assert np.all(np.diff(dx) > 0)  # still in x order
    # every kept point is a real point of the series
    assert np.array_equal(dy, y[dx.astype(int)])


def test_downsample_drops_non_finite_values():
    dx, dy = charts.downsample([0, 1, 2, 3], [1.0, math.nan, math.inf, 4.0])
    assert dx.tolist() == [0, 3] and dy.tolist() == [1.0, 4.0]


def test_ema_matches_tensorboard_debiased_values_by_hand():
    w = 0.5
    out = charts.ema([1.0, 3.0, 2.0], w)
    # s1 = 0.5*1 = 0.5 -> /0.5 = 1; s2 = 0.25+1.5 = 1.75 -> /0.75; s3 = 0.875+1 -> /0.875
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(1.75 / 0.75)
    assert out[2] == pytest.approx(1.875 / 0.875)


def test_ema_zero_weight_is_identity_and_constant_stays_constant():
    assert charts.ema([1.0, 2.0], 0.0).tolist() == [1.0, 2.0]
    assert charts.ema([3.0] * 10, 0.99) == pytest.approx([3.0] * 10)


def test_ema_skips_non_finite_values():
    out = charts.ema([math.nan, 2.0, math.inf, 4.0], 0.5)
    assert math.isnan(out[0])
    assert out[1] == pytest.approx(2.0)
    assert out[2] == pytest.approx(2.0)  # inf does not enter the average
    assert out[3] == pytest.approx((0.5 * 1.0 + 2.0) / 0.75)


# ---------------------------------------------------------------- curves


def two_task_frame(n: int = 50) -> pd.DataFrame:
    rows = []
    for s in range(1, n + 1):
        rows += [(s, s / 10, "train", "left", "loss", 2.0 / s),
                 (s, s / 10, "train", "right", "loss", 1.0 / s),
                 (s, s / 10, "train", "total", "loss", 3.0 / s),
                 (s, s / 10, "train", "left", "weight", 1.0),
                 (s, s / 10, "train", "right", "weight", 0.5),
                 (s, 0.0, "diag", "left", "grad_norm", 10.0 / s),
                 (s, 0.0, "diag", "right", "grad_norm", 5.0 / s),
                 (s, 0.0, "diag", "left|right", "cosine", -0.5 if s == n else 0.2)]
        if s % 10 == 0:
            rows += [(s, s / 10, "val", "left", "loss", 2.5 / s),
                     (s, s / 10, "val", "right", "loss", 1.5 / s),
                     (s, s / 10, "val", "left", "accuracy", s / 100),
                     (s, s / 10, "val", "right", "r2", 0.1)]
    return frame(rows)


def test_loss_figure_has_one_trace_per_task_and_split_with_the_data():
    df = two_task_frame()
    fig = charts.loss_figure(df, ["left", "right"], ("train", "val"))
    names = [t.name for t in fig.data]
    assert names == ["left · train", "right · train", "left · val", "right · val"]
    left_train = fig.data[0]
    assert list(left_train.x) == list(range(1, 51))
    assert left_train.y[0] == pytest.approx(2.0) and left_train.y[-1] == pytest.approx(2.0 / 50)
    left_val = fig.data[2]
    assert list(left_val.x) == [10, 20, 30, 40, 50]
    assert left_val.line.dash == "dash"
    assert fig.layout.uirevision  # zoom survives a refresh


def test_loss_figure_single_split_hidden_task_total_and_log_scale():
    df = two_task_frame()
    fig = charts.loss_figure(df, ["right", "total"], "train", log_y=True)
    assert [t.name for t in fig.data] == ["right", "total"]
    assert fig.layout.yaxis.type == "log"
    assert fig.data[1].y[0] == pytest.approx(3.0)


def test_loss_figure_smoothing_adds_faint_raw_and_smooths_only_dense_splits():
    df = two_task_frame()
    fig = charts.loss_figure(df, ["left"], ("train", "val"), smoothing=0.9)
    shown = legend_traces(fig)
    assert [t.name for t in shown] == ["left · train", "left · val"]
    raw = [t for t in fig.data if t.showlegend is False]
    assert len(raw) == 1 and raw[0].opacity < 0.5
    _, y = charts.series(df, "train", "left", "loss")
    assert np.allclose(shown[0].y, charts.ema(y, 0.9))
    assert np.allclose(raw[0].y, y)
    assert shown[1].y[0] == pytest.approx(2.5 / 10)  # val points are not smoothed


def test_loss_figure_downsamples_long_runs():
    n = 20_000
    df = frame([(s, 0.0, "train", "a", "loss", 1.0 / s) for s in range(1, n + 1)])
    fig = charts.loss_figure(df, ["a"], "train", smoothing=0.5)
    for trace in fig.data:
        assert len(trace.x) <= 1500
        assert trace.x[0] == 1 and trace.x[-1] == n


def test_empty_frame_gives_a_message_not_an_error():
    df = frame([])
    fig = charts.loss_figure(df, ["a"], "train")
    assert len(fig.data) == 0
    assert "no loss" in fig.layout.annotations[0].text


def test_metric_weights_and_grad_norm_figures():
    df = two_task_frame()
    acc = charts.metric_figure(df, ["left", "right"], "accuracy")
    assert [t.name for t in acc.data] == ["left"]  # right has no accuracy; no test split yet
    assert list(acc.data[0].y) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert charts.metric_names(df) == ["accuracy", "r2"]
    final = pd.concat([df, frame([(50, 5.0, "test", "left", "accuracy", 0.45)])])
    both = charts.metric_figure(final, ["left"], "accuracy")
    assert [t.name for t in both.data] == ["left · val", "left · test"]
    assert list(both.data[1].y) == [0.45] and both.data[1].line.dash == "dot"
    w = charts.weights_figure(df, ["left", "right"])
    assert [t.name for t in w.data] == ["left", "right"]
    assert set(w.data[1].y) == {0.5}
    g = charts.grad_norm_figure(df, ["left"], log_y=True)
    assert len(g.data) == 1 and g.data[0].y[0] == pytest.approx(10.0)
    assert g.layout.yaxis.type == "log"
    # the same task keeps the same colour across charts
    colors = charts.task_colors(["left", "right", "total"])
    assert w.data[0].line.color == colors["left"] and colors["total"] == charts.TOTAL_COLOR


def test_cosine_figure_and_heatmap_values():
    df = two_task_frame()
    fig = charts.cosine_figure(df)
    assert [t.name for t in fig.data] == ["left|right"]
    assert tuple(fig.layout.yaxis.range) == (-1.05, 1.05)
    hm = charts.cosine_heatmap(df)
    z = np.asarray(hm.data[0].z, dtype=float)
    assert z.tolist() == [[1.0, -0.5], [-0.5, 1.0]]  # the latest step (50), symmetric
    assert list(hm.data[0].x) == ["left", "right"]
    assert "step 50" in hm.layout.title.text
    _, earlier, at = charts.cosine_matrix(df, ["left", "right"], step=49)
    assert at == 49 and earlier[0, 1] == pytest.approx(0.2)


def test_cosine_heatmap_three_tasks_fills_each_pair():
    rows = [(5, 0.0, "diag", "a|b", "cosine", 0.1), (5, 0.0, "diag", "a|c", "cosine", -0.2),
            (5, 0.0, "diag", "b|c", "cosine", 0.3)]
    names, mat, _ = charts.cosine_matrix(frame(rows))
    assert names == ["a", "b", "c"]
    assert mat[0, 2] == mat[2, 0] == pytest.approx(-0.2) and mat[1, 2] == pytest.approx(0.3)


def test_update_norm_figure():
    df = frame([(s, 0.0, "diag", "total", "update_norm", float(s)) for s in (1, 2, 3)])
    fig = charts.update_norm_figure(df)
    assert list(fig.data[0].y) == [1.0, 2.0, 3.0]


# ---------------------------------------------------------------- architecture state


def test_inspect_figures_for_mixing_gates_and_masks():
    figs = dict(charts.inspect_figures(
        {"mixing": [[[0.9, 0.1], [0.2, 0.8]], [[1, 0], [0, 1]]],
         "gates": {"a": [0.7, 0.3], "b": [0.4, 0.6]}}, ["a", "b"]))
    assert set(figs) == {"mixing0", "mixing1", "gates"}
    assert np.asarray(figs["mixing0"].data[0].z).tolist() == [[0.9, 0.1], [0.2, 0.8]]
    assert list(figs["mixing0"].data[0].y) == ["a", "b"]
    bars = figs["gates"].data
    assert [b.name for b in bars] == ["a", "b"] and list(bars[1].y) == [0.4, 0.6]
    assert list(bars[0].x) == ["expert 0", "expert 1"]
    masks = dict(charts.inspect_figures({"masks": {"a": [0.9, 0.5, 0.2]}}))
    assert list(masks["masks"].data[0].y) == [0.9, 0.5, 0.2]


# ---------------------------------------------------------------- predictions


def test_confusion_figure_values_and_accuracy():
    fig = charts.confusion_figure([[8, 2], [1, 9]], ["cat", "dog"], "pet")
    assert np.asarray(fig.data[0].z).tolist() == [[8, 2], [1, 9]]
    assert list(fig.data[0].x) == ["cat", "dog"]
    assert "85.0%" in fig.layout.title.text
    norm = charts.confusion_figure([[8, 2], [0, 0]], normalize=True)
    assert np.asarray(norm.data[0].z).tolist() == [[0.8, 0.2], [0.0, 0.0]]


def test_scatter_figure_has_points_diagonal_and_r2():
    fig = charts.scatter_figure([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "ink")
    assert list(fig.data[0].x) == [1.0, 2.0, 3.0] and list(fig.data[0].y) == [1.0, 2.0, 3.0]
    assert list(fig.data[1].x) == [1.0, 3.0]  # the y = x line over the range
    assert "R² 1.000" in fig.layout.title.text


def grid_payload() -> dict:
    xs, ys = [0.0, 1.0, 2.0], [0.0, 1.0]
    return {"xs": xs, "ys": ys, "points": {"x": [0.5, 1.5], "y": [0.2, 0.8]},
            "targets": {"circle": [0, 1], "height": [0.3, 2.5], "quad": [0, 2]},
            "values": {"circle": [[0.1, 0.5, 0.9], [0.2, 0.6, 0.95]],
                       "height": [[0.0, 1.0, 2.0], [0.5, 1.5, 2.0]],
                       "quad": [[0, 1, 2], [0, 1, 1]]}}


def test_boundary_figure_binary_heatmap_contour_and_points():
    fig = charts.boundary_figure(grid_payload(), "circle", "binary")
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (2, 3)  # rows follow ys, columns xs
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert any(t.type == "contour" for t in fig.data)
    pts = fig.data[-1]
    assert list(pts.x) == [0.5, 1.5] and list(pts.marker.color) == [0, 1]


def test_boundary_figure_regression_and_classification_scales():
    reg = charts.boundary_figure(grid_payload(), "height", "regression")
    assert reg.data[0].zmax == pytest.approx(2.5)  # the targets' range is included
    assert not any(t.type == "contour" for t in reg.data)
    cls = charts.boundary_figure(grid_payload(), "quad", "classification")
    assert (cls.data[0].zmin, cls.data[0].zmax) == (-0.5, 2.5)  # 3 class bands


def test_boundary_figure_transposes_x_major_values():
    grid = grid_payload()
    grid["values"]["circle"] = np.asarray(grid["values"]["circle"]).T.tolist()  # (xs, ys)
    fig = charts.boundary_figure(grid, "circle", "binary")
    assert np.asarray(fig.data[0].z).tolist() == grid_payload()["values"]["circle"]


def trainer_probe() -> dict:
    """The probe payload in the trainer's shape (two 2x2 uint8 images)."""
    return {"tasks": {"digit": {"kind": "classification", "class_names": None, "input": "x"},
                      "odd": {"kind": "binary", "class_names": ["even", "odd"], "input": "x"},
                      "ink": {"kind": "regression", "class_names": None, "input": "x"}},
            "images": {"x": [[[0, 255], [255, 0]], [[10, 20], [30, 40]]]},
            "targets": {"digit": [3, 7], "odd": [1.0, 1.0], "ink": [0.5, 0.2]}}


def test_probe_rows_mark_wrong_predictions():
    preds = {"outputs": {"digit": [3, 1], "odd": [0.9, 0.2], "ink": [0.4, 0.3]}}
    rows = charts.probe_rows(trainer_probe(), preds)
    assert len(rows) == 2
    first, second = rows[0]["tasks"], rows[1]["tasks"]
    assert first[0] == ("digit", "3", "3", True)
    assert first[1] == ("odd", "odd (p 0.90)", "odd", True)
    assert first[2] == ("ink", "0.40", "0.50", None)  # regression has no right/wrong
    assert second[0][3] is False and second[1][3] is False


def test_image_grid_html_has_images_and_marks_wrong_ones():
    preds = {"outputs": {"digit": [3, 1], "odd": [0.9, 0.9], "ink": [0.4, 0.3]}}
    page = charts.image_grid_html(trainer_probe(), preds)
    assert page.count("<img") == 2
    assert page.count('class="mtl-card"') == 2
    assert page.count("mtl-wrong") == 1  # digit of the second image
    assert page.count("#cf222e") >= 2  # red text and the red card border
    src = charts.image_src([[0, 255], [255, 0]])
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert charts.image_src("abc") == "data:image/png;base64,abc"


def test_probe_tasks_accepts_the_list_form_of_the_contract():
    probe = {"task_names": ["a", "b"], "kinds": ["binary", "regression"],
             "targets": {"a": [1], "b": [2.0]}}
    info = charts.probe_tasks(probe)
    assert info["a"]["kind"] == "binary" and info["b"]["kind"] == "regression"
    assert not charts.has_images(probe)


# ---------------------------------------------------------------- tables


def fake_run(**kw) -> SimpleNamespace:
    base = dict(id="r1", name="demo", status="finished", config={}, suite="toy_2d",
                architecture="hard_sharing", method="static", step=10, total_steps=10,
                created_at=0.0, started_at=0.0, duration=125.0, summary={})
    base.update(kw)
    return SimpleNamespace(**base)


def test_runs_frame_columns_metrics_and_duration():
    runs = [fake_run(summary={"test": {"a": {"loss": 0.3, "accuracy": 0.9},
                                       "b": {"mse": 0.2, "r2": 0.7}}}),
            fake_run(id="r2", name="live", status="running", step=5, duration=None,
                     summary={})]
    df = runs_frame(runs)
    assert list(df["id"]) == ["r1", "r2"]
    assert df.loc[0, "a · accuracy"] == 0.9 and df.loc[0, "b · r2"] == 0.7
    assert math.isnan(df.loc[1, "a · accuracy"])
    assert df.loc[0, "duration"] == "2m 05s"
    assert df.loc[1, "progress"] == 0.5 and "running" in df.loc[1, "status"]
    assert format_duration(3725) == "1h 02m" and format_duration(None) == "–"


def test_latest_table_takes_last_values():
    df = two_task_frame()
    table = latest_table(df, ["left", "right"])
    assert table.loc["left", "train loss"] == pytest.approx(2.0 / 50)
    assert table.loc["left", "val accuracy"] == pytest.approx(0.5)
    assert table.loc["right", "weight"] == 0.5
    assert table.loc["total", "train loss"] == pytest.approx(3.0 / 50)


def test_exports_contain_every_row():
    df = two_task_frame(10)
    csv = metrics_csv(df).decode().splitlines()
    assert csv[0] == "step,epoch,split,task,name,value"
    assert len(csv) == len(df) + 1
    import json

    doc = json.loads(run_json(fake_run(value=math.nan), df))
    assert len(doc["metrics"]) == len(df) and doc["run"]["value"] is None
