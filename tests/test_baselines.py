"""Single-task baselines: their configs, their reuse through the store, and Δm."""
from __future__ import annotations

import time

import pytest
from conftest import deep_update

from mtl_core import baselines
from mtl_core.baselines import (
    baseline_configs,
    baseline_key,
    compare_run,
    comparison,
    find_baselines,
    find_or_submit_baselines,
    primary_metric,
)
from mtl_core.config import parse_config
from mtl_core.store import TERMINAL_STATUSES, RunStore


def _summary(task: str, **metrics: float) -> dict:
    return {"test": {task: metrics}}


# --- Δm on hand-made metrics ----------------------------------------------------------------


def test_delta_m_by_hand_when_both_tasks_improve():
    # accuracy 0.8 -> 0.9 is +12.5 %, higher is better, so its term is -12.5;
    # mse 1.0 -> 0.5 is -50 %, lower is better, so its term is -50. Δm = (-12.5 - 50) / 2.
    run = {"test": {"digit": {"accuracy": 0.9, "loss": 0.3},
                    "ink": {"mse": 0.5, "mae": 0.6, "r2": 0.5, "loss": 0.5}}}
    base = {"digit": _summary("digit", accuracy=0.8, loss=0.5),
            "ink": _summary("ink", mse=1.0, mae=0.9, r2=0.0, loss=1.0)}
    result = comparison(run, base, {"digit": "classification", "ink": "regression"})

    assert result.delta_m == pytest.approx(-31.25)
    assert result.note is None and result.missing == []
    digit, ink = result.rows
    assert (digit.metric, digit.higher_is_better) == ("accuracy", True)
    assert digit.relative == pytest.approx(12.5) and digit.term == pytest.approx(-12.5)
    assert (ink.metric, ink.higher_is_better) == ("mse", False)  # mse, not r2
    assert ink.relative == pytest.approx(-50.0) and ink.term == pytest.approx(-50.0)
    assert digit.better and ink.better


def test_delta_m_by_hand_when_both_tasks_get_worse():
    # accuracy 0.8 -> 0.7: term +12.5; mse 1.0 -> 1.5: term +50. Δm = +31.25.
    run = {"test": {"digit": {"accuracy": 0.7}, "ink": {"mse": 1.5}}}
    base = {"digit": _summary("digit", accuracy=0.8), "ink": _summary("ink", mse=1.0)}
    result = comparison(run, base)  # kinds read off the metric names

    assert result.delta_m == pytest.approx(31.25)
    assert [r.better for r in result.rows] == [False, False]


def test_one_task_gaining_and_one_losing_partly_cancel():
    # binary accuracy 0.5 -> 0.6: term -20; mse 2.0 -> 2.5: term +25. Δm = +2.5.
    run = {"test": {"a": {"accuracy": 0.6}, "b": {"mse": 2.5}}}
    base = {"a": _summary("a", accuracy=0.5), "b": _summary("b", mse=2.0)}
    result = comparison(run, base, {"a": "binary", "b": "regression"})
    assert result.delta_m == pytest.approx(2.5)
    assert [r.better for r in result.rows] == [True, False]


def test_delta_m_is_withheld_when_a_baseline_is_missing():
    run = {"test": {"a": {"accuracy": 0.6}, "b": {"mse": 2.5}}}
    result = comparison(run, {"a": _summary("a", accuracy=0.5)})
    assert result.delta_m is None
    assert result.missing == ["b"]
    assert "b" in result.note
    assert result.rows[0].term == pytest.approx(-20.0)  # the rows that can be filled are


def test_a_zero_baseline_gives_no_delta_m_and_says_why():
    run = {"test": {"a": {"accuracy": 0.6}}}
    result = comparison(run, {"a": _summary("a", accuracy=0.0)})
    assert result.delta_m is None and "undefined" in result.note


def test_primary_metric_per_kind():
    assert primary_metric("classification") == "accuracy"
    assert primary_metric("binary") == "accuracy"
    assert primary_metric("regression") == "mse"
    assert primary_metric({"loss": 1.0, "mse": 1.0, "r2": 0.1}) == "mse"
    with pytest.raises(ValueError, match="unknown task kind"):
        primary_metric("ranking")


def test_comparison_frame_has_one_row_per_task():
    run = {"test": {"a": {"accuracy": 0.9}, "b": {"mse": 0.5}}}
    base = {"a": _summary("a", accuracy=0.8), "b": _summary("b", mse=1.0)}
    frame = comparison(run, base).frame()
    assert list(frame["task"]) == ["a", "b"]
    assert list(frame["better"]) == [True, True]


# --- configs and keys -----------------------------------------------------------------------


def _mtl_doc(tiny_doc):
    return tiny_doc({
        "tasks": [{"name": "circle", "weight": 0.3}, {"name": "distance", "weight": 2.0},
                  {"name": "xor", "weight": 0.0}],
        "model": {"architecture": "hard_sharing", "params": {"shared_layers": 1}},
        "weighting": {"method": "uncertainty"},
        "optim": {"optimizer": "sgd", "lr": 0.02, "weight_decay": 0.001},
    })


