"""The app shell and the Build & Train page: widget state <-> config, the diagram, AppTest flows.

Unit tests cover ui.config_form (the pure widgets <-> config layer) and ui.diagram (DOT
content); AppTest tests drive the real app.py with an empty store in a temp MTL_RUNS_DIR.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from app_support import (
    config_shown,
    form_keys,
    form_widget,
    open_form_tab,
    reset_button,
    share_link_shown,
    walk_nodes,
    widget_keys,
    yaml_upload,
)
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from mtl_core import jobs
from mtl_core.config import ConfigError, ExperimentConfig, FieldError, parse_config
from mtl_core.models.base import Block
from mtl_core.owners import Actor, browser_owner_id
from mtl_core.store import RunStore
from ui import chart_warmup, share
from ui import config_form as form
from ui import train_run as run
from ui.diagram import branch_points, build_diagram, dot_for_blocks
from ui.train_run import YAML_PANEL_KEY

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TOY = {"name": "toy", "device": "cpu", "data": {"suite": "toy_2d", "params": {"n_samples": 200}},
       "model": {"trunk": {"type": "mlp", "layers": [8]}, "heads": {"layers": []}},
       "optim": {"epochs": 1, "batch_size": 64}, "log_every": 5}


def _same(a: ExperimentConfig | dict, b: ExperimentConfig | dict) -> None:
    assert parse_config(a).to_dict() == parse_config(b).to_dict()


# --- ui.config_form ------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [
    {},
    TOY,
    {"data": {"suite": "toy_2d", "params": {"noise": 0.2}, "train_fraction": 0.3},
     "tasks": [{"name": "xor", "weight": 2.5}, {"name": "circle", "weight": 0.0},
               {"name": "spiral", "weight": 1.0}],
     "model": {"architecture": "hard_sharing", "params": {"shared_layers": 1},
               "trunk": {"layers": [32, 16], "activation": "tanh", "dropout": 0.2,
                         "batch_norm": True}, "heads": {"layers": [8, 4], "dropout": 0.1}},
     "weighting": {"method": "gradnorm", "params": {"alpha": 0.5}},
     "optim": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "epochs": 3,
               "early_stopping": {"patience": 2}}, "seed": 7, "device": "cpu"},
    {"data": {"suite": "multi_mnist", "params": {"shift": 3, "n_train": 500}},
     "model": {"trunk": {"type": "cnn", "layers": [8, 16], "hidden": [32]}},
     "weighting": {"method": "upgrad", "params": {"pref_vector": [1.0, 2.0]}}},
    {"data": {"suite": "csv", "params": {"path": "t.csv", "targets": ["y", "z"],
                                         "inputs": ["a"], "kinds": {"z": "binary"}}}},
    {"data": {"suite": "toy_2d"}, "tasks": [{"name": "distance"}, {"name": "xor"}],
     "model": {"heads": {"layers": [8], "per_task": {"distance": [16, 4], "xor": []}}}},
])
def test_state_round_trip_gives_the_same_config(doc):
    state = form.state_from_config(doc)
    assert all(k.startswith(form.PREFIX) for k in state)
    _same(form.config_from_state(state), doc)


def test_loaded_task_order_is_kept_and_newly_included_tasks_follow():
    state = form.state_from_config({"data": {"suite": "toy_2d"},
                                    "tasks": [{"name": "xor", "weight": 2.0}]})
    assert state[form.task_key("xor", "include")] is True
    assert state[form.task_key("circle", "include")] is False
    state[form.task_key("circle", "include")] = True
    tasks = parse_config(form.config_from_state(state)).tasks
    assert [(t.name, t.weight) for t in tasks] == [("xor", 2.0), ("circle", 1.0)]


def test_mlp_hidden_widths_are_folded_into_one_list():
    state = form.state_from_config({"model": {"trunk": {"layers": [16], "hidden": [8]}}})
    assert form.list_from_state(state, "cfg.model.trunk.layers") == [16, 8]
    trunk = parse_config(form.config_from_state(state)).model.trunk
    assert (trunk.layers, trunk.hidden, trunk.depth) == ([16, 8], [], 2)


def test_widget_edits_become_config_fields():
    state = form.state_from_config({})
    state["cfg.data.params.synthetic_mmoe.correlation"] = -0.4
    state["cfg.model.trunk.layers.n"] = 3  # a new third layer copies the second's width
    state["cfg.model.trunk.layers.1"] = 128
    state[form.task_key("task2", "weight")] = 0.25
    state["cfg.weighting.method"] = "dwa"
    cfg = parse_config(form.config_from_state(state))
    assert cfg.data.params["correlation"] == -0.4
    assert cfg.model.trunk.layers == [64, 128, 128]
    assert cfg.task_weights() == {"task1": 1.0, "task2": 0.25}
    assert cfg.weighting.method == "dwa" and cfg.weighting.params == {"temperature": 2.0}


def _heads(state: dict) -> dict[str, list[int]]:
    return parse_config(form.config_from_state(state)).model.heads.per_task


def test_per_task_heads_hold_only_the_tasks_whose_widths_differ():
    state = form.state_from_config({"data": {"suite": "toy_2d"}})
    assert state[form.HEADS_SAME] is True
    assert not [k for k in state if k.startswith(form.head_key(""))]
    state[form.HEADS_SAME] = False  # toggle off: untouched editors use the shared head
    assert _heads(state) == {}
    state.update(form.list_to_state(form.head_key("xor"), [32]))  # equal to the shared [32]
    state.update(form.list_to_state(form.head_key("distance"), [16, 4]))
    state.update(form.list_to_state(form.head_key("spiral"), []))
    assert _heads(state) == {"distance": [16, 4], "spiral": []}
    state[form.task_key("spiral", "include")] = False  # a task left out has no head
    assert _heads(state) == {"distance": [16, 4]}
    cfg = parse_config(form.config_from_state(state))
    assert cfg.model.heads.layers_for("distance") == [16, 4]
    assert cfg.model.heads.layers_for("xor") == [32]
    state[form.HEADS_SAME] = True  # back on: one head for all, the overrides are ignored
    assert _heads(state) == {}
    form.forget_head_overrides(state)  # (what the page does then)
    assert not [k for k in state if k.startswith(form.head_key(""))]


def test_loading_per_task_heads_fills_every_tasks_editor_and_a_new_suite_drops_them():
    state = form.state_from_config({"data": {"suite": "toy_2d"}, "model": {"heads": {
        "layers": [8], "per_task": {"distance": [16, 4], "xor": [8]}}}})
    assert state[form.HEADS_SAME] is False
    assert form.list_from_state(state, form.head_key("distance")) == [16, 4]
    assert form.list_from_state(state, form.head_key("circle")) == [8]  # the shared head
    assert _heads(state) == {"distance": [16, 4]}  # xor's entry said what [8] says anyway
    state["cfg.data.suite"] = "synthetic_mmoe"
    form.reset_for_suite(state, "synthetic_mmoe")
    assert state[form.HEADS_SAME] is True and _heads(state) == {}
    assert not [k for k in state if k.startswith(form.head_key(""))]


def test_class_view_hides_advanced_controls_but_shows_a_lessons_knobs():
    from ui.train_sections import FULL_VIEW, View

    assert FULL_VIEW.shows("seed") and FULL_VIEW.shows("weighting.params.alpha")
    view = View(class_mode=True)
    assert [view.shows(p) for p in ("optim.lr", "optim.epochs", "tasks", "data.suite",
                                    "model.heads.per_task.xor", "model.trunk.layers")] == [True] * 6
    assert not any(view.shows(p) for p in ("seed", "device", "log_every", "yaml",
                                           "optim.weight_decay", "optim.early_stopping.patience",
                                           "weighting.params.alpha", "model.params"))
    lesson = View(class_mode=True, knobs=("weighting.params.alpha", "optim.early_stopping"))
    assert lesson.shows("weighting.params") and lesson.shows("weighting.params.alpha")
    assert not lesson.shows("weighting.params.lr")
    assert lesson.shows("optim.early_stopping.patience") and not lesson.shows("seed")


def test_an_empty_state_means_the_defaults():
    _same(form.config_from_state({}), {})


def test_params_of_other_plugins_never_leak_into_the_config():
    state = form.state_from_config({"weighting": {"method": "gradnorm"}})
    state["cfg.weighting.method"] = "static"  # gradnorm's keys stay in the state
    assert form.config_from_state(state)["weighting"] == {"method": "static", "params": {}}


def test_unreadable_yaml_text_is_reported_at_its_field():
    state = form.state_from_config({"weighting": {"method": "upgrad"}})
    assert state["cfg.weighting.params.upgrad.pref_vector"] == ""  # None shows as empty
    state["cfg.weighting.params.upgrad.pref_vector"] = "[1, "
    cfg, error = form.validate(form.config_from_state(state))
    assert cfg is None
    assert [e.path for e in error.errors] == ["weighting.params.pref_vector"]


def test_field_specs_pick_a_widget_per_type():
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.weighting import METHODS

    mmoe = {s.name: s for s in form.field_specs(SUITES.get("synthetic_mmoe").params)}
    assert (mmoe["correlation"].kind, mmoe["correlation"].low, mmoe["correlation"].high) == \
        ("float", -1.0, 1.0)
    assert mmoe["correlation"].slider and mmoe["n_sin_terms"].slider
    assert not mmoe["n_samples"].slider  # 20..200,000 is a number box
    shared = form.field_specs(ARCHITECTURES.get("hard_sharing").params)[0]
    assert (shared.kind, shared.optional, shared.slider) == ("int", True, False)
    gradvac = {s.name: s for s in form.field_specs(METHODS.get("gradvac").params)}
    assert gradvac["beta"].slider and not gradvac["eps"].slider  # 1e-8 needs a number box
    assert gradvac["gradients"].kind == "choice"
    assert set(gradvac["gradients"].options) == {"parameters", "representation"}


def test_a_new_suite_resets_task_rows_and_fits_the_trunk():
    state = form.state_from_config({"tasks": [{"name": "task1", "weight": 3.0}]})
    state["cfg.data.suite"] = "multi_mnist"
    form.reset_for_suite(state, "multi_mnist")
    assert not [k for k in state if k.startswith("cfg.tasks.")]
    cfg = parse_config(form.config_from_state(state))
    assert cfg.task_weights() == {"left": 1.0, "right": 1.0}
    assert (cfg.model.trunk.type, cfg.model.trunk.hidden) == ("cnn", [64])


# --- ui.diagram ----------------------------------------------------------------------------

def _blocks() -> list[Block]:
    return [Block("trunk.0", "Linear 2→8", "shared", 24, ["input:x"]),
            Block("head.a.out", "Linear 8→1", "a", 9, ["trunk.0"]),
            Block("head.b.0", "Linear 8→4", "b", 36, ["trunk.0"]),
            Block("head.b.out", "Linear 4→3", "b", 15, ["head.b.0"])]


def test_dot_has_a_cluster_per_owner_with_counts_and_a_branch_point():
    dot = dot_for_blocks(_blocks(), ["a", "b"], {"x": (2,)}, {"b": "3 classes"})
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert 'label="Shared · 24 params"' in dot
    assert 'label="Task a · 9 params"' in dot and 'label="Task b · 51 params"' in dot
    assert '"head.b.0" [label="Linear 8→4\\n36 params"' in dot
    assert branch_points(_blocks()) == {"trunk.0": ["head.a.out", "head.b.0"]}
    assert '"branch:trunk.0" -> "head.a.out"' in dot and '"branch:trunk.0" -> "head.b.0"' in dot
    assert '"head.b.out" -> "out:b"' in dot and 'label="b\\n3 classes"' in dot
    assert 'label="input x\\n2"' in dot
    # shared boxes are grey, each task has its own colour
    fill = {n: re.search(rf'"{re.escape(n)}" \[.*fillcolor="(#\w+)"', dot).group(1)
            for n in ("trunk.0", "head.a.out", "head.b.0", "head.b.out")}
    assert fill["trunk.0"] == "#ececec" and fill["head.b.0"] == fill["head.b.out"]
    assert len({fill["trunk.0"], fill["head.a.out"], fill["head.b.0"]}) == 3


def test_diagram_of_a_real_model_matches_its_parameter_counts():
    doc = dict(TOY, tasks=[{"name": "circle"}, {"name": "distance"}])
    diagram = build_diagram(doc)
    assert diagram.error is None
    assert set(diagram.counts) == {"shared", "circle", "distance"}
    assert f'label="Shared · {diagram.counts["shared"]:,} params"' in diagram.dot
    assert f'label="Task circle · {diagram.counts["circle"]:,} params"' in diagram.dot
    assert "Task xor" not in diagram.dot
    # nothing shared: no shared cluster, tasks branch straight from the input
    single = build_diagram({**doc, "model": {**TOY["model"], "architecture": "single_task"}})
    assert "cluster_shared" not in single.dot and '"branch:input:x"' in single.dot


def test_diagram_explains_what_it_cannot_build():
    doc = {"data": {"suite": "multi_mnist", "params": {"n_train": 50}}}
    diagram = build_diagram(doc)  # no MNIST files in the temp data dir, and no download
    assert diagram.dot is None and "MNIST" in diagram.error


# --- the app (AppTest) ---------------------------------------------------------------------

class _NavigationPagesManager(PagesManager):
    """AppTest resets `PagesManager.uses_pages_directory` before every run, so an app that
    calls st.navigation *and* has a pages/ folder falls back to the old pages/ mode from its
    second run on (the page runs without app.py). The real server keeps the flag False once
    st.navigation has run; this keeps it False in AppTest too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


