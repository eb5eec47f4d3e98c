"""AppTest of the gradient geometry page: contours, Pareto set, paths, arrows, controls."""
from __future__ import annotations

import numpy as np
import pytest
from app_support import plotly_figures
from streamlit.testing.v1 import AppTest

from mtl_core import geometry as geo

TIMEOUT = 120  # paths are computed in the page (two scalars, but a loaded CPU)


@pytest.fixture
def page(isolated_dirs) -> AppTest:
    at = AppTest.from_file("../pages/geometry.py", default_timeout=TIMEOUT)
    at.session_state["geo_problem"] = "scales"
    at.session_state["geo_methods"] = ["static", "mgda"]
    at.session_state["geo_starts_scales"] = ["(-4, 4)"]
    at.session_state["geo_steps_scales"] = 300
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _traces(fig: dict, name: str) -> list[dict]:
    return [t for t in fig["data"] if t.get("name") == name]


def test_page_draws_contours_pareto_set_paths_and_arrows(page):
    figs = plotly_figures(page)
    land = figs["geo_landscape"]
    assert land["data"][0]["type"] == "contour"
    pareto = _traces(land, "Pareto set")[0]
    # The scales problem's Pareto set is the segment between (-2, -2) and (2, 2).
    xs, ys = np.array(pareto["x"]), np.array(pareto["y"])
    assert np.all(np.abs(xs - ys) < 0.1) and xs.min() < -1.9 and xs.max() > 1.9
    static = _traces(land, "static")[0]
    expected = geo.run_path(geo.get_problem("scales"), "static", (-4, 4),
                            geo.PathSettings(steps=300, lr=geo.get_problem("scales").lr)).end
    assert static["x"][-1] == pytest.approx(expected[0], abs=1e-6)
    assert static["y"][-1] == pytest.approx(expected[1], abs=1e-6)
    assert _traces(land, "mgda")
    arrows = {a.get("text"): a for a in land["layout"]["annotations"]}
    assert {"−∇f1", "−∇f2", "static", "mgda"} <= set(arrows)
    # The static arrow starts at the picked point (default: the first start) and points
    # along static's update there, −(∇f1 + ∇f2).
    problem = geo.get_problem("scales")
    view = geo.updates_at(problem, problem.starts[0], ["static"])
    a = arrows["static"]
    assert (a["ax"], a["ay"]) == pytest.approx(problem.starts[0])
    drawn = np.array([a["x"] - a["ax"], a["y"] - a["ay"]])
    expected_dir = -view.task_grads.sum(0)
    cos = drawn @ expected_dir / (np.linalg.norm(drawn) * np.linalg.norm(expected_dir))
    assert cos == pytest.approx(1.0, abs=1e-6)
    assert "geo_loss_space" in figs
    table = page.dataframe[0].value
    assert list(table["method"]) == ["static", "mgda"]


def test_changing_the_weights_moves_the_static_path(page):
    before = _traces(plotly_figures(page)["geo_landscape"], "static")[0]["x"][-1]
    page.number_input(key="geo_w1").set_value(0.0).run()
    assert not page.exception
    after = _traces(plotly_figures(page)["geo_landscape"], "static")[0]
    # w1 = 0: static follows task 2 alone, towards its minimum at (2, 2).
    assert after["x"][-1] != pytest.approx(before)
    assert after["x"][-1] == pytest.approx(2.0, abs=0.3)


def test_a_bad_extra_start_is_refused_next_to_the_control(page):
    page.text_input(key="geo_extra").input("one, two").run()
    assert any("Extra start" in e.value and "one, two" in e.value for e in page.error)
    page.text_input(key="geo_extra").input("1, -1").run()
    assert not page.error
    assert len(_traces(plotly_figures(page)["geo_landscape"], "static")) == 2
