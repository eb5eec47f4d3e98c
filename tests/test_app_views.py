"""AppTest views: the runs and predictions pages and the live panel, on hand-made runs.

Every run here is written through the store's own API (create_run, sink(...).metrics /
snapshot / progress, set_status), one per suite kind: image, vector classification,
regression and a 2-D grid suite. Nothing trains.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest
from app_support import latest_numbers, open_at_run, plotly_figures
from streamlit.testing.v1 import AppTest

from mtl_core.config import DataConfig, ExperimentConfig, ModelConfig, TaskConfig, WeightingConfig
from mtl_core.store import RunStore
from ui.live import RUN_EVERY_KEY, markdown_table
from ui.text import WORD_JOINER

ROOT = Path(__file__).resolve().parents[1]
RUNS_PAGE = str(ROOT / "pages" / "runs.py")
PREDICTIONS_PAGE = str(ROOT / "pages" / "predictions.py")
LIVE_SCRIPT = """
from ui.live import live_panel
from ui.state import current_run_id, get_store
live_panel(get_store(), current_run_id())
"""
TIMEOUT = 30  # the first run of a page imports plotly and pandas
TEACHER = {"_identity.teacher": True}  # a session that has unlocked the teacher's rights


# ---------------------------------------------------------------- hand-made runs


def make_run(store: RunStore, name: str, suite: str, tasks: dict[str, str], *,
             architecture: str = "hard_sharing", method: str = "static",
             status: str = "finished", evals: int = 2) -> str:
    """A run with train/val/diag metrics and per-eval snapshots for `tasks` ({name: kind})."""
    cfg = ExperimentConfig(name=name, data=DataConfig(suite=suite),
                           tasks=[TaskConfig(name=t) for t in tasks],
                           model=ModelConfig(architecture=architecture),
                           weighting=WeightingConfig(method=method))
    run_id = store.create_run(cfg, status="running")
    sink = store.sink(run_id)
    names = list(tasks)
    rows = []
    for step in range(1, 41):
        rows.append((step, step / 20, "train", "total", "loss", 3.0 / step))
        for i, task in enumerate(names):
            rows += [(step, step / 20, "train", task, "loss", (i + 1.0) / step),
                     (step, step / 20, "train", task, "weight", 1.0),
                     (step, 0.0, "diag", task, "grad_norm", 5.0 / step)]
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                rows.append((step, 0.0, "diag", f"{names[i]}|{names[j]}", "cosine", 0.3))
    sink.metrics(rows)
    probe = {"tasks": {t: {"kind": k, "class_names": None, "input": "x"}
                       for t, k in tasks.items()},
             "images": {"x": [[[0, 255], [255, 0]]] * 4} if suite == "mnist_attributes" else {},
             "targets": {t: [1, 0, 1, 0] if k != "regression" else [0.1, 0.2, 0.3, 0.4]
                         for t, k in tasks.items()}}
    sink.snapshot(0, "probe", probe)
    for e in range(1, evals + 1):
        step = 20 * e
        val = []
        for task, kind in tasks.items():
            val.append((step, float(e), "val", task, "loss", 1.0 / e))
            if kind == "regression":
                val += [(step, float(e), "val", task, "mse", 0.5 / e),
                        (step, float(e), "val", task, "r2", 0.4 * e)]
            else:
                val.append((step, float(e), "val", task, "accuracy", 0.4 * e))
        sink.metrics(val)
        outputs = {t: ([1, 1, 1, 1] if k == "classification" else [0.9, 0.2, 0.7, 0.1]
                       if k == "binary" else [0.1, 0.25, 0.3, 0.5]) for t, k in tasks.items()}
        sink.snapshot(step, "predictions", {"outputs": outputs})
        confusion = {t: [[5, e], [1, 6]] for t, k in tasks.items() if k != "regression"}
        scatter = {t: {"true": [0.0, 1.0, 2.0], "pred": [0.1, 0.9, 2.2]}
                   for t, k in tasks.items() if k == "regression"}
        if confusion:
            sink.snapshot(step, "confusion", confusion)
        if scatter:
            sink.snapshot(step, "scatter", scatter)
        if suite == "toy_2d":
            sink.snapshot(step, "grid", {
                "xs": [0.0, 1.0, 2.0], "ys": [0.0, 1.0],
                "points": {"x": [0.5, 1.5], "y": [0.5, 0.5]},
                "targets": {t: [0, 1] for t in tasks},
                "values": {t: [[0.1, 0.5, 0.9], [0.2, 0.6, 0.8]] for t in tasks}})
        if architecture == "mmoe":
            sink.snapshot(step, "inspect", {"gates": {t: [0.6, 0.4] for t in tasks}})
    sink.progress(40 if status != "running" else 25, 40, 2.0 if status != "running" else 1.25)
    if status != "running":
        summary = {"test": {t: ({"loss": 0.2, "r2": 0.77} if k == "regression"
                                else {"loss": 0.3, "accuracy": 0.91})
                            for t, k in tasks.items()}}
        store.set_status(run_id, status, summary=summary)
    else:
        store.set_status(run_id, "running", heartbeat_at=time.time())
    return run_id


SUITES = {
    "image": ("mnist_attributes", {"digit": "classification", "odd": "binary",
                                   "ink": "regression"}),
    "vector": ("synthetic_tabular", {"a": "classification", "b": "binary"}),
    "regression": ("synthetic_mmoe", {"t1": "regression", "t2": "regression"}),
    "grid": ("toy_2d", {"circle": "binary", "xor": "binary"}),
}



@pytest.fixture
def runs(store: RunStore) -> dict[str, str]:
    return {kind: make_run(store, f"{kind}-run", suite, tasks)
            for kind, (suite, tasks) in SUITES.items()}


def run_page(path: str, run_id: str | None = None, **state) -> AppTest:
    return open_at_run(AppTest.from_file(path, default_timeout=TIMEOUT), run_id, state)


# ---------------------------------------------------------------- empty store


def test_pages_render_with_an_empty_store():
    at = run_page(RUNS_PAGE)
    assert any("No runs yet" in i.value for i in at.info)
    at = run_page(PREDICTIONS_PAGE)
    assert any("No runs yet" in i.value for i in at.info)


# ---------------------------------------------------------------- runs page


def test_runs_table_lists_every_run_with_status_and_metrics(runs):
    at = run_page(RUNS_PAGE)
    table = at.dataframe[0].value
    assert set(table["id"]) == set(runs.values())
    row = table.set_index("id").loc[runs["image"]]
    assert row["name"] == "image-run" and row["suite"] == "mnist_attributes"
    assert "finished" in row["status"]
    assert row["digit · accuracy"] == pytest.approx(0.91)
    assert row["ink · r2"] == pytest.approx(0.77)
    assert row["architecture"] == "hard_sharing" and row["method"] == "static"


def test_runs_page_opens_the_run_from_the_url_and_filters(runs):
    at = run_page(RUNS_PAGE, runs["grid"])
    assert at.selectbox(key="runs_target").value == runs["grid"]
    at.text_input(key="runs_filter").set_value("synthetic_mmoe").run()
    assert list(at.dataframe[0].value["id"]) == [runs["regression"]]


def test_delete_asks_for_confirmation_then_removes(store, runs):
    victim = runs["vector"]
    at = run_page(RUNS_PAGE, victim, **TEACHER)  # the runs here are the operator's
    at.button(key="runs_delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert victim in {r.id for r in store.list_runs()}  # nothing deleted yet
    at.button(key="runs_delete_no").click().run()
    assert not at.warning and victim in {r.id for r in store.list_runs()}

    at.button(key="runs_delete").click().run()
    at.button(key="runs_delete_yes").click().run()
    assert not at.exception
    assert victim not in {r.id for r in store.list_runs()}
    assert victim not in set(at.dataframe[0].value["id"])
    assert not (store.runs_dir / victim).exists()


def test_live_run_can_be_stopped_not_deleted(store):
    rid = make_run(store, "live", "toy_2d", {"circle": "binary"}, status="running")
    at = run_page(RUNS_PAGE, rid, **TEACHER)
    assert at.button(key="runs_delete").disabled
    at.button(key="runs_stop").click().run()
    assert store.pending_controls(rid) == ["stop"]


def test_open_makes_it_the_current_run(runs):
    at = run_page(RUNS_PAGE, runs["image"])
    at.button(key="runs_open").click().run()
    assert not at.exception
    assert at.session_state["run_id"] == runs["image"]


# ---------------------------------------------------------------- predictions page


def test_predictions_image_suite_grid_confusion_and_scatter(runs):
    at = run_page(PREDICTIONS_PAGE, runs["image"])
    html = at.get("html")[0].value
    assert html.count("<img") == 4
    assert "mtl-wrong" in html  # digit predicted 1 where the true label is 0
    figs = plotly_figures(at)
    assert set(figs) == {"pred_cm_digit", "pred_cm_odd", "pred_sc_ink"}
    assert figs["pred_cm_digit"]["data"][0]["z"] == [[5, 2], [1, 6]]  # newest eval (e=2)
    assert "step **40**" in " ".join(c.value for c in at.caption)


def test_predictions_slider_goes_back_to_an_earlier_evaluation(runs):
    at = run_page(PREDICTIONS_PAGE, runs["image"])
    slider = at.select_slider(key=f"pred_step_{runs['image']}")
    assert slider.options == ["20", "40"] and slider.value == 40
    slider.set_value(20).run()
    figs = plotly_figures(at)
    assert figs["pred_cm_digit"]["data"][0]["z"] == [[5, 1], [1, 6]]
    assert "step **20**" in " ".join(c.value for c in at.caption)


def test_predictions_vector_classification(runs):
    at = run_page(PREDICTIONS_PAGE, runs["vector"])
    assert not at.get("html")
    figs = plotly_figures(at)
    assert set(figs) == {"pred_cm_a", "pred_cm_b"}
    probe = at.dataframe[0].value  # the only table on the page
    assert list(probe["a true"]) == ["1", "0", "1", "0"]
    assert probe["a predicted"].iloc[1] == "1 ✗"


def test_predictions_regression_scatter(runs):
    at = run_page(PREDICTIONS_PAGE, runs["regression"])
    figs = plotly_figures(at)
    assert set(figs) == {"pred_sc_t1", "pred_sc_t2"}
    assert figs["pred_sc_t1"]["data"][0]["y"] == [0.1, 0.9, 2.2]


def test_predictions_2d_decision_boundaries(runs):
    at = run_page(PREDICTIONS_PAGE, runs["grid"])
    figs = plotly_figures(at)
    assert {"pred_grid_circle", "pred_grid_xor"} <= set(figs)
    heat = figs["pred_grid_circle"]["data"][0]
    assert heat["type"] == "heatmap" and heat["z"] == [[0.1, 0.5, 0.9], [0.2, 0.6, 0.8]]
    points = figs["pred_grid_circle"]["data"][-1]
    assert points["x"] == [0.5, 1.5] and points["marker"]["color"] == [0, 1]


def test_predictions_of_a_run_with_no_evaluation_yet(store):
    cfg = ExperimentConfig(name="waiting", data=DataConfig(suite="toy_2d"))
    rid = store.create_run(cfg)  # queued
    at = run_page(PREDICTIONS_PAGE, rid)
    assert any("first predictions" in i.value for i in at.info)


# ---------------------------------------------------------------- live panel


def live_app(run_id: str, **state) -> AppTest:
    return open_at_run(AppTest.from_string(LIVE_SCRIPT, default_timeout=TIMEOUT), run_id, state)


def test_live_panel_polls_a_live_run(store):
    rid = make_run(store, "live", "toy_2d", {"circle": "binary", "xor": "binary"},
                   status="running")
    at = live_app(rid)
    assert at.session_state[RUN_EVERY_KEY] == 1.0
    assert any("Running" in i.value for i in at.info)
    progress = at.get("progress")[0]
    assert progress.value == 62  # percent: 25 of 40 steps
    assert "step 25 / 40" in progress.proto.text and "ETA" in progress.proto.text
    loss = plotly_figures(at)["live_loss"]
    shown = [t["name"] for t in loss["data"] if t.get("showlegend") is not False]
    assert shown == ["circle · train", "xor · train", "total · train",
                     "circle · val", "xor · val"]


def test_live_panel_of_a_finished_run_does_not_poll(runs):
    at = live_app(runs["regression"])
    assert at.session_state[RUN_EVERY_KEY] is None
    assert any("Finished" in s.value for s in at.success)
    latest = latest_numbers(at)
    assert latest.loc["t1", "val R²"] == "0.8" and latest.loc["total", "val R²"] == "–"
    assert not at.dataframe  # plain Markdown: no data grid for the browser to build


def test_latest_numbers_table_keeps_a_pipe_in_a_cell_inside_its_cell():
    table = pd.DataFrame({"train loss": ["0.5", "a|b"]},
                         index=pd.Index(["t1", "t2"], name="task"))
    assert markdown_table(table).splitlines() == [
        "| task | train loss |", "|---|---|", "| t1 | 0.5 |", "| t2 | a\\|b |"]


def test_latest_numbers_table_shows_markdown_in_a_task_name_as_text():
    """A task name is a CSV header a student chose: it must not become a link, an image,
    LaTeX or a Streamlit directive in everyone's live panel."""
    name = "![x](http://e.test/a.png) [y](javascript:z) $x$ :red[r] *b* `c` <i>"
    table = pd.DataFrame({"train loss": ["0.5"]}, index=pd.Index([name], name="task"))
    row = markdown_table(table).splitlines()[2]
    j = WORD_JOINER  # after each colon: Streamlit would match `:red` or `http:` without it
    assert row == (f"| \\!\\[x\\]\\(http\\:{j}//e.test/a.png\\) \\[y\\]\\(javascript\\:{j}z\\) "
                   f"\\$x\\$ \\:{j}red\\[r\\] \\*b\\* \\`c\\` \\<i\\> | 0.5 |")