@pytest.fixture
def warm_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """jobs.warm_up calls (recorded, not run: an idle worker per test would load the CI)."""
    monkeypatch.setenv("MTL_WARM_UP", "1")  # conftest turns it off; here it is only recorded
    calls: list = []
    monkeypatch.setenv("MTL_WARM_UP", "1")  # conftest turns it off; here it is only recorded
    monkeypatch.setattr(jobs, "warm_up", lambda runs_dir=None: calls.append(runs_dir))
    return calls


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, warm_calls: list):
    """The app on its default page, with jobs capped at one and no idle workers left over."""
    monkeypatch.setenv("MTL_MAX_JOBS", "1")
    monkeypatch.setattr(app_test_module, "PagesManager", _NavigationPagesManager)
    at = AppTest.from_file(APP, default_timeout=90)
    yield at
    store = RunStore(os.environ["MTL_RUNS_DIR"])
    for pid, _, _ in store.workers():  # only workers these tests started (temp runs dir)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass



def _start(at: AppTest):
    return at.button(key="train.start")


def test_app_renders_the_train_page_with_an_empty_store(app, warm_calls):
    at = app.run()
    assert not at.exception
    at.run()  # a second run must not start a second idle worker
    assert [Path(p) for p in warm_calls] == [Path(os.environ["MTL_RUNS_DIR"])]
    assert at.title[0].value == "Build & Train"
    assert not _start(at).disabled and not at.error
    assert at.button(key="train.stop").disabled and at.button(key="train.pause").disabled
    assert at.get("graphviz_chart") and "cluster_shared" in at.get("graphviz_chart")[0].proto.spec
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "None yet" in sidebar and os.environ["MTL_RUNS_DIR"] in sidebar and "cpu" in sidebar
    # The YAML and Share panels draw their content only once opened (a light first paint).
    assert not at.code and [e.label for e in at.expander][-2:] == ["Config as YAML",
                                                                    "Share link"]
    _same(config_shown(at), {})  # opened, it shows the default config
    assert at.session_state[YAML_PANEL_KEY] and len(at.code) == 1


