"""Lessons: short plain-language texts, each with presets that load into Build & Train.

One card per lesson (`mtl_core.lessons.LESSONS`): what it is about, what to look for, a
question for the class, and per preset two buttons: "Load" fills every Train-page control with
the preset (`ui.train_run.request_load`) and opens that page; "Load and start" also queues it
as a run and makes it the current run, for a one-click demo. In class mode (`?mode=class`) the
Train page then shows only the essential controls plus the lesson's knobs
(`st.session_state["lesson_knobs"]`), and the URL keeps `mode=class`.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

import streamlit as st

from mtl_core.config import ExperimentConfig
from mtl_core.lessons import LESSONS, Lesson, load_preset
from ui import share
from ui.state import current_run_id, set_current_run
from ui.train_run import LESSON_KNOBS_KEY, TRAIN_PAGE, class_mode, request_load, submit_run

SWEEP_PAGE = "pages/sweep.py"
SWEEP_LESSON = "choosing_weights"
GEOMETRY_PAGE = "pages/geometry.py"
GEOMETRY_LESSON = "gradient_conflict"
PRESET_LETTERS = "ABCDEFGH"


def _query(run_id: str | None = None) -> dict[str, str]:
    """What the Train page's URL keeps: the run shown and class mode (st.switch_page clears
    the query string unless it is given)."""
    query = {}
    run_id = run_id or current_run_id()
    if run_id:
        query["run"] = run_id
    if class_mode():
        query[share.MODE_PARAM] = share.CLASS_MODE
    return query


def _focus(lesson: Lesson) -> None:
    """In class mode the Train page shows this lesson's knobs; out of it, no lesson focus."""
    if class_mode():
        st.session_state[LESSON_KNOBS_KEY] = list(lesson.knobs)
    else:
        st.session_state.pop(LESSON_KNOBS_KEY, None)


def load(lesson: Lesson, variant: int) -> None:
    """Fill the Train page's controls with a preset and open that page."""
    request_load(load_preset(lesson, variant))
    _focus(lesson)
    st.switch_page(TRAIN_PAGE, query_params=_query())


def load_and_start(lesson: Lesson, variant: int) -> None:
    """Queue the preset as a run, make it the current run, and watch it on the Train page."""
    cfg: ExperimentConfig = load_preset(lesson, variant)
    run_id = submit_run(cfg)
    if run_id is None:
        return
    request_load(cfg)
    _focus(lesson)
    set_current_run(run_id)
    st.switch_page(TRAIN_PAGE, query_params=_query(run_id))


def _card(number: int, lesson: Lesson) -> None:
    with st.expander(f"**{number}. {lesson.title}**", expanded=number == 1):
        st.markdown(lesson.text)
        st.markdown("**What to look for**\n" + "\n".join(f"- {item}" for item in lesson.look_for))
        st.info(f"**Question for the class:** {lesson.question}", icon="💬")
        st.caption("Knobs: " + ", ".join(f"`{k}`" for k in lesson.knobs))
        for i, variant in enumerate(lesson.variants):
            label = (f"Preset {PRESET_LETTERS[i]}: {variant}" if len(lesson.variants) > 1
                     else f"Preset: {variant}")
            c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="center")
            c1.markdown(f"**{label}**  \n`{lesson.presets[i]}`")
            if c2.button("Load preset", key=f"lesson_load_{lesson.id}_{i}",
                         icon=":material/upload:", width="stretch",
                         help="Fill every control of Build & Train with this preset"):
                load(lesson, i)
            if c3.button("Load and start", key=f"lesson_start_{lesson.id}_{i}",
                         icon=":material/play_arrow:", width="stretch",
                         help="Load it and start training right away"):
                load_and_start(lesson, i)
        if lesson.id == SWEEP_LESSON:
            st.caption("Load the preset, then open the Weight sweep page: a new sweep starts "
                       "from the Build & Train settings.")
            st.page_link(SWEEP_PAGE, label="Open the Weight sweep page",
                         icon=":material/tune:", query_params=_query())
        if lesson.id == GEOMETRY_LESSON:
            st.page_link(GEOMETRY_PAGE, label="See conflict on the Gradient geometry page",
                         icon=":material/insights:", query_params=_query())


st.title("Lessons")
if class_mode():
    st.caption(":material/school: Class mode: a loaded preset opens Build & Train with only "
               "the essential controls and this lesson's knobs.")
else:
    st.caption("Each lesson is a short idea, one or two presets that load into Build & Train, "
               "what to look for, and a question for the class. Tip: add `?mode=class` to "
               "the address to hide advanced controls on a projector.")
for _number, _lesson in enumerate(LESSONS, start=1):
    _card(_number, _lesson)
