"""Build & Train page plumbing: form state on entry, run buttons, config as YAML, diagram,
and the URL (shared configs, class mode).

`prepare_form_state` runs first on every page run, before any widget: it loads a pending
config (YAML upload, preset, shared link, reset) into the widget keys, and resets the task rows
and the trunk when the suite has changed. Starting a run goes through `mtl_core.jobs` only.

The URL (`follow_url`, run by app.py before every page; `sync_config_url`, by the Train page):
- `?cfg=<token>` (ui.share) is read once per browser session, on its first page run, and loaded
  into every control. From then on the session owns the form and the URL follows it: the Train
  page writes the token of the current config whenever it changes (no `cfg` at all for the
  default config; while a setting is invalid, the last valid config stays), and every page
  puts it back after a page switch cleared it. A reload (a new session) therefore reopens
  exactly the current controls, and the address bar is always a link to them.
- `?mode=class` turns class mode on for the session and `?mode=<anything else>` turns it off
  (the "Show all controls" link uses `mode=full`); with neither, the session keeps its mode,
  and every page puts `mode=class` back in the URL while it is on.
"""
from __future__ import annotations

import os
from typing import Any

import streamlit as st
import yaml

from mtl_core.config import (
    ConfigError,
    ExperimentConfig,
    decode_config_bytes,
    loads_config_text,
    parse_config,
)
from ui import config_form as form
from ui import share
from ui.diagram import Diagram
from ui.param_widgets import show_errors
from ui.state import current_run_id, get_store, runs_dir, set_current_run
from ui.text import md_lines, md_text
from ui.train_sections import FULL_VIEW, View

YAML_UPLOAD_KEY = "upload.yaml"
YAML_PANEL_KEY = "train.yaml_panel"  # open or not (the panels draw their content only when open)
SHARE_PANEL_KEY = "train.share_panel"
FORM_TABS = ("Data & tasks", "Architecture", "Training")
FORM_TAB_KEY = "train.tab"  # the open one of FORM_TABS (only it draws its controls)
_YAML_DONE = "_yaml_applied_id"
_YAML_ERROR = "_yaml_error"
_FORM_SUITE = "_form_suite"  # the suite the task rows were made for
_NOTICE = "_train_notice"
_WARMED = "_worker_warmed"
TRAIN_PAGE = "pages/train.py"
CLASS_MODE_KEY = "class_mode"  # bool: class mode is on for this session
LESSON_KNOBS_KEY = "lesson_knobs"  # config paths a loaded lesson focuses on (lessons page)
_URL_READ = "_url_cfg_read"  # the ?cfg= of the session's first page run has been taken
_URL_TOKEN = "_url_cfg_token"  # the token of the current config ("" = the default config)
_SHARE_ERROR = "_share_error"
LEAVE_CLASS_MODE = {share.MODE_PARAM: "full"}  # the query of the "Show all controls" link


def request_load(cfg: ExperimentConfig | dict[str, Any]) -> None:
    """Load a config into the Train page's widgets on its next run (presets, "clone run")."""
    st.session_state[form.PENDING_KEY] = cfg.to_dict() if isinstance(cfg, ExperimentConfig) \
        else dict(cfg)


def prepare_form_state() -> None:
    state = st.session_state
    upload = state.get(YAML_UPLOAD_KEY)
    if upload is not None and state.get(_YAML_DONE) != upload.file_id:
        state[_YAML_DONE] = upload.file_id
        try:  # untrusted: size, encoding, aliases and depth first, paths inside the roots
            name = upload.name[:80]
            text = decode_config_bytes(upload.getvalue(), name)
            cfg = parse_config(loads_config_text(text, source=name), trusted=False)
        except ConfigError as exc:
            state[_YAML_ERROR] = f"{md_text(upload.name[:80])} was not loaded:\n" + "\n".join(
                f"- {md_text(e)}" for e in exc.errors)
        else:
            state[form.PENDING_KEY] = cfg.to_dict()
            state[_YAML_ERROR] = None
            state[_NOTICE] = f"Loaded {upload.name} into every control."
    pending = state.pop(form.PENDING_KEY, None)
    if pending is not None:
        try:
            form.load_config_into(state, pending)
        except ConfigError as exc:  # e.g. a preset that no longer validates: keep the form
            state[_NOTICE] = f"Could not load that config: {exc}"
        state[_FORM_SUITE] = state.get("cfg.data.suite")
    if "cfg.data.suite" not in state:  # a fresh session: the defaults
        form.load_config_into(state, {})
        state[_FORM_SUITE] = state["cfg.data.suite"]
    if state.get(_FORM_SUITE) != state["cfg.data.suite"]:
        form.reset_for_suite(state, state["cfg.data.suite"])
        state[_FORM_SUITE] = state["cfg.data.suite"]


