"""Weight sweep: how do I choose the loss weights? Train a grid of them and ask the
validation set.

Two tasks: w1 over N points in [0, 1] with w2 = 1 − w1; three: a simplex grid
(`mtl_core.sweep.weight_grid`). The base config is the Build & Train page's current one, a
finished run's, or a lesson preset. The runs go through the jobs queue (`submit_sweep`), so at
most MTL_MAX_JOBS train at once. The result is the Pareto front of the tasks' validation
metrics, the grid point chosen by validation, adaptive methods as extra points, and, only
after the choice, the chosen point's test metrics. The results refresh while the sweep's runs
train (a fragment that stops polling when they have all ended).
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

import itertools
import time
from typing import Any

import pandas as pd
import streamlit as st

from mtl_core.config import ConfigError, ExperimentConfig, TaskConfig, parse_config
from mtl_core.lessons import LESSONS, get_lesson, load_preset
from mtl_core.pareto import DEFINITION
from mtl_core.store import LIVE_STATUSES, RunInfo, RunStore
from mtl_core.sweep import (
    MAX_SWEEP_RUNS,
    add_methods,
    check_on_test,
    grid_size,
    submit_sweep,
    sweep_id_of,
    sweep_progress,
    sweep_table,
)
from ui import config_form as form
from ui import sweep_charts as sc
from ui.identity import current_actor
from ui.state import current_run_id, get_store, runs_dir
from ui.text import md_lines, md_text
from ui.train_run import TRAIN_PAGE, request_load

REFRESH_S = 2.0
PLOTLY_CONFIG = {"displaylogo": False}
SOURCES = ("Build & Train page", "A finished run", "A lesson preset")
SOURCE_KEY, RUN_KEY, LESSON_KEY = "sweep_src", "sweep_run", "sweep_lesson"
PICK_KEY = "sweep_pick"
DEFAULT_LESSON = "choosing_weights:0"
MAX_TASKS = 3
_NOTICE = "_sweep_notice"
RUN_EVERY_KEY = "_sweep_run_every"  # the refresh the last full run chose


def _chart(fig: Any, key: str) -> None:
    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG)


# ---------------------------------------------------------------- the base config


def lesson_options() -> dict[str, str]:
    """{"lesson_id:variant": label} for every lesson preset."""
    return {f"{lesson.id}:{i}": f"{lesson.title} — {variant}"
            for lesson in LESSONS for i, variant in enumerate(lesson.variants)}


def _base_config(store: RunStore) -> ExperimentConfig | None:
    """The config the sweep starts from, per the chosen source; None (with the reason shown)
    when there is none to use."""
    source = st.radio("Start from", SOURCES, key=SOURCE_KEY, horizontal=True,
                      help="The sweep copies this config and changes only the task weights "
                           "(and, for the extra points, the weighting method).")
    if source == SOURCES[0]:
        cfg, errors = form.validate(form.config_from_state(st.session_state))
        if errors is not None:
            st.warning("The Build & Train page's settings have problems; fix them there "
                       f"first:  \n{md_lines(errors)}")
        return cfg
    if source == SOURCES[1]:
        finished = [r for r in store.list_runs(["finished"]) if sweep_id_of(r.name) is None]
        if not finished:
            st.info("No finished run yet (runs of earlier sweeps are not offered).")
            return None
        by_id = {r.id: r for r in finished}
        if st.session_state.get(RUN_KEY) not in by_id:
            current = current_run_id()
            st.session_state[RUN_KEY] = current if current in by_id else finished[0].id
        run_id = st.selectbox("Run", list(by_id), key=RUN_KEY,
                              format_func=lambda i: f"{by_id[i].name} · {i}")
        return _parsed(by_id[run_id].config)
    options = lesson_options()
    if st.session_state.get(LESSON_KEY) not in options:
        st.session_state[LESSON_KEY] = DEFAULT_LESSON if DEFAULT_LESSON in options \
            else next(iter(options))
    choice = st.selectbox("Lesson preset", list(options), key=LESSON_KEY,
                          format_func=options.get)
    lesson_id, variant = choice.rsplit(":", 1)
    return load_preset(get_lesson(lesson_id), int(variant))


def _parsed(doc: dict[str, Any]) -> ExperimentConfig | None:
    try:
        return parse_config(doc)
    except ConfigError as exc:
        st.warning(f"That run's config no longer validates: {md_lines(exc)}")
        return None


def suite_tasks(cfg: ExperimentConfig) -> list[str]:
    """Tasks the base config's suite offers (its own task list when the suite cannot say)."""
    return form.task_names(cfg.data.suite, cfg.data.params) or list(cfg.task_weights())