def test_live_panel_widgets_shape_the_charts(runs):
    rid = runs["grid"]
    at = live_app(rid)
    at.multiselect(key=f"live_tasks_{rid}").set_value(["xor"])
    at.toggle(key="live_log").set_value(True)
    at.slider(key="live_smooth").set_value(0.0)
    at.toggle(key="live_total").set_value(False).run()
    loss = plotly_figures(at)["live_loss"]
    assert [t["name"] for t in loss["data"]] == ["xor · train", "xor · val"]
    assert loss["layout"]["yaxis"]["type"] == "log"


def test_live_panel_weights_and_conflict_tab(store):
    rid = make_run(store, "mmoe", "toy_2d", {"circle": "binary", "xor": "binary"},
                   architecture="mmoe")
    at = live_app(rid, live_tab="Weights & conflict")
    figs = plotly_figures(at)
    assert {"live_weights", "live_grad_norm", "live_cosine", "live_cosine_heatmap"} <= set(figs)
    assert figs["live_cosine_heatmap"]["data"][0]["z"] == [[1.0, 0.3], [0.3, 1.0]]
    at.session_state["live_tab"] = "Architecture state"
    at.run()
    gates = plotly_figures(at)["live_inspect_gates"]
    assert [b["name"] for b in gates["data"]] == ["circle", "xor"]