def test_the_train_page_has_the_browser_load_the_chart_code_once_per_session(app):
    chunk = chart_warmup.plotly_chunk()
    at = app.run()
    scripts = [h.proto.body for h in at.get("html") if chunk in h.proto.body]
    assert len(scripts) == 1 and "import(" in scripts[0]
    at.run()  # the page load that ran it keeps the module: no second script
    assert not [h for h in at.get("html") if chunk in h.proto.body]


def test_widget_changes_yield_the_expected_config(app):
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("toy_2d").run()
    assert [c.label for c in at.checkbox if c.key.startswith("cfg.tasks.")] == \
        ["circle", "xor", "spiral", "distance"]  # the rows follow the new suite
    form_widget(at, "number_input", "cfg.model.trunk.layers.0").set_value(48)
    form_widget(at, "slider", form.task_key("xor", "weight")).set_value(2.5)
    form_widget(at, "checkbox", form.task_key("spiral", "include")).uncheck()
    form_widget(at, "selectbox", "cfg.weighting.method").set_value("uncertainty")
    at.run()
    assert not at.exception
    cfg = parse_config(config_shown(at))
    assert cfg.data.suite == "toy_2d" and cfg.model.trunk.layers == [48, 64]
    assert cfg.task_weights() == {"circle": 1.0, "xor": 2.5, "distance": 1.0}
    assert cfg.weighting.method == "uncertainty"
    assert "Linear 2→48" in at.get("graphviz_chart")[0].proto.spec  # the diagram follows


