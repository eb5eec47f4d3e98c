"""The one Pareto-front definition (mtl_core.pareto) on hand-made ties, and the sweep's
verdict on whether the test set agrees with the validation choice."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtl_core import lessons, pareto, sweep
from mtl_core.config import load_config
from mtl_core.data import load_suite


def test_exact_ties_are_all_on_the_front():
    # Five runs with the same two accuracies (the old 100-point validation split did this).
    points = [[0.88, 0.90]] * 5
    assert pareto.pareto_front(points, [True, True]) == [0, 1, 2, 3, 4]


def test_a_tie_on_one_task_and_a_win_on_the_other_dominates():
    # (0.9, 0.8) is as good on task 1 and better on task 2 than (0.9, 0.7): it dominates.
    points = [[0.9, 0.8], [0.9, 0.7], [0.8, 0.9], [0.8, 0.9]]
    assert pareto.pareto_front(points, [True, True]) == [0, 2, 3]
    assert pareto.dominates([0.9, 0.8], [0.9, 0.7], [True, True])
    assert not pareto.dominates([0.8, 0.9], [0.8, 0.9], [True, True])  # equal: no


def test_text_and_code_say_the_same_thing():
    # "No other run beats it on both tasks" would keep (0.9, 0.7): nothing is strictly
    # better on both. The definition used everywhere drops it.
    assert "at least as good on both" in pareto.DEFINITION
    assert "strictly better on at least one" in pareto.DEFINITION
    assert pareto.DEFINITION in lessons.get_lesson("choosing_weights").text


def test_mixed_directions_and_nan():
    # accuracy (higher) and MSE (lower); the NaN run is never on the front, never dominates.
    points = [[0.9, 0.2], [0.9, 0.2], [0.8, 0.1], [0.95, 0.3], [math.nan, 0.0], [0.8, 0.3]]
    assert pareto.pareto_front(points, [True, False]) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_the_fast_two_objective_front_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(300, 2)).astype(float)  # many ties on purpose
    fast = pareto.pareto_mask(values)
    slow = [not any(pareto.dominates(values[j], values[i], [False, False])
                    for j in range(len(values))) for i in range(len(values))]
    assert fast.tolist() == slow


def test_sweep_module_uses_the_same_definition():
    assert sweep.pareto_front is pareto.pareto_front


def _table(val, test, chosen):
    rows = []
    for i, ((v1, v2), (t1, t2)) in enumerate(zip(val, test, strict=True)):
        w = [0.0, 0.25, 0.5, 0.75, 1.0][i]
        rows.append({"run_id": f"r{i}", "method": "static", "w_a": w, "w_b": 1 - w,
                     "val_a": v1, "val_b": v2, "test_a": t1, "test_b": t2,
                     "chosen": i == chosen})
    frame = pd.DataFrame(rows)
    frame.attrs.update(tasks=["a", "b"], higher_is_better={"a": True, "b": True})
    return frame


def test_test_disagreeing_with_validation_is_said_plainly():
    # The case: validation picks 0.75/0.25, on test 0.25/0.75 beats it on both tasks.
    val = [(0.80, 0.95), (0.85, 0.93), (0.88, 0.90), (0.92, 0.91), (0.95, 0.80)]
    test = [(0.80, 0.95), (0.90, 0.93), (0.88, 0.90), (0.89, 0.91), (0.95, 0.80)]
    verdict = sweep.check_on_test(_table(val, test, chosen=3))
    assert not verdict.agrees and verdict.beaten_by == ["r1"]
    assert "disagrees" in verdict.text and "0.75/0.25" in verdict.text
    assert "0.25/0.75" in verdict.text


def test_test_agreeing_with_validation():
    val = [(0.80, 0.95), (0.85, 0.93), (0.88, 0.90), (0.92, 0.92), (0.95, 0.80)]
    verdict = sweep.check_on_test(_table(val, val, chosen=3))
    assert verdict.agrees and "agrees" in verdict.text and not verdict.beaten_by


def test_no_verdict_before_the_chosen_run_has_test_metrics():
    val = [(0.8, 0.9)] * 5
    test = [(math.nan, math.nan)] * 5
    assert sweep.check_on_test(_table(val, test, chosen=0)) is None


def test_choosing_weights_validation_split_is_large_enough_not_to_tie():
    cfg = load_config(lessons.LESSONS_DIR / "choosing_weights.yaml")
    names = [t.name for t in cfg.tasks]
    data = load_suite(cfg.data, cfg.seed, names)
    assert len(data.val) >= 1000  # accuracy in steps of 0.001, not 0.01
    assert len(data.test) >= 1000