def warm_up_once() -> None:
    """Once per browser session, have an idle worker (torch imported) wait for the next run,
    so Start shows its first points quickly. MTL_WARM_UP=0 turns this off (tests, tiny
    machines)."""
    if st.session_state.get(_WARMED) or os.environ.get("MTL_WARM_UP", "1") == "0":
        return
    st.session_state[_WARMED] = True
    from mtl_core import jobs

    try:
        jobs.warm_up(runs_dir())
    except (OSError, ValueError):  # e.g. a bad MTL_MAX_JOBS: Start reports it
        pass


@st.cache_resource
def devices() -> list[str]:
    """The devices this machine can train on (probed once per server)."""
    from mtl_core.trainer import available_devices

    return available_devices()


def show_notice() -> None:
    notice = st.session_state.pop(_NOTICE, None)
    if notice:
        st.toast(notice, icon=":material/check_circle:")


# --- the URL: shared configs and class mode --------------------------------------------------

def follow_url() -> None:
    """Take `?cfg=` (once per session) and `?mode=`, then put back in the URL what a page
    switch cleared. Runs before any page (app.py)."""
    state, params = st.session_state, st.query_params
    mode = params.get(share.MODE_PARAM)
    if mode is not None:
        state[CLASS_MODE_KEY] = mode == share.CLASS_MODE
        if mode != share.CLASS_MODE:
            del params[share.MODE_PARAM]
    elif state.get(CLASS_MODE_KEY):
        params[share.MODE_PARAM] = share.CLASS_MODE
    if not state.get(_URL_READ):
        state[_URL_READ] = True
        token = params.get(share.CFG_PARAM)
        if token:
            try:
                request_load(share.decode_config(token))
            except ConfigError as exc:
                state[_SHARE_ERROR] = "The config in this link was not loaded:\n" + "\n".join(
                    f"- {md_text(e)}" for e in exc.errors)
            else:
                state[_NOTICE] = "Loaded the shared config into every control."
    elif _URL_TOKEN in state:
        _put_token(state[_URL_TOKEN])


def sync_config_url(cfg: ExperimentConfig | None) -> None:
    """Mirror the current (valid) config in `?cfg=`; the default config needs none."""
    if cfg is None:
        return
    token = "" if share.is_default(cfg) else share.encode_config(cfg)
    st.session_state[_URL_TOKEN] = token
    _put_token(token)


def _put_token(token: str) -> None:
    params = st.query_params
    if not token:
        if share.CFG_PARAM in params:
            del params[share.CFG_PARAM]
    elif params.get(share.CFG_PARAM) != token:
        params[share.CFG_PARAM] = token


def class_mode() -> bool:
    return bool(st.session_state.get(CLASS_MODE_KEY, False))


def current_view() -> View:
    """What the Train page draws: everything, or the class-mode essentials + lesson knobs."""
    if not class_mode():
        return FULL_VIEW
    knobs = st.session_state.get(LESSON_KNOBS_KEY) or ()
    return View(class_mode=True, knobs=tuple(str(k) for k in knobs))


def class_banner(view: View) -> None:
    """The class-mode banner with its way out (a link to the page with mode=full)."""
    if not view.class_mode:
        return
    with st.container(border=True):
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        lesson = (f"  \nThis lesson's knobs: {', '.join(f'`{k}`' for k in view.knobs)}"
                  if view.knobs else "")
        c1.markdown(f":material/school: **Class mode — advanced controls hidden**{lesson}")
        c2.page_link(TRAIN_PAGE, label="Show all controls", icon=":material/tune:",
                     query_params=LEAVE_CLASS_MODE)