@pytest.mark.parametrize("change, path, words", [
    ({"cfg.model.trunk.type": "cnn"}, "model.trunk.type", "cnn trunk needs an image suite"),
    ({form.task_key("task1", "include"): False, form.task_key("task2", "include"): False},
     "tasks", "at least one task"),
    ({"cfg.model.params.hard_sharing.shared_layers": 5}, "model.params.shared_layers",
     "allowed 0..2"),
])
def test_an_invalid_setting_disables_start_and_says_why(app, change, path, words):
    at = app.run()
    for key, value in change.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    assert _start(at).disabled
    messages = [e.value for e in at.error]
    assert any(words in m for m in messages), messages  # under the control concerned
    assert any(path in m and "to fix before Start" in m for m in messages)  # and by Start


def test_yaml_upload_fills_every_widget_and_start_queues_a_run(app):
    at = app.run()
    doc = {**TOY, "tasks": [{"name": "circle", "weight": 0.5}, {"name": "xor"}],
           "optim": {**TOY["optim"], "lr": 0.02}}
    yaml_upload(at).set_value(
        ("toy.yaml", parse_config(doc).to_yaml().encode(), "text/yaml"))
    at.run()
    assert not at.exception and not at.error
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "toy_2d"
    assert form_widget(at, "number_input", "cfg.optim.lr").value == pytest.approx(0.02)
    assert form_widget(at, "slider", form.task_key("circle", "weight")).value == 0.5
    assert form_widget(at, "checkbox", form.task_key("spiral", "include")).value is False
    assert form_widget(at, "number_input", "cfg.model.trunk.layers.n").value == 1
    _same(config_shown(at), doc)

    _start(at).click().run()
    assert not at.exception
    runs = RunStore(os.environ["MTL_RUNS_DIR"]).list_runs()
    assert len(runs) == 1 and runs[0].status in ("queued", "running", "finished")
    assert runs[0].config == parse_config(doc).to_dict()
    assert at.session_state["run_id"] == runs[0].id and at.query_params["run"] == runs[0].id
    assert runs[0].id in " ".join(c.value for c in at.sidebar.caption)
    # Stop is offered for the live run and ends it
    if RunStore(os.environ["MTL_RUNS_DIR"]).get_run(runs[0].id).is_live:
        at.button(key="train.stop").click().run()
        deadline = time.time() + 30
        while RunStore(os.environ["MTL_RUNS_DIR"]).get_run(runs[0].id).is_live:
            assert time.time() < deadline, "the run did not stop"
            time.sleep(0.5)