def test_live_panel_of_a_run_without_points_says_when_they_come_and_draws_no_chart(store):
    # No empty chart for the browser to draw and throw away while the run starts (the Train
    # page has the browser load the charts' code beforehand: ui.chart_warmup).
    rid = store.create_run(ExperimentConfig(name="s", data=DataConfig(suite="toy_2d")))
    at = live_app(rid)
    assert not plotly_figures(at)
    assert any("No metrics yet" in c.value and "every 20 steps" in c.value for c in at.caption)
    assert at.session_state[RUN_EVERY_KEY] == 1.0


@pytest.mark.parametrize("status,message,expected", [
    ("queued", None, "waiting for a free slot (0 running, limit 2)"),
    ("paused", None, "Paused"),
    ("diverged", "loss of task 'a' became nan at step 7", "became nan at step 7"),
    ("failed", "worker process died", "worker process died"),
])
def test_live_panel_status_text(store, status, message, expected):
    cfg = ExperimentConfig(name="s", data=DataConfig(suite="toy_2d"))
    rid = store.create_run(cfg, status="queued" if status == "queued" else "running")
    if status != "queued":
        store.set_status(rid, status, message, heartbeat_at=time.time())
    at = live_app(rid)
    texts = [e.value for e in (*at.info, *at.warning, *at.error)]
    assert any(expected in t for t in texts), texts
    assert at.session_state[RUN_EVERY_KEY] == (1.0 if status in ("queued", "paused") else None)


