"""Build & Train: choose data, tasks, architecture and weighting, press Start, watch it learn.

The page reads every widget value from session_state first (ui.train_run.prepare_form_state),
turns it into a config document and validates it *before* drawing the widgets, so each
validation message can sit right under the control concerned and Start is disabled while any
is left. Training happens in worker processes (mtl_core.jobs); this page only submits runs and
draws what the store holds. The URL's `?cfg=` follows the controls (ui.train_run), and class
mode (`?mode=class`) draws only the essential controls plus a loaded lesson's knobs.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

import streamlit as st

from mtl_core import limits
from mtl_core.config import ConfigError, FieldError
from mtl_core.preflight import device_problem
from ui import config_form as form
from ui import train_run as run
from ui import train_sections as sections
from ui.diagram import build_diagram, suite_shapes


def _data_blocks_start(params: dict, data_error: str | None) -> bool:
    """A data set that cannot be read stops a run, unless the worker may still download it."""
    return data_error is not None and not params.get("download", False)


run.prepare_form_state()
view = run.current_view()
doc = form.config_from_state(st.session_state)
cfg, errors = form.validate(doc)
shareable = cfg  # valid as a config, even where this machine cannot read its data
shapes, data_error = suite_shapes(doc.get("data", {}))
diagram = build_diagram(doc)
if cfg is not None:
    # Problems only building the model reveals (e.g. more conv layers than the image has
    # pixels for) would crash the worker: treat them as validation errors too.
    late = []
    if _data_blocks_start(cfg.data.params, data_error):
        late.append(FieldError("data", f"cannot read the data set: {data_error}"))
    elif shapes is not None and diagram.dot is None and diagram.error:
        late.append(FieldError(diagram.error_path or "model", diagram.error))
    # What the CLI refuses at submit (mtl_core.preflight), from what the page already has.
    late += [FieldError(p, m) for p, m in limits.params_problems(diagram.counts,
                                                                 replicas=cfg.replicas)]
    if shapes is not None and cfg.data.suite == "csv":
        late += [FieldError(p, m) for p, m in limits.steps_problems(cfg, shapes.rows)]
    problem = device_problem(cfg.device, run.devices())
    if problem:
        late.append(FieldError("device", problem))
    if late:
        cfg, errors = None, ConfigError(late)

run.sync_config_url(shareable)
run.show_notice()
run.warm_up_once()
head, start, controls = st.columns([5, 2, 3], vertical_alignment="top")
head.title("Build & Train")
with start:
    run.start_button(cfg)
with controls:
    run.run_buttons()
run.class_banner(view)
run.share_error()
run.problems(errors)

left, right = st.columns([6, 5], gap="large")
with left:
    # Only the open tab draws its controls (each keeps its values: persist_state), which
    # halves what the browser builds on the first paint; a problem in a closed tab is listed
    # above, by Start.
    data_tab, arch_tab, train_tab = st.tabs(list(run.FORM_TABS), key=run.FORM_TAB_KEY,
                                            on_change="rerun")
    with data_tab:
        if data_tab.open:
            sections.data_section(errors, shapes, data_error, view)
            sections.tasks_section(doc, errors, shapes)
    with arch_tab:
        if arch_tab.open:
            sections.architecture_section(errors, doc, view)
    with train_tab:
        if train_tab.open:
            sections.weighting_section(errors, view)
            st.divider()
            sections.training_section(errors, run.devices(), view)
with right:
    run.diagram_panel(diagram)
    run.yaml_panel(doc, cfg, view)
    run.share_panel(shareable, view)

st.divider()
run.live_area()