def share_error() -> None:
    """Why a `?cfg=` link could not be loaded (once)."""
    problem = st.session_state.pop(_SHARE_ERROR, None)
    if problem:
        st.error(problem, icon=":material/link_off:")


def share_panel(cfg: ExperimentConfig | None, view: View) -> None:
    """A link that opens this page with every control as it is now."""
    panel = st.expander("Share link", icon=":material/link:", key=SHARE_PANEL_KEY,
                        on_change="rerun")
    with panel:
        if not panel.open:  # drawn only when opened: the browser's first paint stays light
            return
        if cfg is None:
            st.caption("Fix the settings above first: a link holds a valid config.")
            return
        as_class = st.checkbox("Class mode link (advanced controls hidden)",
                               value=view.class_mode, key="share.class_mode")
        base = st.context.url or "/"  # unknown outside a browser (tests)
        st.code(share.share_url(base, cfg, class_mode=as_class), language=None,
                wrap_lines=True)
        st.caption("Copy it (icon at the right): whoever opens it gets these settings in every "
                   "control. The address bar always holds this link too.")


# --- run buttons ----------------------------------------------------------------------------

def submit_run(cfg: ExperimentConfig) -> str | None:
    """Queue `cfg` as a run; its id, or None after showing why it could not start."""
    from mtl_core import jobs
    from mtl_core.preflight import check_submit
    from ui.identity import current_actor

    try:
        check_submit(cfg)  # what the CLI checks at submit, the page checks too
        return jobs.submit(cfg, runs_dir(), owner=current_actor())
    except (ConfigError, ValueError, OSError) as exc:
        st.error(f"Could not start: {md_lines(exc)}")
        return None


def start_button(cfg: ExperimentConfig | None) -> None:
    if st.button("Start", type="primary", icon=":material/play_arrow:", disabled=cfg is None,
                 key="train.start", width="stretch",
                 help="Queue this config as a new run; several runs may train at once."):
        run_id = submit_run(cfg)
        if run_id is None:
            return
        # No rerun: Stop/Pause, the live panel and the sidebar (app.py draws it after the
        # page) are drawn below in this same script run, for the new current run.
        set_current_run(run_id)
        st.toast(f"Run {run_id} queued.", icon=":material/check_circle:")


def problems(errors: ConfigError | None) -> None:
    """Every problem in one full-width box under the Start button (some sit in other tabs)."""
    if errors is None:
        return
    n = len(errors.errors)
    st.error(f"{n} setting{'s' if n > 1 else ''} to fix before Start:\n"
             + "\n".join(f"- **{md_text(e.path or 'config')}** ({tab_of(e.path)}): "
                         f"{md_text(e.message)}"
                         for e in errors.errors),
             icon=":material/block:")


def tab_of(path: str | None) -> str:
    """The form tab that holds the control of a config path (only the open tab is drawn)."""
    head = (path or "").split(".", 1)[0].split("[", 1)[0]
    if head in ("data", "tasks"):
        return FORM_TABS[0]
    return FORM_TABS[1] if head == "model" else FORM_TABS[2]


def run_buttons() -> None:
    """Stop and Pause/Resume of the current run; refreshed while it is live so the buttons
    follow the run (paused → Resume) without a full page run."""
    run_id = current_run_id()
    info = None
    if run_id:
        try:
            info = get_store().get_run(run_id)
        except KeyError:
            info = None
    live = info is not None and info.is_live
    from ui.live import STATUS_REFRESH_S

    st.fragment(run_every=STATUS_REFRESH_S if live else None)(_run_buttons)(run_id)