def test_start_draws_the_new_run_everywhere_in_the_same_script_run(app, monkeypatch):
    # One script run for the click: the browser draws the page once while the run starts.
    monkeypatch.setattr(jobs, "submit", lambda cfg, runs_dir, owner: RunStore(
        runs_dir).create_run(cfg, status="queued", owner=owner))  # queued, never trained
    page_runs = []
    real = run.prepare_form_state
    monkeypatch.setattr(run, "prepare_form_state", lambda: (page_runs.append(1), real()))
    at = app.run()
    page_runs.clear()
    _start(at).click().run()
    assert not at.exception and len(page_runs) == 1
    run_id = RunStore(os.environ["MTL_RUNS_DIR"]).list_runs()[0].id
    assert at.session_state["run_id"] == run_id and at.query_params["run"] == run_id
    assert any(f"Run {run_id} queued." in t.value for t in at.toast)
    assert run_id in " ".join(c.value for c in at.sidebar.caption)  # drawn after the page
    assert any("Queued" in i.value and run_id in i.value for i in at.main.info)
    assert not at.button(key="train.stop").disabled


def test_a_current_run_the_store_lacks_is_dropped_before_the_page_and_said_once(app):
    app.query_params["run"] = "nope"
    at = app.run()
    assert not at.exception
    assert [w.value for w in at.sidebar.warning] == [
        f"Run `nope` was not found in {os.environ['MTL_RUNS_DIR']}."]
    assert at.session_state["run_id"] is None and "run" not in at.query_params
    assert any("Press **Start**" in c.value for c in at.main.caption)
    at.run()
    assert not at.sidebar.warning


def test_a_bad_yaml_upload_changes_nothing_and_says_why(app):
    at = app.run()
    bad = yaml.safe_dump({"optim": {"lr": -1}, "data": {"suite": "nope"}}).encode()
    yaml_upload(at).set_value(("bad.yaml", bad, "text/yaml"))
    at.run()
    text = " ".join(e.value for e in at.error)
    assert "bad.yaml was not loaded" in text and "optim.lr" in text
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "synthetic_mmoe"


def test_reset_restores_defaults_and_values_survive_a_page_switch(app):
    at = app.run()
    form_widget(at, "slider", "cfg.data.params.synthetic_mmoe.correlation").set_value(0.9).run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/train.py").run()
    assert form_widget(at, "slider", "cfg.data.params.synthetic_mmoe.correlation").value == 0.9
    reset_button(at).click().run()
    assert form_widget(at, "slider", "cfg.data.params.synthetic_mmoe.correlation").value == 0.5
    _same(config_shown(at), {})


def test_url_run_parameter_opens_that_run(app):
    store = RunStore(os.environ["MTL_RUNS_DIR"])
    run_id = store.create_run(parse_config({**TOY, "name": "from-url"}), status="finished")
    app.query_params["run"] = run_id
    at = app.run()
    assert not at.exception
    assert at.session_state["run_id"] == run_id
    assert at.selectbox(key="sidebar.run_pick").value == run_id
    assert "from-url" in " ".join(c.value for c in at.sidebar.caption)
    at.button(key="train.clone").click().run()  # its settings fill the controls
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "toy_2d"
    _same(config_shown(at), {**TOY, "name": "from-url"})


def test_csv_upload_previews_the_table_and_targets_become_tasks(app):
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("csv").run()
    rows = "\n".join(f"{i % 7},{i * 0.5},{i % 2},{(i * 3) % 5}" for i in range(40))
    at.file_uploader(key="upload.csv").set_value(("t.csv", f"a,b,y,z\n{rows}".encode(),
                                                  "text/csv"))
    at.run()
    assert not at.exception
    assert list(at.dataframe[0].value.columns) == ["a", "b", "y", "z"]
    saved = Path(form_widget(at, "text_input", "cfg.data.params.csv.path").value)
    assert saved.is_file() and saved.parent == Path(os.environ["MTL_RUNS_DIR"]) / "uploads"
    assert _start(at).disabled  # no target column yet
    form_widget(at, "multiselect", "cfg.data.params.csv.targets").set_value(["y", "z"]).run()
    form_widget(at, "selectbox", f"{form.CSV_KINDS}.z").set_value("regression").run()
    assert not at.exception and not _start(at).disabled
    cfg = parse_config(config_shown(at))
    assert cfg.task_weights() == {"y": 1.0, "z": 1.0}
    assert cfg.data.params["kinds"] == {"z": "regression"}
    assert "y\\nbinary" in at.get("graphviz_chart")[0].proto.spec


def test_missing_mnist_files_are_explained_but_the_worker_may_still_download_them(app):
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("mnist_attributes").run()
    assert not at.exception
    assert any("Cannot read this data set" in w.value and "MNIST" in w.value
               for w in at.warning)
    assert not _start(at).disabled  # download is on: the worker fetches the files
    form_widget(at, "checkbox", "cfg.data.params.mnist_attributes.download").uncheck().run()
    assert _start(at).disabled