def test_baseline_configs_share_everything_but_the_sharing(tiny_doc):
    cfg = parse_config(_mtl_doc(tiny_doc))
    configs = baseline_configs(cfg)

    assert list(configs) == ["circle", "distance"]  # the weight-0 task has no baseline
    for task, base in configs.items():
        assert base.task_weights() == {task: 1.0}
        assert base.model.architecture == "single_task" and base.model.params == {}
        assert base.weighting.method == "static" and base.weighting.params == {}
        assert base.model.trunk == cfg.model.trunk
        assert base.model.heads == cfg.model.heads
        assert base.optim == cfg.optim
        assert base.data == cfg.data
        assert base.seed == cfg.seed
        assert base.name == f"baseline:{task}:{baseline_key(base)[:8]}"
        assert parse_config(base.to_dict()) == base  # valid as it stands


def test_baseline_key_ignores_the_label_but_not_the_settings(tiny_doc):
    doc = tiny_doc({"tasks": [{"name": "circle"}], "model": {"architecture": "single_task"}})
    key = baseline_key(doc)
    assert len(key) == 64 and key == baseline_key(parse_config(doc))
    assert baseline_key({**doc, "name": "another", "log_every": 3}) == key
    for change in ({"seed": 1}, {"optim": {"lr": 0.02}}, {"tasks": [{"name": "xor"}]},
                   {"model": {"trunk": {"layers": [16]}}}, {"data": {"params": {"noise": 0.1}}},
                   {"data": {"train_fraction": 0.5}}):
        assert baseline_key(deep_update(doc, change)) != key, change


def test_baseline_key_sees_defaults_filled_in(tiny_doc):
    doc = tiny_doc({"tasks": [{"name": "circle"}], "model": {"architecture": "single_task"}})
    explicit = deep_update(doc, {"optim": {"weight_decay": 0.0}})
    assert baseline_key(explicit) == baseline_key(doc)


# --- reuse through the store and the jobs queue ----------------------------------------------
def _wait_until_ended(store: RunStore, ids, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(store.get_run(i).status in TERMINAL_STATUSES for i in ids):
            return
        time.sleep(0.3)
    raise AssertionError({i: store.get_run(i).status for i in ids})


def test_baselines_are_trained_once_then_reused(tiny_doc, isolated_dirs, end_workers):
    doc = tiny_doc({"data": {"params": {"n_samples": 200, "n_test": 50}},
                    "tasks": [{"name": "circle"}, {"name": "distance"}],
                    "optim": {"epochs": 1}})
    store = RunStore(isolated_dirs)

    ids = find_or_submit_baselines(doc, isolated_dirs)
    assert sorted(ids) == ["circle", "distance"] and len(set(ids.values())) == 2
    _wait_until_ended(store, ids.values())
    for task, run_id in ids.items():
        run = store.get_run(run_id)
        assert run.status == "finished", run.message
        assert list(run.summary["test"]) == [task]
        assert run.name.startswith(f"baseline:{task}:")

    # A different MTL method and weights need the very same baselines: nothing new is queued.
    other = deep_update(doc, {"name": "other", "weighting": {"method": "pcgrad"},
                              "tasks": [{"name": "circle", "weight": 0.2},
                                        {"name": "distance", "weight": 0.8}]})
    assert find_or_submit_baselines(other, isolated_dirs) == ids
    assert len(store.list_runs()) == 2

    # Δm of a (hand-made) finished MTL run against the stored baselines.
    mtl = parse_config(doc)
    run_id = store.create_run(mtl)
    base = {t: store.get_run(i).summary["test"][t] for t, i in ids.items()}
    made = {"circle": {"accuracy": base["circle"]["accuracy"] * 1.1},
            "distance": {"mse": base["distance"]["mse"] * 0.8}}
    store.set_status(run_id, "finished", summary={"test": made})
    result = compare_run(run_id, isolated_dirs)
    assert result.delta_m == pytest.approx((-10.0 - 20.0) / 2)


def test_live_baselines_are_reused_and_finished_ones_preferred(tiny_doc, isolated_dirs,
                                                               monkeypatch):
    queued: list[str] = []

    def fake_submit(cfg, runs_dir=None, owner=None):  # queue without starting workers
        queued.append(RunStore(runs_dir).create_run(parse_config(cfg)))
        return queued[-1]

    monkeypatch.setattr("mtl_core.jobs.submit", fake_submit)
    doc = tiny_doc({"tasks": [{"name": "circle"}, {"name": "xor"}]})
    first = find_or_submit_baselines(doc, isolated_dirs)
    assert find_or_submit_baselines(doc, isolated_dirs) == first  # queued runs count
    assert len(queued) == 2

    # A newer duplicate that is still queued loses against a finished one.
    store = RunStore(isolated_dirs)
    store.set_status(first["circle"], "finished", summary={"test": {"circle": {}}})
    duplicate = store.create_run(baseline_configs(doc)["circle"])
    assert find_baselines(doc, isolated_dirs)["circle"] == first["circle"]

    # A failed or stopped baseline is not reused: a new one is queued.
    store.set_status(first["xor"], "failed", "boom")
    again = find_or_submit_baselines(doc, isolated_dirs)
    assert again["circle"] == first["circle"] and again["xor"] not in (first["xor"], duplicate)
    assert len(queued) == 3


def test_a_hand_started_single_task_run_with_the_same_settings_is_reused(tiny_doc,
                                                                          isolated_dirs):
    doc = tiny_doc({"tasks": [{"name": "circle"}, {"name": "xor"}]})
    store = RunStore(isolated_dirs)
    by_hand = baselines.baseline_configs(doc)["circle"].model_copy(update={"name": "mine"})
    run_id = store.create_run(by_hand)
    assert find_baselines(doc, isolated_dirs) == {"circle": run_id}