def with_tasks(cfg: ExperimentConfig, tasks: list[str]) -> ExperimentConfig:
    """The base config restricted to `tasks` (their weights are what the sweep sets)."""
    doc = cfg.to_dict()
    doc["tasks"] = [TaskConfig(name=t).model_dump() for t in tasks]
    per_task = (doc.get("model", {}).get("heads") or {}).get("per_task") or {}
    if per_task:
        doc["model"]["heads"]["per_task"] = {t: w for t, w in per_task.items() if t in tasks}
    return parse_config(doc, trusted=False)  # the browser chose it: paths inside the roots


# ---------------------------------------------------------------- a new sweep


def _method_label(name: str) -> str:
    from mtl_core.weighting import METHODS

    return f"{name} ({METHODS.get(name).extra.get('kind', 'loss')})"


def _new_sweep(store: RunStore) -> None:
    cfg = _base_config(store)
    if cfg is None:
        return
    options = suite_tasks(cfg)
    chosen = [t for t, w in cfg.task_weights().items() if w > 0 and t in options]
    key = f"sweep_tasks_{cfg.data.suite}_{'_'.join(chosen)}"  # a new base: its own tasks
    if not set(st.session_state.get(key) or []) <= set(options):
        del st.session_state[key]
    st.caption(f"Base: **{md_text(cfg.name)}** · {cfg.data.suite} · {cfg.model.architecture} · "
               f"{cfg.optim.epochs} epochs · seed {cfg.seed}")
    c1, c2, c3 = st.columns([3, 1, 3])
    tasks = c1.multiselect("Tasks (2 or 3)", options, default=chosen[:MAX_TASKS], key=key,
                           max_selections=MAX_TASKS)
    n = int(c2.number_input("Points N", min_value=2, max_value=21, value=5, step=1,
                            key="sweep_n", help="Two tasks: w1 = 0, 1/(N−1), …, 1 and "
                                                "w2 = 1 − w1. Three: every (w1, w2, w3) "
                                                "in steps of 1/(N−1) that sums to 1."))
    from mtl_core.weighting import METHODS

    extras = c3.multiselect("Adaptive methods as extra points",
                            [m for m in METHODS.names() if m != "static"], key="sweep_extra",
                            format_func=_method_label,
                            help="Each trains once with equal weights; do they reach the "
                                 "front without any tuning?")
    if len(tasks) < 2:
        st.info("Pick two or three tasks.")
        return
    total = grid_size(len(tasks), n) + len(extras)
    grid_text = (f"w1 over {n} points, w2 = 1 − w1" if len(tasks) == 2
                 else f"a simplex grid of {grid_size(3, n)} points")
    try:
        from mtl_core.jobs import max_concurrent

        limit: Any = max_concurrent()
    except ValueError:
        limit = "?"
    st.caption(f"{grid_text}{f' + {len(extras)} extra' if extras else ''}: **{total} runs**, "
               f"at most {limit} training at a time.")
    with st.expander("Base config (YAML)"):
        st.code(cfg.to_yaml(), language="yaml")
    if st.button("Start sweep", type="primary", key="sweep_start", icon="▶️",
                 disabled=total > MAX_SWEEP_RUNS,
                 help=f"At most {MAX_SWEEP_RUNS} runs." if total > MAX_SWEEP_RUNS else None):
        try:
            from mtl_core.preflight import check_submit

            base = with_tasks(cfg, tasks)
            check_submit(base)  # what the CLI refuses at submit (device, table, size)
            sweep = submit_sweep(base, n, runs_dir(), extra_methods=extras,
                                 owner=current_actor())
        except (ConfigError, ValueError, OSError) as exc:
            st.error(f"Could not start the sweep: {md_lines(exc)}")
            return
        st.session_state[PICK_KEY] = sweep.sweep_id
        st.session_state[_NOTICE] = (f"Sweep #{sweep.sweep_id} queued: "
                                     f"{len(sweep.run_ids)} runs.")
        st.rerun()


