"""AppTest: the teaching pages — compare runs, weight sweep, lessons — and the Baselines & Δm
view, on run stores filled by hand through the store's own API (create_run, add_metrics,
set_status). Nothing trains here: starting a sweep or a lesson queues runs, and the worker
spawning (`jobs.dispatch`) is recorded instead of run, so no test leaves a worker behind.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from app_support import config_shown, plotly_figures, visible
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from mtl_core import jobs
from mtl_core.baselines import DELTA_M_LATEX, baseline_configs, compare_run
from mtl_core.config import parse_config
from mtl_core.lessons import LESSONS, load_preset
from mtl_core.store import RunStore
from mtl_core.sweep import grid_size, list_sweeps, sweep_runs, sweep_table
from ui import compare_charts as cc

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
COMPARE = str(ROOT / "pages" / "compare.py")
SWEEP = str(ROOT / "pages" / "sweep.py")
RUNS = str(ROOT / "pages" / "runs.py")
TIMEOUT = 60  # 2 shared cores: the first page run imports torch, plotly and pandas


# ---------------------------------------------------------------- AppTest plumbing


class _NavigationPagesManager(PagesManager):
    """Keep AppTest in st.navigation mode across runs (see tests/test_app_train.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


class _Downloads(MemoryMediaFileStorage):
    """Media storage that also keeps every download button's bytes by its file name
    (AppTest's own storage is dropped after each run)."""

    files: dict[str, bytes] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):  # type: ignore[override]
        if filename is not None and isinstance(path_or_data, bytes):
            _Downloads.files[filename] = path_or_data
        return super().load_and_get_id(path_or_data, mimetype, kind, filename)


@pytest.fixture(autouse=True)
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    _Downloads.files = {}
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", _Downloads)
    return _Downloads.files


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list:
    """jobs.dispatch calls, recorded and not run: queued runs stay queued, no worker starts."""
    calls: list = []
    monkeypatch.setattr(jobs, "dispatch", lambda runs_dir=None, idle_timeout=None:
                        calls.append(runs_dir))
    return calls



