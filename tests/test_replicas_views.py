"""What a stacked run shows: mean curves with a band, mean ± sd tables, the Replicas control."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from app_support import config_shown, form_widget
from test_app_train import _start, app, warm_calls  # noqa: F401

from mtl_core.config import parse_config
from ui import charts
from ui import config_form as form
from ui.live import latest_text


def frame(values: dict[int, list[float]], split: str = "train", task: str = "a",
          name: str = "loss") -> pd.DataFrame:
    """values: {replica: [value at step 1, 2, ...]}."""
    rows = [{"id": i, "step": step + 1, "epoch": 0.0, "split": split, "task": task,
             "name": name, "value": v, "time": 0.0, "replica": r}
            for i, (r, step, v) in enumerate((r, s, v) for r, vs in values.items()
                                             for s, v in enumerate(vs))]
    return pd.DataFrame(rows)


def test_series_is_the_mean_over_replicas_or_one_replica():
    df = frame({0: [1.0, 2.0], 1: [3.0, 6.0], 2: [5.0, 10.0]})
    x, y = charts.series(df, "train", "a", "loss")
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [3.0, 6.0]
    _, y1 = charts.series(df, "train", "a", "loss", replica=1)
    assert y1.tolist() == [3.0, 6.0] and charts.has_replicas(df)
    assert not charts.has_replicas(frame({0: [1.0, 2.0]}))


def band_traces(fig):
    return [t for t in fig.data if t.fill == "toself"]


def test_sd_band_and_range_band_edges():
    df = frame({0: [1.0, 2.0], 1: [2.0, 4.0], 2: [6.0, 12.0]})  # means 3 and 6
    sd = np.sqrt(7.0)  # of 1, 2, 6; of 2, 4, 12 it is twice that
    fig = charts.loss_figure(df, ["a"], ["train"], band="sd")
    (band,) = band_traces(fig)
    # the upper edge forward, then the lower edge backwards
    assert list(band.y) == pytest.approx([3 + sd, 6 + 2 * sd, 6 - 2 * sd, 3 - sd])
    fig = charts.loss_figure(df, ["a"], ["train"], band="range")
    (band,) = band_traces(fig)
    assert list(band.y) == pytest.approx([6.0, 12.0, 2.0, 1.0])
    mean = [t for t in fig.data if t.name == "a"][0]
    assert list(mean.y) == pytest.approx([3.0, 6.0])


def test_lines_band_draws_every_seed_and_none_draws_the_mean_only():
    df = frame({0: [1.0, 2.0], 1: [3.0, 6.0], 2: [5.0, 10.0]})
    fig = charts.loss_figure(df, ["a"], ["train"], band="lines")
    thin = [t for t in fig.data if "seed" in (t.name or "")]
    assert len(thin) == 3 and [list(t.y) for t in thin][2] == [5.0, 10.0]
    assert not band_traces(fig)
    fig = charts.loss_figure(df, ["a"], ["train"], band="none")
    assert len(fig.data) == 1 and list(fig.data[0].y) == [3.0, 6.0]


def test_one_seed_draws_no_band():
    fig = charts.loss_figure(frame({0: [1.0, 2.0]}), ["a"], ["train"], band="sd")
    assert not band_traces(fig) and len(fig.data) == 1


def test_latest_numbers_are_mean_and_sd_over_the_seeds():
    df = pd.concat([frame({0: [1.0, 2.0], 1: [3.0, 4.0]}),
                    frame({0: [0.5], 1: [0.7]}, split="val")], ignore_index=True)
    table = latest_text(df, ["a"])
    cells = table.loc["a"].tolist()
    assert "3 ± 1.4" in cells  # train loss: latest 2 and 4
    assert "0.6 ± 0.14" in cells  # val loss: 0.5 and 0.7
    one = latest_text(frame({0: [1.0, 2.0]}), ["a"])
    assert "2" in one.loc["a"].tolist()


def test_replicas_state_round_trip():
    state = form.state_from_config({"replicas": 5})
    assert state["cfg.replicas"] == 5
    assert parse_config(form.config_from_state(state)).replicas == 5


def test_the_train_page_has_a_replicas_control_that_refuses_too_many(app):  # noqa: F811
    at = app.run()
    form_widget(at, "number_input", "cfg.replicas").set_value(4).run()
    assert not at.exception and config_shown(at)["replicas"] == 4
    form_widget(at, "number_input", "cfg.replicas").set_value(40).run()
    assert _start(at).disabled
    messages = [e.value for e in at.error]
    assert any("replicas" in m and "32" in m for m in messages), messages


def test_seeds_figure_marks_each_seed_and_the_interval():
    from mtl_core.baselines import SeedSpread
    from ui.baselines_view import seeds_figure

    spread = SeedSpread([0, 1, 2], [-10.0, 10.0, -20.0])
    fig = seeds_figure(spread)
    dots, mean = fig.data
    assert list(dots.y) == [-10.0, 10.0, -20.0]
    low, high = spread.interval
    assert mean.y[0] == pytest.approx(-20 / 3)
    assert mean.error_y.array[0] == pytest.approx(high - spread.mean)
    assert mean.error_y.arrayminus[0] == pytest.approx(spread.mean - low)
    assert "2 of 3 seeds" in fig.layout.title.text


def test_compare_overlay_draws_a_band_per_stacked_run():
    from ui.compare_charts import overlay_figure

    stacked = frame({0: [1.0, 2.0], 1: [3.0, 4.0]}, split="val")
    single = frame({0: [2.0, 2.5]}, split="val")
    fig = overlay_figure({"s": stacked, "o": single}, {"s": "stacked", "o": "one"},
                         {"s": "#1f77b4", "o": "#ff7f0e"}, "a", "loss", ["val"])
    assert len(band_traces(fig)) == 1
    means = {t.name: list(t.y) for t in fig.data if t.fill != "toself"}
    assert means == {"stacked · val": [2.0, 3.0], "one · val": [2.0, 2.5]}


def test_predictions_page_picks_a_replica(isolated_dirs):
    from test_app_views import PREDICTIONS_PAGE, plotly_figures, run_page

    from mtl_core.config import ExperimentConfig
    from mtl_core.sink import replica_kind
    from mtl_core.store import RunStore

    store = RunStore(isolated_dirs)
    run_id = store.create_run(ExperimentConfig.model_validate(
        {"name": "seeds", "seed": 3, "replicas": 2, "data": {"suite": "synthetic_mmoe"},
         "tasks": [{"name": "task1"}]}), status="running")
    sink = store.sink(run_id)
    for r, pred in enumerate(([0.1, 0.9], [0.5, 0.6])):
        sink.snapshot(0, replica_kind("probe", r), {"tasks": {"task1": {
            "kind": "regression", "class_names": None, "input": "x"}}, "images": {},
            "targets": {"task1": [0.0, 1.0]}})
        sink.snapshot(10, replica_kind("scatter", r),
                      {"task1": {"true": [0.0, 1.0], "pred": pred}})
    store.set_status(run_id, "finished", summary={"test": {}})
    at = run_page(PREDICTIONS_PAGE, run_id)
    picker = at.selectbox(key=f"pred_replica_{run_id}")
    assert picker.options == ["seed 3 (replica 0)", "seed 4 (replica 1)"]
    assert plotly_figures(at)["pred_sc_task1"]["data"][0]["y"] == [0.1, 0.9]
    picker.set_value(1).run()
    assert plotly_figures(at)["pred_sc_task1"]["data"][0]["y"] == [0.5, 0.6]


def test_sweep_front_uses_the_means_with_error_bars(isolated_dirs):
    from mtl_core.config import ExperimentConfig
    from mtl_core.store import RunStore
    from mtl_core.sweep import sweep_table
    from ui.sweep_charts import front_figure

    store = RunStore(isolated_dirs)
    for w, a_vals, b_vals in [(0.25, (0.1, 0.3), (0.5, 0.5)), (0.75, (0.4, 0.4), (0.2, 0.6))]:
        cfg = ExperimentConfig.model_validate(
            {"name": f"sweep w={w}/{1 - w} #abc123", "replicas": 2,
             "data": {"suite": "synthetic_mmoe"},
             "tasks": [{"name": "task1", "weight": w}, {"name": "task2", "weight": 1 - w}]})
        run_id = store.create_run(cfg, status="running")
        entries = [{"seed": s, "val": {"task1": {"mse": a}, "task2": {"mse": b}},
                    "test": {}, "best_val": {}}
                   for s, a, b in zip((0, 1), a_vals, b_vals, strict=True)]
        mean = {"task1": {"mse": sum(a_vals) / 2}, "task2": {"mse": sum(b_vals) / 2}}
        store.set_status(run_id, "finished", summary={"val": mean, "test": mean,
                                                      "best_val": {}, "replicas": entries})
    table = sweep_table(store, "abc123")
    assert table["val_task1"].tolist() == pytest.approx([0.2, 0.4])  # the means
    assert table["valsd_task1"].tolist() == pytest.approx([np.sqrt(0.02), 0.0])
    assert table["valsd_task2"].tolist() == pytest.approx([0.0, np.sqrt(0.08)])
    fig = front_figure(table, "task1", "task2")
    grid = next(t for t in fig.data if t.name == "weight grid")
    assert list(grid.error_x.array) == pytest.approx([np.sqrt(0.02), 0.0])
    assert list(grid.error_y.array) == pytest.approx([0.0, np.sqrt(0.08)])


def test_live_panel_of_a_stacked_run_draws_bands_and_mean_sd(isolated_dirs):
    import time

    from app_support import latest_numbers
    from test_app_views import live_app, plotly_figures

    from mtl_core.config import ExperimentConfig
    from mtl_core.store import RunStore

    store = RunStore(isolated_dirs)
    run_id = store.create_run(ExperimentConfig.model_validate(
        {"name": "seeds", "replicas": 3, "data": {"suite": "synthetic_mmoe"},
         "tasks": [{"name": "task1"}]}), status="running")
    sink = store.sink(run_id)
    sink.metrics([(step, step / 10, "train", task, "loss", (r + 1.0) / step, r)
                  for step in range(1, 11) for r in range(3) for task in ("task1", "total")])
    sink.progress(10, 20, 1.0)
    store.set_status(run_id, "running", heartbeat_at=time.time())
    at = live_app(run_id)
    assert at.get("button_group") or at.session_state["live_band"] == "sd"
    loss = plotly_figures(at)["live_loss"]
    bands = [t for t in loss["data"] if t.get("fill") == "toself"]
    assert len(bands) == 2  # task1 and total
    mean = next(t for t in loss["data"] if t["name"] == "task1 · train")
    assert mean["y"][0] == pytest.approx(2.0)  # (1 + 2 + 3) / 3 at step 1, before smoothing
    latest = latest_numbers(at)
    assert latest.loc["task1", "train loss"] == "0.2 ± 0.1"
    at.session_state["live_band"] = "lines"
    at.run()
    loss = plotly_figures(at)["live_loss"]
    assert sum("seed" in (t.get("name") or "") for t in loss["data"]) == 6
