"""The "Run this lesson" part of a lesson card: its claim as a check, a button that queues
all of the lesson's presets (and their single-task baselines where the claim needs them,
reused when they exist) through mtl_core.jobs as the viewer's runs, and, inside the card,
their comparison (per preset the claim's figure, mean ± sd over the replicas' seeds) and the
claim's verdict, refreshed while they train. Training happens in the workers, never here;
the claim itself is evaluated by mtl_core.lesson_claims.
"""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from mtl_core.config import ConfigError
from mtl_core.lesson_claims import CLAIMS, LETTERS, LessonResult, evaluate, lesson_runs
from mtl_core.lessons import Lesson
from mtl_core.metrics import mean_sd
from ui.state import runs_dir
from ui.text import md_lines

REFRESH_S = 2.0
RUNS_KEY = "_lesson_runs"  # session_state: {lesson id: {label: run id}}


def _ids(lesson: Lesson) -> dict[str, str] | None:
    return (st.session_state.get(RUNS_KEY) or {}).get(lesson.id)


def _start(lesson: Lesson) -> None:
    from ui.identity import current_actor

    try:
        ids = lesson_runs(lesson.id, runs_dir(), owner=current_actor())
    except (ConfigError, ValueError, OSError) as exc:  # QuotaError is a ValueError
        st.error(f"Could not start the lesson: {md_lines(exc)}")
        return
    st.session_state.setdefault(RUNS_KEY, {})[lesson.id] = ids


def _spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    mean, sd = mean_sd(finite)
    return f"{mean:+.4g} ± {sd:.3g}"


def _table(lesson: Lesson, result: LessonResult) -> pd.DataFrame:
    claim = CLAIMS[lesson.id]
    rows = []
    for i, variant in enumerate(lesson.variants):
        label = LETTERS[i]
        figures = result.figures.get(label, [])
        rows.append({"preset": f"{label}: {variant}", "status": result.statuses.get(label),
                     f"{claim.preset_figure}, mean ± sd": _spread(figures) if figures else "–",
                     "per seed": ", ".join(f"{v:+.3g}" for v in figures)})
    if result.check is not None:
        rows.append({"preset": "claim", "status": "",
                     f"{claim.preset_figure}, mean ± sd": f"{claim.figure}: "
                     + _spread(result.check.figures),
                     "per seed": ", ".join(f"{v:+.3g}" for v in result.check.figures)})
    return pd.DataFrame(rows)


def _results(lesson: Lesson, ids: dict[str, str], polling: bool) -> None:
    try:
        result = evaluate(lesson.id, ids, runs_dir())
    except KeyError:  # a run was deleted meanwhile
        st.warning("Some of this lesson's runs were deleted; run it again.")
        return
    if polling and result.done:
        st.rerun()  # every run ended: a full rerun declares the fragment without polling
    with st.container(key=f"lesson_table_{lesson.id}"):  # a static table: its text is on the page
        st.table(_table(lesson, result).set_index("preset"))
    # presets sharing a data set share their baselines: count each run once
    by_id = {ids[label]: (label, s) for label, s in result.statuses.items()}
    baselines = sum(label.startswith("baseline:") for label, _ in by_id.values())
    if not result.done:
        finished = sum(s == "finished" for _, s in by_id.values())
        st.caption(f":material/hourglass_top: Training: {finished} of {len(by_id)} "
                   f"runs finished ({baselines} of them single-task baselines). The verdict "
                   "appears when all have finished.")
    elif result.failed:
        st.error("Not every run finished (" + ", ".join(
            f"{label}: {result.statuses[label]}" for label in result.failed)
            + "), so the claim cannot be checked.")
    elif result.check is not None:
        check = result.check
        box = st.success if check.passed else st.error
        box(f"**Claim {'passed' if check.passed else 'failed'}: {check.held} of "
            f"{len(check.figures)} seeds.** {check.text()}",
            icon=":material/check_circle:" if check.passed else ":material/cancel:")


def _live(ids: dict[str, str]) -> bool:
    from ui.state import get_store

    store = get_store()
    for run_id in ids.values():
        try:
            if store.get_run(run_id).is_live:
                return True
        except KeyError:
            continue
    return False


def panel(lesson: Lesson) -> None:
    """The claim, the button and, once started, the runs' comparison and the verdict."""
    claim = CLAIMS.get(lesson.id)
    if claim is None:
        return
    st.markdown(f"**The claim, checked:** {claim.text}: {claim.figure} {claim.rule} in at "
                "least 4 of 5 seeds (each preset trains seeds 0–4 as one stacked run"
                + (", against single-task baselines of the same seeds" if
                   claim.needs_baselines else "") + ").")
    if st.button("Run this lesson", key=f"lesson_run_{lesson.id}", type="primary",
                 icon=":material/science:",
                 help="Train all of this lesson's presets" + (" and their single-task "
                      "baselines" if claim.needs_baselines else "") + ", then check the claim "
                      "here"):
        _start(lesson)
    ids = _ids(lesson)
    if not ids:
        return
    live = _live(ids)
    st.fragment(run_every=REFRESH_S if live else None)(_results)(lesson, ids, live)