def page(path: str, **state: Any) -> AppTest:
    at = AppTest.from_file(path, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def app(monkeypatch: pytest.MonkeyPatch, query: dict[str, str] | None = None) -> AppTest:
    monkeypatch.setattr(app_test_module, "PagesManager", _NavigationPagesManager)
    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with this column (only selectable tables keep a key)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def traces(fig: dict) -> dict[str, dict]:
    return {t["name"]: t for t in fig["data"]}


# ---------------------------------------------------------------- hand-made runs


def add_run(store: RunStore, name: str, weights: dict[str, float], *, method: str = "static",
            summary: dict | None = None, status: str = "finished",
            model: dict | None = None, train_fraction: float = 1.0,
            metrics: list[tuple] | None = None) -> str:
    """A toy_2d run with these task weights, its summary and metric rows as given."""
    cfg = parse_config({
        "name": name, "device": "cpu",
        "data": {"suite": "toy_2d", "train_fraction": train_fraction},
        "tasks": [{"name": t, "weight": w} for t, w in weights.items()],
        "model": model or {"trunk": {"type": "mlp", "layers": [16, 16]}},
        "weighting": {"method": method}})
    run_id = store.create_run(cfg, status="running")
    if metrics:
        store.add_metrics(run_id, metrics)
    if status == "running":
        store.set_status(run_id, "running", heartbeat_at=time.time())
    else:
        store.set_status(run_id, status, summary=summary or {})
    time.sleep(0.01)  # distinct created_at: the pages order runs by it
    return run_id


def curves(scale: float) -> list[tuple]:
    """Train loss at steps 1..6 and val loss + accuracy at steps 3 and 6, for circle and xor;
    test at step 6. Values depend on `scale`, so each run's curves differ."""
    rows = []
    for i, task in enumerate(("circle", "xor")):
        for step in range(1, 7):
            rows.append((step, step / 6, "train", task, "loss", scale * (i + 1) / step))
        for step in (3, 6):
            rows += [(step, step / 6, "val", task, "loss", scale * (i + 2) / step),
                     (step, step / 6, "val", task, "accuracy", 0.5 + step / (10 * scale))]
        rows.append((6, 1.0, "test", task, "accuracy", 0.6 + i / 10))
    return rows


# ---------------------------------------------------------------- compare page


def test_compare_page_with_an_empty_store():
    at = page(COMPARE)
    assert any("No runs yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


@pytest.fixture
def three_runs(store: RunStore) -> list[str]:
    return [
        add_run(store, "alpha", {"circle": 1.0, "xor": 1.0}, metrics=curves(1.0),
                summary={"test": {"circle": {"accuracy": 0.9, "loss": 0.3},
                                  "xor": {"accuracy": 0.7, "loss": 0.6}}}),
        add_run(store, "beta", {"circle": 0.25, "xor": 0.75}, method="uncertainty",
                metrics=curves(2.0), train_fraction=0.5,
                model={"trunk": {"type": "mlp", "layers": [16, 16]},
                       "params": {"shared_layers": 1}},
                summary={"test": {"circle": {"accuracy": 0.8, "loss": 0.4},
                                  "xor": {"accuracy": 0.85, "loss": 0.35}}}),
        add_run(store, "gamma", {"circle": 1.0}, metrics=curves(4.0),
                model={"architecture": "single_task",
                       "trunk": {"type": "mlp", "layers": [16, 16]}},
                summary={"best_val": {"circle": {"accuracy": 0.75}}}),
    ]


def select(at: AppTest, rows: list[int]) -> AppTest:
    at.session_state["cmp_table"] = {"selection": {"rows": rows, "columns": []}}
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_compare_lists_runs_and_asks_for_a_selection(three_runs):
    at = page(COMPARE)
    listed = table(at, "progress")
    assert list(listed["id"]) == three_runs  # oldest first: ticked rows stay the same runs
    assert any("Select one or more runs" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_compare_overlays_one_trace_per_run_task_and_split(store, three_runs):
    at = select(page(COMPARE), [0, 1])
    figs = plotly_figures(at)
    assert {"cmp_curve_circle", "cmp_curve_xor"} <= set(figs)
    labels = cc.run_labels([store.get_run(i) for i in three_runs[:2]])
    alpha, beta = (labels[i] for i in three_runs[:2])
    circle = traces(figs["cmp_curve_circle"])
    assert set(circle) == {f"{alpha} · train", f"{alpha} · val", f"{beta} · train",
                           f"{beta} · val"}
    assert circle[f"{beta} · train"]["x"] == [1, 2, 3, 4, 5, 6]
    assert circle[f"{beta} · train"]["y"] == pytest.approx([2.0 / s for s in range(1, 7)])
    assert circle[f"{beta} · val"]["y"] == pytest.approx([4.0 / 3, 4.0 / 6])
    xor = traces(figs["cmp_curve_xor"])
    assert xor[f"{alpha} · train"]["y"] == pytest.approx([2.0 / s for s in range(1, 7)])
    # colour per run (the same in every task's chart), dash per split
    assert circle[f"{alpha} · train"]["line"]["color"] == xor[f"{alpha} · val"]["line"]["color"]
    assert circle[f"{alpha} · train"]["line"]["color"] != circle[f"{beta} · train"]["line"]["color"]
    assert circle[f"{alpha} · train"]["line"]["dash"] == "solid"
    assert circle[f"{alpha} · val"]["line"]["dash"] == "dash"

    # the validation accuracy, on the test split too
    at.selectbox(key="cmp_metric").set_value("accuracy")
    at.segmented_control(key="cmp_splits").set_value(["val", "test"]).run()
    circle = traces(plotly_figures(at)["cmp_curve_circle"])
    assert set(circle) == {f"{alpha} · val", f"{alpha} · test", f"{beta} · val",
                           f"{beta} · test"}
    assert circle[f"{alpha} · val"]["y"] == pytest.approx([0.8, 1.1])
    assert circle[f"{alpha} · test"]["y"] == pytest.approx([0.6])
    assert circle[f"{alpha} · test"]["line"]["dash"] == "dot"


def test_compare_final_table_bars_parcoords_and_csv(store, three_runs, downloads):
    at = select(page(COMPARE), [0, 1, 2])
    final = table(at, "train fraction").set_index("id")
    assert list(final.index) == three_runs
    assert final.loc[three_runs[0], "circle · accuracy"] == pytest.approx(0.9)
    assert final.loc[three_runs[1], "xor · accuracy"] == pytest.approx(0.85)
    assert final.loc[three_runs[1], "xor · loss"] == pytest.approx(0.35)
    assert final.loc[three_runs[2], "circle · accuracy"] == pytest.approx(0.75)  # best val
    assert math.isnan(final.loc[three_runs[2], "xor · accuracy"])
    assert list(final["method"]) == ["static", "uncertainty", "static"]
    assert list(final["w_circle"]) == [1.0, 0.25, 1.0]
    assert list(final["w_xor"]) == [1.0, 0.75, 0.0]  # gamma does not train xor
    assert list(final["shared layers"]) == [2.0, 1.0, 0.0]
    assert list(final["train fraction"]) == [1.0, 0.5, 1.0]

    labels = cc.run_labels([store.get_run(i) for i in three_runs])
    bars = traces(plotly_figures(at)["cmp_bars"])
    assert list(bars) == [labels[i] for i in three_runs]
    assert bars[labels[three_runs[1]]]["x"] == ["circle", "xor"]
    assert bars[labels[three_runs[1]]]["y"] == pytest.approx([0.8, 0.85])

    par = plotly_figures(at)["cmp_parcoords"]["data"][0]
    assert par["type"] == "parcoords"
    dims = {d["label"]: d for d in par["dimensions"]}
    assert list(dims) == ["w circle", "w xor", "method", "shared layers", "train fraction",
                          "circle · accuracy", "xor · accuracy"]
    assert dims["w xor"]["values"] == [1.0, 0.75, 0.0]
    assert dims["method"]["ticktext"] == ["static", "uncertainty"]
    assert dims["method"]["values"] == [0, 1, 0]
    assert dims["circle · accuracy"]["values"] == pytest.approx([0.9, 0.8, 0.75])
    assert par["line"]["color"] == pytest.approx([0.9, 0.8, 0.75])  # coloured by circle

    csv = pd.read_csv(pd.io.common.BytesIO(downloads["compare.csv"]))
    assert list(csv["id"]) == three_runs
    assert list(csv["xor · accuracy"][:2]) == pytest.approx([0.7, 0.85])
    assert list(csv.columns) == list(table(at, "train fraction").columns)


# ---------------------------------------------------------------- baselines & Δm


@pytest.fixture
def mtl_with_baselines(store: RunStore) -> str:
    """A multi-task run (circle accuracy 0.9, distance mse 0.5) and finished single-task
    baselines of exactly its settings (0.8 and 1.0): Δm = (−12.5 − 50) / 2 = −31.25."""
    run_id = add_run(store, "mtl", {"circle": 1.0, "distance": 1.0},
                     summary={"test": {"circle": {"accuracy": 0.9, "loss": 0.3},
                                       "distance": {"mse": 0.5, "r2": 0.5, "loss": 0.5}}})
    base = {"circle": {"accuracy": 0.8, "loss": 0.5}, "distance": {"mse": 1.0, "loss": 1.0}}
    for task, cfg in baseline_configs(store.get_run(run_id).config).items():
        base_id = store.create_run(cfg, status="running")
        store.set_status(base_id, "finished", summary={"test": {task: base[task]}})
    return run_id


def test_baselines_view_table_and_delta_m_match_compare_run(store, mtl_with_baselines):
    at = page(RUNS, run_id=mtl_with_baselines)
    comp = compare_run(mtl_with_baselines, store.runs_dir)
    assert comp.delta_m == pytest.approx(-31.25)
    shown = table(at, "Δm term (%)").set_index("task")
    assert list(shown.index) == ["circle", "distance"]
    for row in comp.rows:
        assert shown.loc[row.task, "metric"] == row.metric
        assert shown.loc[row.task, "multi-task"] == pytest.approx(row.value)
        assert shown.loc[row.task, "single-task baseline"] == pytest.approx(row.baseline)
        assert shown.loc[row.task, "change (%)"] == pytest.approx(row.relative)
        assert shown.loc[row.task, "Δm term (%)"] == pytest.approx(row.term)
        assert shown.loc[row.task, "verdict"] == "✅ better"
    assert at.metric[0].value == "-31.25 %"
    assert at.get("latex")[0].proto.body.strip("$\n") == DELTA_M_LATEX
    assert any("negative transfer" in m.value for m in at.markdown)  # the explanation
    bars = plotly_figures(at)["runs_bl_bars"]["data"][0]
    assert bars["x"] == ["circle", "distance"]
    assert bars["y"] == pytest.approx([-12.5, -50.0])
    assert at.button(key="runs_bl_train").disabled  # every baseline exists: reused


def test_baseline_button_queues_the_missing_ones_and_reuses_the_others(store, dispatched):
    run_id = add_run(store, "mtl", {"circle": 1.0, "xor": 0.5},
                     summary={"test": {"circle": {"accuracy": 0.9}, "xor": {"accuracy": 0.6}}})
    configs = baseline_configs(store.get_run(run_id).config)
    reused = store.create_run(configs["circle"], status="running")
    store.set_status(reused, "finished", summary={"test": {"circle": {"accuracy": 0.8}}})

    at = page(RUNS, run_id=run_id)
    assert any("no finished baseline for: xor" in visible(i.value) for i in at.info)
    assert not at.button(key="runs_bl_train").disabled
    at.button(key="runs_bl_train").click().run()
    assert not at.exception, [e.message for e in at.exception]
    queued = store.list_runs(["queued"])
    assert len(queued) == 1 and dispatched  # through mtl_core.jobs
    assert queued[0].config == configs["xor"].to_dict()
    notice = " ".join(s.value for s in at.success)
    assert f"Queued 1: xor (`{queued[0].id}`)" in notice
    assert f"Reused 1 with the same settings: circle (`{reused}`)" in notice
    assert at.button(key="runs_bl_train").disabled  # nothing left to train
    status = table(at, "baseline run").set_index("task")
    assert queued[0].id in status.loc["xor", "baseline run"]
    assert "queued" in status.loc["xor", "status"] and "finished" in status.loc["circle", "status"]
    assert any("no finished baseline for: xor" in visible(i.value) for i in at.info)  # no Δm yet


def test_compare_baselines_tab_polls_only_while_a_baseline_trains(store, mtl_with_baselines):
    at = select(page(COMPARE), [0])  # the oldest run: the multi-task one
    assert at.selectbox(key="cmp_bl_run").value == mtl_with_baselines
    assert at.metric[0].value == "-31.25 %"
    assert at.session_state["_baselines_run_every_cmp_bl"] is None  # all ended: no polling

    late = add_run(store, "late", {"circle": 1.0, "distance": 0.5}, train_fraction=0.5,
                   summary={"test": {"circle": {"accuracy": 0.9}, "distance": {"mse": 0.4}}})
    base = baseline_configs(store.get_run(late).config)["distance"]
    store.create_run(base)  # queued: a baseline that will train
    at = select(page(COMPARE), [list(table(page(COMPARE), "progress")["id"]).index(late)])
    assert at.selectbox(key="cmp_bl_run").value == late
    assert at.session_state["_baselines_run_every_cmp_bl"] == 2.0  # other data: not reused


# ---------------------------------------------------------------- sweep page


def sweep_run(store: RunStore, sweep_id: str, weights: tuple[float, float],
              val: tuple[float, float], test: tuple[float, float], method: str = "static",
              status: str = "finished") -> str:
    """A run named and tagged the way mtl_core.sweep.submit_sweep names them."""
    label = f"method={method}" if method != "static" else \
        "w=" + "/".join(f"{w:.3g}" for w in weights)
    summary = {"val": {"circle": {"accuracy": val[0]}, "distance": {"mse": val[1]}},
               "test": {"circle": {"accuracy": test[0]}, "distance": {"mse": test[1]}}}
    return add_run(store, f"sweep {label} #{sweep_id}",
                   {"circle": weights[0], "distance": weights[1]}, method=method,
                   summary=summary if status == "finished" else None, status=status)


@pytest.fixture
def hand_sweep(store: RunStore) -> str:
    sweep_id = "abc123"
    sweep_run(store, sweep_id, (0.0, 1.0), (0.55, 0.20), (0.50, 0.22))   # front
    sweep_run(store, sweep_id, (0.25, 0.75), (0.80, 0.30), (0.78, 0.31))  # front, chosen
    sweep_run(store, sweep_id, (0.5, 0.5), (0.75, 0.45), (0.74, 0.47))    # dominated
    sweep_run(store, sweep_id, (0.75, 0.25), (0.90, 0.80), (0.88, 0.82))  # front
    sweep_run(store, sweep_id, (1.0, 0.0), (0.92, 1.50), (0.90, 1.40))    # front
    sweep_run(store, sweep_id, (0.5, 0.5), (0.85, 0.35), (0.83, 0.36), method="pcgrad")
    sweep_run(store, sweep_id, (0.5, 0.5), (0.6, 0.9), (0.6, 0.9), method="mgda",
              status="running")
    return sweep_id


def test_sweep_page_with_an_empty_store():
    at = page(SWEEP)
    assert any("No sweep yet" in i.value for i in at.info)


def test_sweep_scatter_marks_the_front_and_choice_of_sweep_table(store, hand_sweep, downloads):
    at = page(SWEEP)
    assert at.selectbox(key="sweep_pick").value == hand_sweep
    expected = sweep_table(store, hand_sweep)
    fig = plotly_figures(at)["sweep_front"]
    by_name = traces(fig)
    assert set(by_name) == {"weight grid", "Pareto front", "chosen by validation", "pcgrad"}

    def points(rows: pd.DataFrame) -> set[tuple[float, float]]:
        return set(zip(rows["val_circle"], rows["val_distance"], strict=True))

    def drawn(name: str) -> set[tuple[float, float]]:
        return set(zip(by_name[name]["x"], by_name[name]["y"], strict=True))

    done = expected[expected["status"] == "finished"]
    assert drawn("weight grid") == points(done[done["method"] == "static"])
    assert drawn("Pareto front") == points(done[done["on_front"]])
    assert drawn("chosen by validation") == points(done[done["chosen"]]) == {(0.80, 0.30)}
    assert drawn("pcgrad") == {(0.85, 0.35)}
    # the front is a line in x order; pcgrad (0.85, 0.35) is on it too
    assert by_name["Pareto front"]["x"] == sorted(by_name["Pareto front"]["x"])
    assert (0.85, 0.35) in drawn("Pareto front")
    assert by_name["pcgrad"]["marker"]["symbol"] != by_name["weight grid"]["marker"].get("symbol")
    assert "w circle = 0.25" in by_name["chosen by validation"]["text"][0]  # hover: weights
    assert "lower is better" in fig["layout"]["yaxis"]["title"]["text"]

    assert at.session_state["_sweep_run_every"] == 2.0  # mgda is still training
    progress = at.get("progress")[0]
    assert "6 of 7 ended" in progress.proto.text and "1 running" in progress.proto.text
    chosen = table(at, "point").set_index("point")
    assert chosen.loc["chosen: 0.25/0.75", "test circle accuracy"] == pytest.approx(0.78)
    assert chosen.loc["pcgrad", "test distance mse"] == pytest.approx(0.36)
    assert any("w circle = 0.25, w distance = 0.75" in s.value for s in at.success)
    csv = pd.read_csv(pd.io.common.BytesIO(downloads[f"sweep-{hand_sweep}.csv"]))
    assert list(csv["run_id"]) == list(expected["run_id"])
    assert list(csv["on_front"]) == list(expected["on_front"])


def test_sweep_shows_the_chosen_points_test_result_next_to_the_test_front(store, hand_sweep):
    at = page(SWEEP)
    fig = plotly_figures(at)["sweep_test_front"]
    by_name = traces(fig)
    assert set(zip(by_name["chosen by validation"]["x"], by_name["chosen by validation"]["y"],
                   strict=True)) == {(0.78, 0.31)}  # the chosen run's test metrics
    assert "(test)" in fig["layout"]["title"]["text"]
    assert any("Test agrees with validation" in s.value for s in at.success)


def test_sweep_says_plainly_when_test_disagrees_with_validation(store):
    sweep_id = "def456"
    sweep_run(store, sweep_id, (0.0, 1.0), (0.55, 0.20), (0.50, 0.22))
    sweep_run(store, sweep_id, (0.5, 0.5), (0.80, 0.30), (0.70, 0.40))   # chosen by val
    sweep_run(store, sweep_id, (1.0, 0.0), (0.70, 0.60), (0.80, 0.30))   # better on test
    at = page(SWEEP)
    warnings = " ".join(w.value for w in at.warning)
    assert "Test disagrees with validation" in warnings and "1/0" in warnings


def test_adaptive_methods_can_be_added_to_a_finished_sweep(store, hand_sweep, dispatched):
    at = page(SWEEP)
    more = at.multiselect(key=f"sweep_more_{hand_sweep}")
    assert "pcgrad" not in more.options and "static" not in more.options  # already there
    more.set_value(["uncertainty"]).run()
    at.button(key=f"sweep_add_{hand_sweep}").click().run()
    assert not at.exception, [e.message for e in at.exception]
    added = sweep_runs(store, hand_sweep)[-1]
    assert added.name == f"sweep method=uncertainty #{hand_sweep}" and dispatched
    assert added.status == "queued" and added.method == "uncertainty"
    assert {t["name"]: t["weight"] for t in added.config["tasks"]} == {"circle": 0.5,
                                                                      "distance": 0.5}
    assert list(sweep_table(store, hand_sweep)["method"]).count("uncertainty") == 1
    assert "6 of 8 ended" in at.get("progress")[0].proto.text


def test_starting_a_sweep_from_the_page_queues_grid_size_runs(store, dispatched,
                                                              monkeypatch):
    monkeypatch.setenv("MTL_MAX_JOBS", "1")
    base = add_run(store, "base", {"circle": 1.0, "xor": 1.0, "distance": 1.0},
                   summary={"test": {"circle": {"accuracy": 0.9}}})
    at = page(SWEEP)
    at.radio(key="sweep_src").set_value("A finished run").run()
    assert at.selectbox(key="sweep_run").value == base
    tasks = at.multiselect(key="sweep_tasks_toy_2d_circle_xor_distance")
    assert tasks.value == ["circle", "xor", "distance"]
    tasks.set_value(["circle", "distance"])
    at.number_input(key="sweep_n").set_value(4)
    at.multiselect(key="sweep_extra").set_value(["uncertainty"]).run()
    assert any("5 runs" in c.value and "at most 1 training" in c.value for c in at.caption)
    at.button(key="sweep_start").click().run()
    assert not at.exception, [e.message for e in at.exception]

    sweep_id = list_sweeps(store)[0]
    runs = sweep_runs(store, sweep_id)
    assert len(runs) == grid_size(2, 4) + 1 == 5 and dispatched
    assert [r.config["weighting"]["method"] for r in runs] == ["static"] * 4 + ["uncertainty"]
    weights = [tuple(t["weight"] for t in r.config["tasks"]) for r in runs]
    assert weights[:4] == [(0.0, 1.0), (1 / 3, 2 / 3), (2 / 3, 1 / 3), (1.0, 0.0)]
    assert all([t["name"] for t in r.config["tasks"]] == ["circle", "distance"] for r in runs)
    assert all(r.status == "queued" for r in runs)
    assert at.selectbox(key="sweep_pick").value == sweep_id  # the new sweep is shown
    assert "0 of 5 ended" in at.get("progress")[0].proto.text


def test_three_task_sweep_shows_pairwise_views_and_a_ternary_plot(store):
    sweep_id = "def456"
    for weights, vals in [((1.0, 0.0, 0.0), (0.9, 0.5, 0.9)), ((0.0, 1.0, 0.0), (0.5, 0.9, 0.8)),
                          ((0.0, 0.0, 1.0), (0.6, 0.6, 0.2)),
                          ((0.5, 0.5, 0.0), (0.8, 0.8, 0.7))]:
        label = "w=" + "/".join(f"{w:.3g}" for w in weights)
        add_run(store, f"sweep {label} #{sweep_id}",
                dict(zip(("circle", "xor", "distance"), weights, strict=True)),
                summary={"val": {"circle": {"accuracy": vals[0]}, "xor": {"accuracy": vals[1]},
                                 "distance": {"mse": vals[2]}}})
    at = page(SWEEP)
    assert at.session_state["_sweep_run_every"] is None  # every run has ended
    figs = plotly_figures(at)
    assert {"sweep_pair_circle_xor", "sweep_pair_circle_distance", "sweep_pair_xor_distance",
            "sweep_ternary"} <= set(figs)
    expected = sweep_table(store, sweep_id)
    ternary = traces(figs["sweep_ternary"])
    colour = ternary["val circle"]
    assert colour["a"] == list(expected["w_circle"]) and colour["marker"]["color"] == \
        pytest.approx(list(expected["val_circle"]))
    chosen = expected[expected["chosen"]].iloc[0]
    assert ternary["chosen by validation"]["a"] == [chosen["w_circle"]]
    assert traces(figs["sweep_pair_circle_xor"])["Pareto front"]["mode"] == "markers"


# ---------------------------------------------------------------- lessons page



def test_lessons_page_lists_every_lesson_with_its_parts(monkeypatch):
    at = app(monkeypatch)
    at.run()
    at.switch_page("pages/lessons.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(LESSONS) >= 6
    titles = [e.label for e in at.expander]
    for number, lesson in enumerate(LESSONS, start=1):
        assert f"**{number}. {lesson.title}**" in titles
        assert any(lesson.question in i.value for i in at.info)
        for i in range(len(lesson.presets)):
            assert at.button(key=f"lesson_load_{lesson.id}_{i}")
            assert at.button(key=f"lesson_start_{lesson.id}_{i}")
    text = " ".join(m.value for m in at.markdown)
    assert LESSONS[0].look_for[0] in text


def test_load_preset_fills_the_train_page_with_that_preset(monkeypatch):
    lesson = next(x for x in LESSONS if len(x.presets) == 2)
    at = app(monkeypatch)
    at.run()
    at.switch_page("pages/lessons.py").run()
    at.button(key=f"lesson_load_{lesson.id}_1").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.get("title")[0].value == "Build & Train"  # switched to the Train page
    assert parse_config(config_shown(at)).to_dict() == load_preset(lesson, 1).to_dict()
    assert "lesson_knobs" not in at.session_state  # not in class mode: no lesson focus
    assert "mode" not in at.query_params


def test_class_mode_load_sets_the_lesson_knobs_and_keeps_class_mode(monkeypatch):
    lesson = next(x for x in LESSONS if x.id == "relatedness")
    at = app(monkeypatch, {"mode": "class"})
    at.run()
    at.switch_page("pages/lessons.py").run()
    at.button(key=f"lesson_load_{lesson.id}_0").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["lesson_knobs"] == list(lesson.knobs)
    assert at.query_params["mode"] == "class"
    assert parse_config(config_shown(at)).to_dict() == load_preset(lesson, 0).to_dict()
    banner = " ".join(m.value for m in at.markdown)
    assert "Class mode" in banner and "data.params.correlation" in banner


def test_load_and_start_queues_the_preset_as_the_current_run(monkeypatch, store, dispatched):
    lesson = LESSONS[0]
    at = app(monkeypatch)
    at.run()
    at.switch_page("pages/lessons.py").run()
    at.button(key=f"lesson_start_{lesson.id}_0").click().run()
    assert not at.exception, [e.message for e in at.exception]
    runs = store.list_runs()
    assert len(runs) == 1 and dispatched
    assert runs[0].config == load_preset(lesson, 0).to_dict()
    assert at.session_state["run_id"] == runs[0].id
    assert at.get("title")[0].value == "Build & Train"
    assert parse_config(config_shown(at)).to_dict() == load_preset(lesson, 0).to_dict()


def test_a_sweep_starts_from_the_train_page_config_and_its_choice_loads_back(
        monkeypatch, store, hand_sweep):
    lesson = next(x for x in LESSONS if x.id == "choosing_weights")
    at = app(monkeypatch)
    at.run()
    at.switch_page("pages/lessons.py").run()
    at.button(key=f"lesson_load_{lesson.id}_0").click().run()  # fills the Train page
    at.switch_page("pages/sweep.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.radio(key="sweep_src").value == "Build & Train page"
    assert any(f"Base: **{load_preset(lesson, 0).name}**" in c.value for c in at.caption)
    assert at.multiselect(key="sweep_tasks_toy_2d_xor_spiral").value == ["xor", "spiral"]

    # The choice of the hand-made sweep, back into every control of the Train page.
    chosen = sweep_table(store, hand_sweep).query("chosen").iloc[0]
    at.button(key="sweep_load").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.get("title")[0].value == "Build & Train"
    shown = parse_config(config_shown(at))
    assert shown.to_dict() == parse_config(store.get_run(chosen["run_id"]).config).to_dict()
    assert shown.task_weights() == {"circle": 0.25, "distance": 0.75}
