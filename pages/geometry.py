"""Gradient geometry: two tasks over a plane of two shared parameters.

Contours of each task's loss and of their weighted sum, the Pareto set, and the paths of the
methods you pick from several starts; at a point you pick, each task's gradient and each
method's update as arrows. The paths come from `mtl_core.geometry`, which drives the trainer's
own method objects on two scalars: the only "training" in this process, and a tiny one (torch
is imported inside it, after the page's first paint).
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

import numpy as np
import pandas as pd
import streamlit as st

from mtl_core import geometry as geo
from ui import geometry_charts as gc
from ui.text import md_text

DEFAULT_METHODS = ["static", "mgda", "pcgrad"]
SHOWN = {"sum": "weighted sum w₁·f₁ + w₂·f₂", "task1": "task 1 loss f₁", "task2": "task 2 loss f₂"}


@st.cache_data(max_entries=8, show_spinner=False)
def _surface(name: str) -> tuple[geo.Surface, np.ndarray, np.ndarray]:
    problem = geo.get_problem(name)
    pareto = geo.pareto_set(problem)
    return geo.surface(problem), pareto, problem.losses(pareto)


@st.cache_data(max_entries=64, show_spinner=False)
def _path(name: str, method: str, start: tuple[float, float], steps: int, lr: float,
          weights: tuple[float, float]) -> geo.Path:
    settings = geo.PathSettings(steps=steps, lr=lr, weights=weights)
    return geo.run_path(geo.get_problem(name), method, start, settings)


def _parse_start(text: str) -> tuple[tuple[float, float] | None, str | None]:
    if not text.strip():
        return None, None
    try:
        x1, x2 = (float(v) for v in text.split(","))
    except ValueError:
        return None, f"Extra start: write two numbers as `x1, x2` (got {text!r})."
    if not all(np.isfinite([x1, x2])):
        return None, f"Extra start: both numbers must be finite (got {text!r})."
    return (x1, x2), None


st.title("Gradient geometry")
st.caption("Two tasks, two shared parameters: every gradient-method paper's picture, live. "
           "The paths use the same method objects as training, so what you see here is what "
           "the method does to a network's shared weights, on a problem small enough to draw.")

names = list(geo.PROBLEMS)
left, right = st.columns([1, 3])
with left:
    name = st.selectbox("Problem", names, format_func=lambda n: geo.PROBLEMS[n].title,
                        key="geo_problem")
    problem = geo.PROBLEMS[name]
    methods = st.multiselect("Methods", geo.applicable_methods(), default=DEFAULT_METHODS,
                             key="geo_methods",
                             help="Every method of the trainer, through the same method "
                                  "objects as training; each path takes about a second or two "
                                  "on a laptop CPU.")
    labels = [f"({s[0]:g}, {s[1]:g})" for s in problem.starts]
    picked_starts = st.multiselect("Starts", labels, default=labels[:3], key=f"geo_starts_{name}",
                                   max_selections=geo.MAX_STARTS)
    extra, extra_error = _parse_start(st.text_input("Extra start (x1, x2)", key="geo_extra",
                                                    placeholder="e.g. 2, -3"))
    if extra_error:
        st.error(md_text(extra_error))  # it quotes what was typed
    steps = st.number_input("Steps", 1, geo.MAX_STEPS, problem.steps, step=100,
                            key=f"geo_steps_{name}")
    lr = st.number_input("Learning rate (Adam)", 1e-4, 10.0, problem.lr, format="%.4f",
                         key=f"geo_lr_{name}")
    w1 = st.number_input("Task 1 weight w₁", 0.0, 10.0, 1.0, step=0.25, key="geo_w1")
    w2 = st.number_input("Task 2 weight w₂", 0.0, 10.0, 1.0, step=0.25, key="geo_w2")
    shown = st.radio("Contours of", list(SHOWN), format_func=SHOWN.get, key="geo_shown")
    st.markdown("**Arrows at the point**")
    (bx0, bx1), (by0, by1) = problem.bounds
    # Default: the first published start, where the tasks already pull apart.
    px = st.number_input("x₁", bx0, bx1, float(problem.starts[0][0]), key=f"geo_px_{name}")
    py = st.number_input("x₂", by0, by1, float(problem.starts[0][1]), key=f"geo_py_{name}")

settings = geo.PathSettings(steps=int(steps), lr=float(lr), weights=(float(w1), float(w2)))
errors = geo.check_settings(settings)
for field, message in errors:
    left.error(f"{field}: {message}")
starts = [problem.starts[labels.index(label)] for label in picked_starts]
if extra is not None:
    starts.append(extra)

with right:
    st.markdown(f"**{problem.title}.** {problem.description}  \n*Source:* {problem.source}")
    surf, pareto, front = _surface(name)
    view = None if errors else geo.updates_at(problem, (px, py), methods, settings)
    chart = st.empty()
    chart.plotly_chart(gc.landscape(problem, surf, shown, settings.weights, pareto, [],
                                    methods, view), key="geo_landscape_empty")
    paths: list[geo.Path] = []
    if not errors and methods and starts:
        progress = st.progress(0.0, text="Computing paths…")
        total = len(methods) * len(starts)
        for i, (method, start) in enumerate((m, s) for m in methods for s in starts):
            paths.append(_path(name, method, tuple(start), settings.steps, settings.lr,
                               settings.weights))
            progress.progress((i + 1) / total, text=f"{method} from {start}")
        progress.empty()
        chart.plotly_chart(gc.landscape(problem, surf, shown, settings.weights, pareto, paths,
                                        methods, view), key="geo_landscape")

if paths:
    st.subheader("Where each path ends")
    rows = [{"method": p.method, "start": f"({p.start[0]:g}, {p.start[1]:g})",
             "end x₁": p.end[0], "end x₂": p.end[1],
             "task 1 loss": p.losses[-1, 0], "task 2 loss": p.losses[-1, 1],
             "Pareto-stationarity": geo.pareto_stationarity(problem, p.end),
             "seconds": p.seconds, "note": p.error or p.note} for p in paths]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("end x₁", "end x₂", "task 1 loss", "task 2 loss",
                                          "Pareto-stationarity", "seconds")})
    st.caption("Pareto-stationarity: the length of the shortest vector between the two task "
               "gradients (in their convex hull) over the longer gradient. 0 means no step "
               "can lower both losses at once: MGDA's update vanishes exactly there.")
    st.plotly_chart(gc.loss_space(problem, front, paths, methods), key="geo_loss_space")
if view is not None:
    st.subheader(f"At ({view.point[0]:g}, {view.point[1]:g})")
    g1, g2 = view.task_grads
    cos = float(g1 @ g2 / (np.linalg.norm(g1) * np.linalg.norm(g2) or 1.0))
    st.caption(f"Cosine between the task gradients: {cos:+.3f} (below 0: they conflict). "
               "Arrows: each task's descent direction and each method's first update from "
               "a fresh start at this point (−the gradient it hands the optimizer), drawn "
               "to a common scale.")
    st.dataframe(pd.DataFrame(
        [{"vector": f"−∇f{t + 1}", "x₁": -view.task_grads[t][0], "x₂": -view.task_grads[t][1],
          "norm": float(np.linalg.norm(view.task_grads[t]))} for t in range(2)]
        + [{"vector": m, "x₁": u[0], "x₂": u[1], "norm": float(np.linalg.norm(u))}
           for m, u in view.updates.items()]), hide_index=True)
