"""Loss-weight sweeps: the grid, the configs, the Pareto front, the choice, a real sweep."""
from __future__ import annotations

import math

import pytest

from mtl_core import jobs
from mtl_core.config import parse_config
from mtl_core.store import RunStore
from mtl_core.sweep import (
    chosen_by_validation,
    grid_size,
    list_sweeps,
    pareto_front,
    submit_sweep,
    sweep_configs,
    sweep_id_of,
    sweep_table,
    wait_for_sweep,
    weight_grid,
)

NAN = float("nan")

# --- the grid -------------------------------------------------------------------------------


def test_two_task_grid_is_exact():
    assert weight_grid(2, 5) == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert weight_grid(2, 2) == [(0.0, 1.0), (1.0, 0.0)]


def test_three_task_simplex_grid():
    grid = weight_grid(3, 3)
    assert len(grid) == 6 == grid_size(3, 3)
    assert set(grid) == {(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0),
                         (1, 0, 0)}
    for point in grid:
        assert sum(point) == pytest.approx(1.0) and min(point) >= 0


def test_larger_grids_stay_on_the_simplex():
    grid = weight_grid(4, 4)  # step 1/3
    assert len(grid) == len(set(grid)) == grid_size(4, 4) == 20
    for point in grid:
        assert sum(point) == pytest.approx(1.0)
        assert all(round(3 * w, 9) == round(3 * w) for w in point)  # multiples of 1/3


@pytest.mark.parametrize("n_tasks, n", [(1, 5), (2, 1), (3, 0)])
def test_grid_refuses_what_is_not_a_sweep(n_tasks, n):
    with pytest.raises(ValueError, match="at least 2"):
        weight_grid(n_tasks, n)


# --- the configs ----------------------------------------------------------------------------


def test_sweep_configs_set_the_weights_and_validate(tiny_doc):
    doc = tiny_doc({"tasks": [{"name": "circle"}, {"name": "distance"}],
                    "weighting": {"method": "dwa", "params": {"temperature": 3.0}}})
    configs = sweep_configs(doc, 3, extra_methods=("uncertainty", "pcgrad"))

    assert [c.name for c in configs] == ["sweep w=0/1", "sweep w=0.5/0.5", "sweep w=1/0",
                                         "sweep method=uncertainty", "sweep method=pcgrad"]
    assert [c.task_weights() for c in configs] == [
        {"circle": 0.0, "distance": 1.0}, {"circle": 0.5, "distance": 0.5},
        {"circle": 1.0, "distance": 0.0}, {"circle": 0.5, "distance": 0.5},
        {"circle": 0.5, "distance": 0.5}]
    assert [c.weighting.method for c in configs] == ["static"] * 3 + ["uncertainty", "pcgrad"]
    for cfg in configs:
        assert parse_config(cfg.to_dict()) == cfg
        assert cfg.model == parse_config(doc).model and cfg.optim == parse_config(doc).optim
    assert configs[0].weighting.params == {}  # dwa's temperature does not leak into static


def test_sweep_configs_refuse_bad_requests(tiny_doc):
    with pytest.raises(ValueError, match="at least 2 tasks"):
        sweep_configs(tiny_doc({"tasks": [{"name": "circle"}]}), 3)
    with pytest.raises(ValueError, match="static is what the grid"):
        sweep_configs(tiny_doc(), 3, extra_methods=("static",))
    with pytest.raises(ValueError, match="at most"):
        sweep_configs(tiny_doc(), 30)  # 4 tasks: C(32, 3) = 4960 runs
    with pytest.raises(Exception, match="unknown weighting method"):
        sweep_configs(tiny_doc(), 3, extra_methods=("magic",))


# --- the front and the choice ---------------------------------------------------------------


def test_pareto_front_with_ties_and_mixed_directions():
    # (accuracy: higher is better, mse: lower is better)
    points = [
        (0.90, 0.50),  # 0 front
        (0.80, 0.40),  # 1 front: worse accuracy but the best mse
        (0.85, 0.60),  # 2 dominated by 0 in both
        (0.90, 0.50),  # 3 a tie with 0: neither dominates, both on the front
        (0.95, 0.70),  # 4 front: the best accuracy
        (0.90, 0.55),  # 5 dominated by 0: equal accuracy, worse mse
        (NAN, 0.10),   # 6 incomplete: never on the front, never dominates
    ]
    assert pareto_front(points, [True, False]) == [0, 1, 3, 4]
    # Both higher-is-better: now (0.95, 0.70) dominates everything but the NaN point.
    assert pareto_front(points, [True, True]) == [4]
    # Both lower-is-better: (0.80, 0.40) dominates everything.
    assert pareto_front(points, [False, False]) == [1]


def test_pareto_front_of_three_objectives():
    points = [(1, 1, 1), (2, 0, 0), (1, 1, 0), (0, 0, 2)]
    assert pareto_front(points, [True, True, True]) == [0, 1, 3]
    assert pareto_front([], [True, True]) == []