def test_an_image_suite_gets_a_cnn_and_a_too_deep_one_is_refused(app):
    try:
        from tests.idx_files import write_fake_mnist
    except ImportError:  # tests/ on sys.path rather than the repo root
        from idx_files import write_fake_mnist

    write_fake_mnist(Path(os.environ["MTL_DATA_DIR"]))
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("multi_mnist").run()
    assert not at.exception and not _start(at).disabled
    assert form_widget(at, "selectbox", "cfg.model.trunk.type").value == "cnn"
    spec = at.get("graphviz_chart")[0].proto.spec
    assert "Conv 1→16 3×3" in spec and "Task left" in spec and "left\\n10 classes" in spec
    # 36 px cannot halve 7 times
    form_widget(at, "number_input", "cfg.model.trunk.layers.n").set_value(7).run()
    assert _start(at).disabled
    assert any("too many conv layers" in e.value for e in at.error)


def test_run_buttons_drive_the_current_run_and_an_extra_run_waits_in_the_queue(app):
    store = RunStore(os.environ["MTL_RUNS_DIR"])
    app.session_state["_identity.secret"] = "s" * 43  # this browser's identity (its cookie)
    viewer = Actor(browser_owner_id("s" * 43))
    busy = store.create_run(parse_config({**TOY, "name": "busy"}), status="running",
                            owner=viewer)
    app.query_params["run"] = busy
    at = app.run()
    assert not at.button(key="train.stop").disabled
    at.button(key="train.pause").click().run()
    assert store.pending_controls(busy) == ["pause"]
    store.take_control(busy)  # what the worker does when it pauses
    store.set_status(busy, "paused")
    at.run()
    assert at.button(key="train.pause").label == "Resume"
    at.button(key="train.pause").click().run()
    assert store.pending_controls(busy) == ["resume"]

    _start(at).click().run()  # the limit is 1 and `busy` holds the slot
    new = at.session_state["run_id"]
    assert new != busy and store.get_run(new).status == "queued"
    assert store.get_run(new).owner == viewer.id
    assert any("Queued" in info.value for info in at.info)


def test_run_buttons_of_someone_elses_run_are_disabled_and_say_why(app):
    store = RunStore(os.environ["MTL_RUNS_DIR"])
    theirs = store.create_run(parse_config({**TOY, "name": "theirs"}), status="running",
                              owner=Actor(browser_owner_id("o" * 43), "Olga"))
    app.query_params["run"] = theirs
    at = app.run()
    for key in ("train.stop", "train.pause"):
        assert at.button(key=key).disabled
        assert "Started by Olga: only they or the teacher" in at.button(key=key).help


# --- per-task heads, shared links and class mode (AppTest) ----------------------------------

SHARED = {"name": "shared", "seed": 3, "device": "cpu",
          "data": {"suite": "toy_2d", "params": {"n_samples": 200}},
          "tasks": [{"name": "xor", "weight": 2.0}, {"name": "distance", "weight": 1.0}],
          "model": {"trunk": {"layers": [8]},
                    "heads": {"layers": [4], "per_task": {"distance": [6, 3]}}},
          "weighting": {"method": "gradnorm", "params": {"alpha": 0.5}},
          "optim": {"epochs": 2, "weight_decay": 0.001}, "log_every": 5}

ADVANCED_KEYS = ("cfg.seed", "cfg.device", "cfg.log_every", "cfg.optim.optimizer",
                 "cfg.optim.weight_decay", "cfg.optim.batch_size", "cfg.optim.eval_every",
                 "cfg.optim.early_stopping.patience", "cfg.data.val_fraction",
                 "cfg.model.trunk.activation", "cfg.model.trunk.dropout",
                 "cfg.model.trunk.batch_norm", "cfg.model.heads.activation",
                 "cfg.model.heads.dropout", "upload.yaml")
ESSENTIAL_KEYS = ("cfg.data.suite", "cfg.data.train_fraction", form.task_key("xor", "weight"),
                  "cfg.model.architecture", "cfg.model.trunk.type", "cfg.model.trunk.layers.n",
                  form.HEADS_SAME, "cfg.weighting.method", "cfg.optim.lr", "cfg.optim.epochs",
                  "cfg.name", "train.start")


def _form_config(at: AppTest):
    """The config the widgets describe (what Start would queue)."""
    return parse_config(form.config_from_state(at.session_state.to_dict()))


