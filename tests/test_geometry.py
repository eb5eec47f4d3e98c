"""The gradient geometry sandbox: problems, Pareto set, and paths driven by the trainer's own
method objects."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_core import geometry as geo
from mtl_core.weighting import METHODS
from mtl_core.weighting.base import StepResult, WeightingMethod

CAGRAD = geo.get_problem("cagrad_toy")
# Liu et al. 2021's starts (toy.py) and their Pareto set, drawn there as x1 in [-7, 7] at
# x2 = -8.3552; exactly, its x2 moves a little with x1 (the grid finds -8.45 to -8.05).
CAGRAD_STARTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)]
PARETO_X2 = -8.3552


def test_cagrad_toy_matches_the_published_functions_shifted():
    # toy.py at (0, 0): c1 = c2 = 0 -> both losses 0; at (7, -8.3552) task 1 is at its minimum.
    np.testing.assert_allclose(CAGRAD.losses(np.array([0.0, 0.0])), [21.0, 21.0])
    x = np.array([7.0, PARETO_X2])
    f1_sq = (0.1 * (PARETO_X2 + 8) ** 2) / 10 - 20
    c2 = np.tanh(-PARETO_X2 / 2)
    assert CAGRAD.losses(x)[0] == pytest.approx(f1_sq * c2 + 21, abs=1e-9)


def test_pareto_set_of_the_cagrad_toy_is_the_published_segment():
    ps = geo.pareto_set(CAGRAD)
    assert len(ps) > 50
    assert np.all(np.abs(ps[:, 1] - PARETO_X2) < 0.35)
    # Every non-dominated grid point is (nearly) Pareto-stationary: gradients opposite.
    assert max(geo.pareto_stationarity(CAGRAD, x) for x in ps[::5]) < 0.01
    assert ps[:, 0].min() == pytest.approx(-7, abs=0.2) and ps[:, 0].max() == pytest.approx(
        7, abs=0.2)


@pytest.mark.parametrize("start", CAGRAD_STARTS)
def test_mgda_ends_on_the_pareto_set_from_the_published_starts(start):
    path = geo.run_path(CAGRAD, "mgda", start, geo.PathSettings(steps=800, lr=0.1))
    assert path.error is None
    end = path.end
    assert -7.05 <= end[0] <= 7.05 and abs(end[1] - PARETO_X2) < 0.35, end
    assert geo.pareto_stationarity(CAGRAD, end) < 1e-2  # MGDA's update vanishes only there
    ps = geo.pareto_set(CAGRAD)
    assert np.min(np.linalg.norm(ps - end, axis=1)) < 0.1


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.25, 0.75), (0.8, 0.2)])
def test_static_ends_where_the_weighted_sums_gradient_vanishes_on_the_cagrad_toy(weights):
    # Below x2 = 0 the weighted sum's x1-derivative vanishes at x1 = 7 (w1 - w2) / (w1 + w2).
    w1, w2 = weights
    path = geo.run_path(CAGRAD, "static", (-8.5, -5.0),
                        geo.PathSettings(steps=800, lr=0.1, weights=weights))
    grads = geo.task_gradients(CAGRAD, path.end)
    assert np.linalg.norm(w1 * grads[0] + w2 * grads[1]) < 0.02
    assert path.end[0] == pytest.approx(7 * (w1 - w2) / (w1 + w2), abs=0.05)


@pytest.mark.parametrize("name", ["conflict", "scales"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.2, 1.0)])
def test_static_ends_at_the_closed_form_optimum_of_the_quadratic_problems(name, weights):
    problem = geo.get_problem(name)
    optimum = geo.static_optimum(problem, weights)
    path = geo.run_path(problem, "static", problem.starts[0],
                        geo.PathSettings(steps=1500, lr=0.02, weights=weights))
    np.testing.assert_allclose(path.end, optimum, atol=0.03)


class _PushLeft(WeightingMethod):
    """A stand-in method: hands the optimizer a gradient of (+1, 0) whatever the losses."""

    def backward(self, losses, features, model, known=None):
        x = model.shared_parameters()[0]
        x.grad = torch.tensor([1.0, 0.0], dtype=x.dtype)
        return StepResult(weights=torch.ones_like(losses.detach()))


def test_the_path_comes_from_the_registered_method_object(monkeypatch):
    start = (1.0, 2.0)
    settings = geo.PathSettings(steps=30, lr=0.1, optimizer="sgd")
    before = geo.run_path(CAGRAD, "pcgrad", start, settings)
    entry = METHODS.get("pcgrad")
    monkeypatch.setitem(METHODS._entries, "pcgrad",
                        type(entry)(entry.name, entry.description, entry.params, _PushLeft,
                                    entry.extra))
    swapped = geo.run_path(CAGRAD, "pcgrad", start, settings)
    # SGD with momentum 0.9 (the trainer's make_optimizer) on a constant gradient (1, 0):
    assert np.all(swapped.points[:, 1] == pytest.approx(2.0))
    assert np.all(np.diff(swapped.points[:, 0]) < 0)
    expected_x = 1.0 - 0.1 * sum(sum(0.9 ** j for j in range(k + 1)) for k in range(30))
    assert swapped.end[0] == pytest.approx(expected_x, abs=1e-4)
    assert not np.allclose(before.points, swapped.points)


def test_swapping_one_real_method_for_another_gives_the_others_path(monkeypatch):
    start = (-8.5, 7.5)
    settings = geo.PathSettings(steps=60, lr=0.1)
    mgda = geo.run_path(CAGRAD, "mgda", start, settings)
    pcgrad = geo.run_path(CAGRAD, "pcgrad", start, settings)
    assert not np.allclose(mgda.points, pcgrad.points)
    monkeypatch.setitem(METHODS._entries, "pcgrad", METHODS.get("mgda"))
    np.testing.assert_allclose(geo.run_path(CAGRAD, "pcgrad", start, settings).points,
                               mgda.points)


def test_weights_reach_the_method_as_in_the_trainer():
    # Static on w = (1, 0) follows task 1 alone: it ends at task 1's minimum (-3, 0).
    problem = geo.get_problem("conflict")
    path = geo.run_path(problem, "static", (2.0, 2.0),
                        geo.PathSettings(steps=1500, lr=0.02, weights=(1.0, 0.0)))
    np.testing.assert_allclose(path.end, [-3.0, 0.0], atol=0.03)
    np.testing.assert_allclose(path.weights[0], [1.0, 0.0])


def test_every_registered_method_runs_a_short_path():
    for method in geo.applicable_methods():
        path = geo.run_path(CAGRAD, method, (-8.5, 7.5), geo.PathSettings(steps=5, lr=0.1))
        assert path.error is None, (method, path.error)
        assert path.points.shape == (6, 2) and np.isfinite(path.points).all(), method


def test_updates_at_a_point_are_each_methods_first_step():
    point = (0.0, 0.0)
    problem = geo.get_problem("conflict")
    view = geo.updates_at(problem, point, ["static", "mgda"])
    np.testing.assert_allclose(view.updates["static"], -view.task_grads.sum(0), atol=1e-5)
    # MGDA's update lowers both losses (or is 0): it has a non-negative dot with each -grad.
    for g in view.task_grads:
        assert float(view.updates["mgda"] @ -g) >= -1e-6


def test_settings_out_of_range_are_refused_with_the_field_named():
    errors = dict(geo.check_settings(geo.PathSettings(steps=0, lr=-1, weights=(0.0, 0.0))))
    assert "steps" in errors and "(got 0)" in errors["steps"]
    assert "lr" in errors and "(got -1)" in errors["lr"]
    assert "weights" in errors
    with pytest.raises(ValueError, match="steps"):
        geo.run_path(CAGRAD, "static", (0, 0), geo.PathSettings(steps=10_000))
    with pytest.raises(ValueError, match="allowed"):
        geo.get_problem("nope")