def test_chosen_by_validation_by_hand():
    # accuracy scaled over [0.8, 0.95]: 0.667, 0, 1; mse scaled over [0.4, 0.7], flipped:
    # 0.667, 1, 0. Means: 0.667, 0.5, 0.5 -> point 0.
    points = [(0.90, 0.50), (0.80, 0.40), (0.95, 0.70)]
    assert chosen_by_validation(points, [True, False]) == 0
    # Make the third point's mse good too: it now wins on both.
    assert chosen_by_validation([*points[:2], (0.95, 0.45)], [True, False]) == 2
    # A task where every point ties adds the same to all; NaNs are skipped.
    assert chosen_by_validation([(0.5, NAN), (0.5, 1.0), (0.5, 2.0)], [True, False]) == 1
    assert chosen_by_validation([(NAN, 1.0)], [True, True]) is None


def test_the_chosen_point_is_on_the_front():
    points = [(0.7, 0.9), (0.72, 0.5), (0.6, 0.2), (0.75, 0.8), (0.5, 0.1)]
    for directions in ([True, False], [False, True], [True, True]):
        assert chosen_by_validation(points, directions) in pareto_front(points, directions)


def test_sweep_ids_are_read_back_from_run_names():
    assert sweep_id_of("sweep w=0.25/0.75 #3fa2c1") == "3fa2c1"
    assert sweep_id_of("sweep method=pcgrad #00ff00") == "00ff00"
    assert sweep_id_of("my run") is None and sweep_id_of("sweep #xyz") is None


# --- a real sweep through the jobs queue ----------------------------------------------------
@pytest.mark.slow  # the slow one (~10-40 s: worker processes train 4 small runs); runs in CI
def test_a_tiny_sweep_runs_through_jobs_and_marks_the_front(tiny_doc, isolated_dirs,
                                                             end_workers):
    # Just enough training (36 steps) for the weights to make a difference.
    doc = tiny_doc({"data": {"params": {"n_samples": 400, "n_test": 100}},
                    "tasks": [{"name": "circle"}, {"name": "distance"}],
                    "optim": {"epochs": 6, "lr": 0.03}})
    sweep = submit_sweep(doc, 3, isolated_dirs, extra_methods=("uncertainty",))
    assert len(sweep.run_ids) == 4

    seen: list[dict[str, int]] = []
    counts = wait_for_sweep(sweep.sweep_id, isolated_dirs, timeout=150, on_progress=seen.append)
    assert counts == {"finished": 4}, counts
    assert seen[-1] == {"finished": 4}

    store = RunStore(isolated_dirs)
    assert list_sweeps(store) == [sweep.sweep_id]
    table = sweep_table(store, sweep.sweep_id)
    assert list(table["run_id"]) == sweep.run_ids
    assert list(table["method"]) == ["static", "static", "static", "uncertainty"]
    assert list(table["w_circle"]) == [0.0, 0.5, 1.0, 0.5]
    assert list(table["w_distance"]) == [1.0, 0.5, 0.0, 0.5]
    assert table.attrs["metrics"] == {"circle": "accuracy", "distance": "mse"}
    assert table.attrs["higher_is_better"] == {"circle": True, "distance": False}
    for column in ("val_circle", "val_distance", "test_circle", "test_distance"):
        assert table[column].notna().all(), column

    # The marks agree with the front and the choice computed from the table's own values.
    points = table[["val_circle", "val_distance"]].to_numpy().tolist()
    front = pareto_front(points, [True, False])
    assert front and list(table.index[table["on_front"]]) == front
    assert table["chosen"].sum() == 1
    chosen = int(table.index[table["chosen"]][0])
    assert chosen == chosen_by_validation(points[:3], [True, False])
    # Chosen among the grid points, so on the grid's front (an extra method may beat it).
    assert chosen in pareto_front(points[:3], [True, False])
    # A task trained with weight 0 is the worst at it: the sweep's ends are real trade-offs.
    assert table["val_circle"].iat[0] == min(table["val_circle"])
    assert table["val_distance"].iat[2] == max(table["val_distance"])
    for run_id in sweep.run_ids:
        run = store.get_run(run_id)
        assert run.name.endswith(f" #{sweep.sweep_id}") and run.name.startswith("sweep ")
        assert math.isclose(run.summary["val"]["circle"]["accuracy"],
                            table.set_index("run_id").at[run_id, "val_circle"])


def test_add_methods_tags_new_points_and_skips_what_the_sweep_has(tiny_doc, monkeypatch):
    from mtl_core.sweep import add_methods, submit_sweep

    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)  # queue only, train nothing
    doc = tiny_doc({"tasks": [{"name": "circle"}, {"name": "distance"}]})
    sub = submit_sweep(doc, 2, extra_methods=["uncertainty"])
    store = RunStore()
    new = add_methods(store, sub.sweep_id, ["uncertainty", "pcgrad", "pcgrad"])
    assert len(new) == 1
    run = store.get_run(new[0])
    assert sweep_id_of(run.name) == sub.sweep_id and run.method == "pcgrad"
    assert [t["weight"] for t in run.config["tasks"]] == [0.5, 0.5]
    assert add_methods(store, sub.sweep_id, ["pcgrad"]) == []
    assert add_methods(store, "nosuch", ["mgda"]) == []