def test_per_task_head_editors_change_the_config_and_the_diagram(app, monkeypatch):
    at = app.run()
    yaml_upload(at).set_value(
        ("toy.yaml", parse_config(TOY).to_yaml().encode(), "text/yaml"))
    at.run()
    assert form_widget(at, "toggle", form.HEADS_SAME).value is True
    assert not [k for k in form_keys(at) if k.startswith(form.head_key(""))]
    form_widget(at, "toggle", form.HEADS_SAME).set_value(False).run()
    keys = form_keys(at)
    assert "cfg.model.heads.layers.n" not in keys  # one editor per included task instead
    assert [k for k in keys if k.startswith(form.head_key("")) and k.endswith(".n")] == \
        [form.head_key(t) + ".n" for t in ("circle", "xor", "spiral", "distance")]
    assert _form_config(at).model.heads.per_task == {}  # each starts from the shared head
    form_widget(at, "number_input", form.head_key("distance") + ".n").set_value(2).run()
    form_widget(at, "number_input", form.head_key("distance") + ".0").set_value(6)
    form_widget(at, "number_input", form.head_key("distance") + ".1").set_value(3)
    at.run()
    assert not at.exception and not _start(at).disabled
    assert parse_config(config_shown(at)).model.heads.per_task == {"distance": [6, 3]}
    assert _form_config(at).model.heads.layers_for("xor") == []
    spec = at.get("graphviz_chart")[0].proto.spec
    assert "Linear 8→6" in spec and "Linear 6→3" in spec and "Linear 3→1" in spec
    assert "Linear 8→1" in spec  # the other heads keep the shared (empty) layout

    # a problem with one task's head is shown under that task's editor (the widgets cannot
    # make one: widths are at least 1; a check of the engine could)
    def validate(doc):
        return None, ConfigError([FieldError("model.heads.per_task.distance", "too deep")])

    with monkeypatch.context() as patch:
        patch.setattr(form, "validate", validate)
        at.run()
    assert _start(at).disabled
    order = [(n.type, getattr(n, "key", None), getattr(n, "value", None))
             for n in walk_nodes(at.main)]
    where = next(i for i, (t, _, v) in enumerate(order) if t == "error" and v == "too deep")
    before = [k for _, k, _ in order[:where] if isinstance(k, str)]
    assert before[-1] == form.head_key("distance") + ".1"
    assert any("model.heads.per_task.distance** (Architecture)" in e.value
               and "to fix before Start" in e.value for e in at.error)
    # Only the open tab draws its controls: a problem in another tab is listed by Start with
    # the tab to open.
    with monkeypatch.context() as patch:
        patch.setattr(form, "validate", validate)
        open_form_tab(at, "Training")
    assert not any(e.value == "too deep" for e in at.error)
    assert any("model.heads.per_task.distance** (Architecture)" in e.value for e in at.error)

    form_widget(at, "toggle", form.HEADS_SAME).set_value(True).run()  # back to one head for all
    assert _form_config(at).model.heads.per_task == {}
    assert form.head_key("distance") + ".n" not in at.session_state


def test_a_shared_link_sets_every_widget_and_the_url_follows_the_controls(app):
    cfg = parse_config(SHARED)
    token = share.encode_config(cfg)
    app.query_params["cfg"] = token
    at = app.run()
    assert not at.exception and not at.error
    assert _form_config(at) == cfg  # every widget holds the shared config
    _same(config_shown(at), SHARED)
    assert form_widget(at, "selectbox", "cfg.data.suite").value == "toy_2d"
    assert form_widget(at, "checkbox", form.task_key("circle", "include")).value is False
    assert form_widget(at, "toggle", form.HEADS_SAME).value is False
    assert form_widget(at, "number_input", form.head_key("distance") + ".n").value == 2
    assert form_widget(at, "number_input", "cfg.seed").value == 3
    assert at.query_params["cfg"] == token

    form_widget(at, "number_input", "cfg.optim.epochs").set_value(5).run()  # an edit after loading
    edited = _form_config(at)
    assert edited.optim.epochs == 5
    assert share.decode_config(at.query_params["cfg"]) == edited  # the URL follows
    at.query_params["cfg"] = token  # the old link again in the same session (e.g. Back)
    at.run()
    assert _form_config(at) == edited  # read once per session: the edit stays
    assert share.decode_config(at.query_params["cfg"]) == edited

    link = share_link_shown(at)
    reload = AppTest.from_file(APP, default_timeout=90)  # a reload is a new session
    reload.query_params.update(parse_qs(urlsplit(link).query))
    reload.run()
    assert not reload.exception and _form_config(reload) == edited

    reset_button(at).click().run()  # the default config needs no ?cfg= at all
    assert "cfg" not in at.query_params


def test_a_damaged_link_says_so_and_keeps_the_defaults(app):
    app.query_params["cfg"] = "eNqrrgUAAXUA-A"
    at = app.run()
    assert not at.exception
    assert any("config in this link was not loaded" in e.value and "damaged" in e.value
               for e in at.error)
    _same(config_shown(at), {})
    assert "cfg" not in at.query_params