def test_predictions_picker_changes_the_current_run(runs):
    at = run_page(PREDICTIONS_PAGE, runs["image"])
    at.selectbox(key="pred_run").set_value(runs["regression"]).run()
    assert at.session_state["run_id"] == runs["regression"]
    assert at.query_params["run"] == runs["regression"]
    assert set(plotly_figures(at)) == {"pred_sc_t1", "pred_sc_t2"}


def test_open_from_the_app_switches_to_the_train_page_with_the_run_in_the_url(runs):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py").run()
    at.selectbox(key="runs_target").set_value(runs["grid"]).run()
    at.button(key="runs_open").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["run_id"] == runs["grid"]
    assert at.query_params["run"] == runs["grid"]
    assert at.session_state[RUN_EVERY_KEY] is None  # the Train page's live panel, not polling


def test_the_url_keeps_the_current_run_after_a_page_switch_cleared_it(runs):
    # Streamlit's page links clear the query string; a reload must still open the run.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = runs["grid"]
    at.run()
    at.query_params.pop("run")
    at.switch_page("pages/predictions.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.query_params["run"] == runs["grid"]


def test_live_panel_metrics_tab_shows_each_tasks_metric(runs):
    rid = runs["image"]
    at = live_app(rid, live_tab="Metrics")
    assert at.radio(key=f"live_metric_{rid}").options == ["accuracy", "r2", "mse"]
    acc = plotly_figures(at)["live_metric_chart"]
    assert [t["name"] for t in acc["data"]] == ["digit", "odd"]  # ink is a regression task
    assert acc["data"][0]["y"] == pytest.approx([0.4, 0.8])
    at.radio(key=f"live_metric_{rid}").set_value("r2").run()
    r2 = plotly_figures(at)["live_metric_chart"]
    assert [t["name"] for t in r2["data"]] == ["ink"]


# ---------------------------------------------------------------- predictions: boxes and masks


def make_vision_run(store: RunStore, suite: str, probe: dict, outputs: dict) -> str:
    cfg = ExperimentConfig(name=f"{suite}-run", data=DataConfig(suite=suite),
                           tasks=[TaskConfig(name=t) for t in probe["tasks"]])
    run_id = store.create_run(cfg, status="running")
    sink = store.sink(run_id)
    sink.snapshot(0, "probe", probe)
    sink.metrics([(10, 1.0, "val", t, "loss", 0.5) for t in probe["tasks"]])
    sink.snapshot(10, "predictions", {"outputs": outputs})
    sink.progress(10, 10, 1.0)
    store.set_status(run_id, "finished", summary={})
    return run_id


def test_predictions_draw_true_and_predicted_boxes_on_the_probe_images(store):
    image = [[0] * 8 for _ in range(8)]
    probe = {"tasks": {"digit": {"kind": "classification", "class_names": None, "input": "x"},
                       "box": {"kind": "box", "class_names": None, "input": "x"}},
             "images": {"x": [image, image]},
             "targets": {"digit": [3, 5], "box": [[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0]]}}
    outputs = {"digit": [3, 1], "box": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.25]]}
    at = run_page(PREDICTIONS_PAGE, make_vision_run(store, "digit_boxes", probe, outputs))
    grid = at.get("html")[0].value
    assert grid.count("<svg") == 2 and grid.count("<image ") == 2
    true_boxes = re.findall(r'class="mtl-box-true" x="([\d.]+)" y="([\d.]+)" '
                            r'width="([\d.]+)" height="([\d.]+)"', grid)
    pred_boxes = re.findall(r'class="mtl-box-pred" x="([\d.]+)" y="([\d.]+)" '
                            r'width="([\d.]+)" height="([\d.]+)"', grid)
    # in the 8×8 image's pixels
    assert [tuple(map(float, b)) for b in true_boxes] == [(0, 0, 4, 4), (2, 4, 4, 4)]
    assert [tuple(map(float, b)) for b in pred_boxes] == [(0, 0, 4, 4), (4, 0, 4, 2)]
    assert "IoU 1.00" in grid and "IoU 0.00" in grid
    assert grid.count("mtl-wrong") == 2  # the second image: digit and box both wrong