# ---------------------------------------------------------------- results


def sweeps_in(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """{sweep id: its runs}, newest sweep first (one pass over the runs)."""
    out: dict[str, list[RunInfo]] = {}
    for run in runs:  # newest first
        sweep_id = sweep_id_of(run.name)
        if sweep_id is not None:
            out.setdefault(sweep_id, []).append(run)
    return out


def _sweep_label(sweep_id: str, runs: list[RunInfo]) -> str:
    # Nothing that changes while it trains: a keyed selectbox keeps showing its first labels.
    first = runs[-1]  # the oldest: the first grid point
    tasks = ", ".join(t["name"] for t in first.config.get("tasks") or [])
    started = time.strftime("%H:%M", time.localtime(first.created_at))
    return f"#{sweep_id} · {first.suite}: {tasks} · started {started}"


def _figures(table: pd.DataFrame) -> None:
    tasks = table.attrs["tasks"]
    if len(tasks) == 2:
        _chart(sc.front_figure(table, tasks[0], tasks[1]), "sweep_front")
        st.caption(f"Each dot is a run. The orange line joins the Pareto front: {DEFINITION}. "
                   "The star is the grid point chosen by validation (best average of the two "
                   "metrics, each scaled to [0, 1]).")
        return
    pairs = list(itertools.combinations(tasks, 2))
    for start in range(0, len(pairs), 3):
        for col, (a, b) in zip(st.columns(3), pairs[start:start + 3], strict=False):
            with col:
                _chart(sc.front_figure(table, a, b, line_front=False), f"sweep_pair_{a}_{b}")
    st.caption("Pairwise views; the orange rings mark the Pareto front over all three tasks "
               "(a front point can look dominated in one pair).")
    if len(tasks) == 3:
        color = st.selectbox("Colour the simplex by", tasks, key="sweep_ternary_task")
        _chart(sc.ternary_figure(table, color or tasks[0]), "sweep_ternary")


def chosen_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Test metrics of the chosen grid point and of each extra method: a row each."""
    tasks = table.attrs["tasks"]
    rows = table[table["chosen"] | (table["method"] != sc.STATIC)]
    out = []
    for _, row in rows.iterrows():
        label = ("chosen: " + "/".join(f"{row[f'w_{t}']:.3g}" for t in tasks)
                 if row["chosen"] else row["method"])
        entry: dict[str, Any] = {"point": label, "run_id": row["run_id"]}
        for task in tasks:
            metric = table.attrs["metrics"].get(task, "metric")
            entry[f"val {task} {metric}"] = row[f"val_{task}"]
            entry[f"test {task} {metric}"] = row[f"test_{task}"]
        out.append(entry)
    return pd.DataFrame(out)


def _choice(store: RunStore, table: pd.DataFrame) -> None:
    tasks = table.attrs["tasks"]
    chosen = table[table["chosen"]]
    if chosen.empty:
        st.info("The choice appears once grid runs have finished.")
        return
    row = chosen.iloc[0]
    weights = ", ".join(f"w {md_text(t)} = {row[f'w_{t}']:.3g}" for t in tasks)
    st.success(f"**Chosen by validation: {weights}** (run `{row['run_id']}`).")
    st.markdown("**Only now look at the test set** — it estimates how the chosen weights do "
                "on data no decision has seen:")
    verdict = check_on_test(table)
    if verdict is not None:
        (st.success if verdict.agrees else st.warning)(verdict.text)
    if len(tasks) == 2:
        _chart(sc.front_figure(table, tasks[0], tasks[1], split="test"), "sweep_test_front")
        st.caption("The same runs on the test set, with the test set's own Pareto front; the "
                   "star is still the point validation chose.")
    summary = chosen_summary(table)
    st.dataframe(summary, hide_index=True, width="stretch", key="sweep_chosen",
                 column_config={c: st.column_config.NumberColumn(c, format="%.4g")
                                for c in summary.columns if c.startswith(("val ", "test "))})
    if st.button("Load the chosen weights into Build & Train", key="sweep_load",
                 icon="📥"):
        request_load(store.get_run(str(row["run_id"])).config)
        st.switch_page(TRAIN_PAGE)


def _more_methods(store: RunStore, table: pd.DataFrame, sweep_id: str) -> None:
    from mtl_core.weighting import METHODS

    have = set(table["method"])
    options = [m for m in METHODS.names() if m not in have and m != sc.STATIC]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    methods = c1.multiselect("Add adaptive methods to this sweep", options,
                             key=f"sweep_more_{sweep_id}", format_func=_method_label,
                             help="Each trains once with equal weights and appears as an "
                                  "extra point: does it reach the front without tuning?")
    if c2.button("Add", key=f"sweep_add_{sweep_id}", disabled=not methods, width="stretch"):
        try:
            ids = add_methods(store, sweep_id, methods, owner=current_actor())
        except (ConfigError, ValueError, OSError) as exc:
            st.error(f"Could not add them: {md_lines(exc)}")
            return
        st.session_state[_NOTICE] = f"Queued {len(ids)} extra point(s) for sweep #{sweep_id}."
        st.rerun()  # the whole page: it polls while the new runs train


def _results(store: RunStore, sweep_id: str, was_live: bool) -> None:
    counts = sweep_progress(store, sweep_id)
    live = any(counts.get(s) for s in LIVE_STATUSES)
    if was_live and not live:
        st.rerun()  # the sweep has ended: a full rerun stops the polling
    fraction, text = sc.progress_text(counts)
    st.progress(fraction, text=text)
    table = sweep_table(store, sweep_id)
    if not table.attrs.get("tasks"):
        st.info("This sweep has no runs left.")
        return
    _figures(table)
    _more_methods(store, table, sweep_id)
    _choice(store, table)
    with st.expander("Every run of the sweep", expanded=False):
        st.dataframe(table, hide_index=True, width="stretch", key="sweep_table")
        st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(),
                           file_name=f"sweep-{sweep_id}.csv", mime="text/csv",
                           key="sweep_csv", on_click="ignore", icon="⬇️")


st.title("Weight sweep")
st.caption("How do I choose the weights? Train the same model once per weight setting and "
           "let the validation set decide; never the test set.")
_store = get_store()
_notice = st.session_state.pop(_NOTICE, None)
if _notice:
    st.toast(_notice, icon="✅")
with st.expander("New sweep", expanded=True):
    _new_sweep(_store)

_sweeps = sweeps_in(_store.list_runs())
st.subheader("Results")
if not _sweeps:
    st.info("No sweep yet: set one up above and press Start sweep.")
else:
    if st.session_state.get(PICK_KEY) not in _sweeps:
        st.session_state[PICK_KEY] = next(iter(_sweeps))
    _pick = st.selectbox("Sweep", list(_sweeps), key=PICK_KEY,
                         format_func=lambda i: _sweep_label(i, _sweeps[i]))
    _live = any(r.is_live for r in _sweeps[_pick])
    st.session_state[RUN_EVERY_KEY] = REFRESH_S if _live else None  # what tests read
    st.fragment(run_every=st.session_state[RUN_EVERY_KEY])(_results)(_store, _pick, _live)