def test_class_mode_hides_advanced_controls_and_keeps_their_values(app):
    app.query_params.update({"cfg": share.encode_config(parse_config(SHARED)), "mode": "class"})
    at = app.run()
    assert not at.exception
    keys = form_keys(at)
    assert not [k for k in ADVANCED_KEYS if k in keys]
    assert not [k for k in keys if k.startswith("cfg.weighting.params.")]  # method params
    assert [k for k in ESSENTIAL_KEYS if k in keys] == list(ESSENTIAL_KEYS)
    assert form.head_key("distance") + ".n" in keys  # the per-task heads it loaded
    assert any("Class mode — advanced controls hidden" in m.value for m in at.markdown)
    way_out = [link for link in at.main.get("page_link") if link.value == "Show all controls"]
    assert way_out and way_out[0].proto.query_string == "mode=full"
    # the sidebar keeps to the current run
    assert "sidebar.run_pick" not in widget_keys(at.sidebar)
    assert not any("Runs:" in c.value for c in at.sidebar.caption)
    # hidden is not gone: the config still has the link's seed, weight decay and alpha
    assert _form_config(at) == parse_config(SHARED)
    assert at.query_params["mode"] == "class"

    at.query_params.pop("mode")  # a page switch clears the URL: class mode stays, and says so
    at.query_params.pop("cfg")
    at.switch_page("pages/runs.py").run()
    assert at.query_params["mode"] == "class" and "cfg" in at.query_params
    at.switch_page("pages/train.py").run()
    assert "cfg.seed" not in form_keys(at)

    at.query_params["mode"] = "full"  # what the "Show all controls" link opens
    at.session_state[YAML_PANEL_KEY] = True  # where the YAML upload is
    at.run()
    keys = form_keys(at)
    assert [k for k in ADVANCED_KEYS if k in keys] == list(ADVANCED_KEYS)
    assert "mode" not in at.query_params and "sidebar.run_pick" in widget_keys(at.sidebar)
    assert not any("Class mode" in m.value for m in at.markdown)


def test_class_mode_shows_the_knobs_a_lesson_names(app):
    app.query_params.update({"cfg": share.encode_config(parse_config(SHARED)), "mode": "class"})
    at = app.run()
    at.session_state["lesson_knobs"] = ["optim.weight_decay", "weighting.params.alpha", "seed"]
    at.run()
    assert not at.exception
    keys = form_keys(at)
    assert {"cfg.optim.weight_decay", "cfg.weighting.params.gradnorm.alpha", "cfg.seed"} <= \
        set(keys)
    assert "cfg.weighting.params.gradnorm.lr" not in keys  # the method's other param
    assert not {"cfg.device", "cfg.optim.optimizer", "upload.yaml"} & set(keys)
    assert any("optim.weight_decay" in m.value for m in at.markdown)  # the banner names them
    assert form_widget(at, "number_input", "cfg.optim.weight_decay").value == pytest.approx(0.001)


def test_a_backbone_trunk_shows_its_controls_one_diagram_box_and_refuses_bad_weights(
        app, tmp_path):
    at = app.run()
    form_widget(at, "selectbox", "cfg.data.suite").set_value("scenes").run()
    form_widget(at, "selectbox", "cfg.model.trunk.type").set_value("resnet18").run()
    assert not at.exception and not _start(at).disabled
    assert not [n for n in at.number_input if n.key.startswith("cfg.model.trunk.layers")]
    spec = at.get("graphviz_chart")[0].proto.spec
    assert "ResNet-18 · 5 stages → 512×3×3" in spec and "11,176,512 params" in spec
    assert "Upsample ×2" in spec  # the dense heads' decoders
    form_widget(at, "selectbox", "cfg.model.trunk.trainable").set_value("none")
    form_widget(at, "text_input", form.WEIGHTS_KEY).input(str(tmp_path / "elsewhere.pt")).run()
    assert _start(at).disabled  # outside the allowed folders: not even looked at
    messages = [e.value for e in at.error]
    assert any("allowed folders" in m for m in messages), messages
    assert not any("no weights file" in m for m in messages), messages
    inside = tmp_path / "data" / "missing.pt"  # MTL_DATA_DIR (conftest): an allowed root
    form_widget(at, "text_input", form.WEIGHTS_KEY).input(str(inside)).run()
    assert _start(at).disabled
    messages = [e.value for e in at.error]
    assert any("no weights file at" in m and "missing.pt" in m for m in messages), messages
    assert any("model.trunk.weights" in m and "to fix before Start" in m for m in messages)
    form_widget(at, "text_input", form.WEIGHTS_KEY).input("").run()
    assert not _start(at).disabled
    trunk = config_shown(at)["model"]["trunk"]
    assert trunk["type"] == "resnet18" and trunk["trainable"] == "none"
    assert trunk["weights"] is None


def test_each_config_path_names_the_form_tab_of_its_control():
    assert [run.tab_of(p) for p in ("data.suite", "tasks[1].weight", "model.trunk.layers",
                                    "weighting.method", "optim.lr", "seed", None)] == \
        ["Data & tasks", "Data & tasks", "Architecture", "Training", "Training", "Training",
         "Training"]