def test_predictions_show_true_and_predicted_masks_and_depth_maps(store):
    seg_true = [[[0, 1], [2, 3]], [[1, 1], [0, 0]]]
    seg_pred = [[[0, 1], [2, 2]], [[1, 0], [0, 0]]]
    depth_true = [[[5.0, 1.5], [2.0, 3.0]], [[1.0, 1.0], [5.0, 5.0]]]
    depth_pred = [[[4.5, 1.5], [2.5, 3.0]], [[1.2, 1.0], [5.0, 4.0]]]
    colour = [[[0, 255], [255, 0]]] * 3
    probe = {"tasks": {"segmentation": {"kind": "dense_classification", "input": "x",
                                        "class_names": ["background", "circle", "square",
                                                        "triangle"]},
                       "depth": {"kind": "dense_regression", "class_names": None,
                                 "input": "x"}},
             "images": {"x": [colour, colour]},
             "targets": {"segmentation": seg_true, "depth": depth_true}}
    outputs = {"segmentation": seg_pred, "depth": depth_pred}
    at = run_page(PREDICTIONS_PAGE, make_vision_run(store, "scenes", probe, outputs))
    assert at.get("html")[0].value.count("<img") == 2  # the colour scenes themselves
    figs = plotly_figures(at)
    assert {"pred_dense_segmentation", "pred_dense_depth"} <= set(figs)
    seg = [t for t in figs["pred_dense_segmentation"]["data"] if t["type"] == "heatmap"]
    assert [t["z"] for t in seg] == seg_true + seg_pred  # top row truth, bottom row prediction
    assert seg[0]["zmin"] == -0.5 and seg[0]["zmax"] == 3.5
    bar = seg[0]["colorbar"]
    assert bar["ticktext"] == ["background", "circle", "square", "triangle"]
    depth = [t for t in figs["pred_dense_depth"]["data"] if t["type"] == "heatmap"]
    assert [t["z"] for t in depth] == depth_true + depth_pred
    assert depth[0]["zmin"] == 1.0 and depth[0]["zmax"] == 5.0  # one scale for all panels
    assert not any(k.startswith("pred_cm_") or k.startswith("pred_sc_") for k in figs)