def _run_buttons(run_id: str | None) -> None:
    from mtl_core import jobs
    from mtl_core.owners import may_act
    from ui.identity import current_actor

    info = None
    if run_id:
        try:
            info = get_store().get_run(run_id)
        except KeyError:
            pass
    status = info.status if info else None
    actor = current_actor()
    mine = info is None or may_act(actor, info.owner)
    why = None if mine else (f"Started by {md_text(info.owner_label)}: only they or the "
                             "teacher can stop or pause it.")
    c1, c2 = st.columns(2)
    stop = c1.button("Stop", icon=":material/stop:", key="train.stop", width="stretch",
                     disabled=status not in ("queued", "running", "paused") or not mine,
                     help=why)
    paused = status == "paused"
    toggle = c2.button("Resume" if paused else "Pause", key="train.pause", width="stretch",
                       icon=":material/play_circle:" if paused else ":material/pause:",
                       disabled=status not in ("running", "paused") or not mine, help=why)
    try:
        if stop and run_id:
            st.toast(f"Stop: {jobs.stop(run_id, runs_dir(), actor=actor)}")
        elif toggle and run_id:
            answer = (jobs.resume(run_id, runs_dir(), actor=actor) if paused
                      else jobs.pause(run_id, runs_dir(), actor=actor))
            st.toast(f"{'Resume' if paused else 'Pause'}: {answer}")
    except (KeyError, ValueError, PermissionError) as exc:
        st.warning(md_text(exc))
    if info is not None:
        st.caption(f"Current run `{info.id}` · {info.status}"
                   + ("" if mine else f" · started by {md_text(info.owner_label)}"))
        if st.button("Load its settings", icon=":material/content_copy:", key="train.clone",
                     type="tertiary", help="Fill every control with this run's config, to "
                                           "change one thing and train again."):
            request_load(info.config)
            st.session_state[_NOTICE] = f"Loaded the settings of run {info.id}."
            st.rerun(scope="app")


# --- config as YAML, diagram, live panel -------------------------------------------------------

def yaml_panel(doc: dict[str, Any], cfg: ExperimentConfig | None,
               view: View = FULL_VIEW) -> None:
    panel = st.expander("Config as YAML", icon=":material/description:", key=YAML_PANEL_KEY,
                        on_change="rerun")
    with panel:
        if not panel.open:  # the highlighted YAML is the costliest element to render
            return
        text = cfg.to_yaml() if cfg else yaml.safe_dump(doc, sort_keys=False)
        name = (cfg.name if cfg else str(doc.get("name", "config"))) or "config"
        c1, c2 = st.columns(2)
        c1.download_button("Download YAML", text, file_name=f"{name}.yaml", mime="text/yaml",
                           icon=":material/download:", on_click="ignore", key="yaml.download",
                           help=None if cfg else "This config has problems; fix them first.",
                           width="stretch")
        if c2.button("Reset to defaults", icon=":material/restart_alt:", key="train.reset",
                     width="stretch"):
            st.session_state[form.PENDING_KEY] = {}
            st.session_state[_NOTICE] = "Every control is back to its default."
            st.rerun()
        if view.shows("yaml"):
            st.file_uploader("Load a YAML config into the controls",
                             type=["yaml", "yml", "json"], key=YAML_UPLOAD_KEY)
        problem = st.session_state.get(_YAML_ERROR)
        if problem:
            st.error(problem, icon=":material/error:")
        st.code(text, language="yaml")


def diagram_panel(diagram: Diagram) -> None:
    st.markdown("**Architecture**")
    if diagram.dot is None:
        st.info(f"No diagram: {md_lines(diagram.error)}", icon=":material/schema:")
        return
    st.graphviz_chart(diagram.dot, width="stretch")
    counts = diagram.counts
    total = sum(counts.values())
    parts = " · ".join(f"{k} {v:,}" for k, v in counts.items())
    st.caption(f"{total:,} parameters — {parts}")


def live_area() -> None:
    from ui.chart_warmup import warm_charts
    from ui.live import live_panel

    run_id = current_run_id()
    if run_id:
        live_panel(get_store(), run_id)
    else:
        st.caption("Press **Start** to train; the live curves of the run appear here.")
    # Last: the browser loads the charts' code while the user reads the form.
    warm_charts(after=".st-key-train-start button")


def show_errors_for(errors: ConfigError | None, path: str) -> None:
    show_errors(form.errors_at(errors, path))
