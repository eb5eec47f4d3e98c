"""The control sections of the Build & Train page: data, tasks, architecture, training.

Each section draws keyed widgets (values come from session_state, see ui.config_form) and puts
every validation message of its fields right under the widget concerned. In class mode
(`View.class_mode`) the advanced controls are not drawn, except the knobs a loaded lesson names;
their values stay in session_state, so the config keeps them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from mtl_core.config import (
    ACTIVATIONS,
    BACKBONES,
    MAX_REPLICAS,
    OPTIMIZERS,
    TRUNK_TYPES,
    ConfigError,
)
from mtl_core.data import SUITES
from mtl_core.models import ARCHITECTURES
from mtl_core.weighting import METHODS
from ui import config_form as form
from ui.diagram import SuiteShapes
from ui.param_widgets import KEEP, ensure, layer_editor, params_widgets, show_errors
from ui.text import md_lines, md_text

KIND_HELP = {"loss": "weights the task losses", "gradient": "combines the task gradients"}
MAX_SHOWN_WEIGHT = 5.0

# Config paths (and everything below them) that class mode hides unless a lesson names them.
# "yaml" is the YAML upload, which has no config path of its own.
ADVANCED: tuple[str, ...] = (
    "seed", "device", "log_every", "yaml", "data.val_fraction", "model.params",
    "model.trunk.activation", "model.trunk.dropout", "model.trunk.batch_norm",
    "model.heads.activation", "model.heads.dropout", "weighting.params",
    "optim.optimizer", "optim.weight_decay", "optim.batch_size", "optim.eval_every",
    "optim.early_stopping",
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


@dataclass(frozen=True)
class View:
    """Which controls the page draws: all of them, or (class mode) the essentials plus the
    knobs (config paths) of the loaded lesson."""

    class_mode: bool = False
    knobs: tuple[str, ...] = ()

    def shows(self, path: str) -> bool:
        """Whether the control of a config path is drawn. A knob shows its own control and
        the group holding it ("weighting.params.alpha" draws that one param of the method)."""
        if not self.class_mode or not any(_under(path, a) for a in ADVANCED):
            return True
        return any(_under(path, k) or _under(k, path) for k in self.knobs)


FULL_VIEW = View()


def _described_picker(label: str, registry: Any, key: str, fmt: Any = None) -> str:
    """A selectbox over a registry with the chosen entry's description under it; the help
    tooltip lists every option's one-line description."""
    entries = registry.entries()
    help_text = "\n\n".join(f"**{e.name}** — {e.description}" for e in entries)
    name = st.selectbox(label, registry.names(), key=key, help=help_text,
                        format_func=fmt or str, **KEEP)
    st.caption(registry.get(name).description)
    return name


def data_section(errors: ConfigError | None, shapes: SuiteShapes | None,
                 data_error: str | None, view: View = FULL_VIEW) -> None:
    suite = _described_picker("Task suite", SUITES, "cfg.data.suite")
    show_errors(form.errors_at(errors, "data.suite"))
    if suite == "csv":
        from ui.csv_section import csv_section

        csv_section(errors)
    else:
        with st.expander("Suite parameters", expanded=True):
            params_widgets(SUITES.get(suite).params, form.suite_key(suite), errors,
                           "data.params", only=view.shows)
    c1, c2 = st.columns(2)
    c1.slider("Train fraction", 0.0, 1.0, step=0.01, key="cfg.data.train_fraction",
              help="Use only this share of the training set (the data-efficiency lessons).",
              **KEEP)
    with c1:
        show_errors(form.errors_at(errors, "data.train_fraction"))
    if view.shows("data.val_fraction"):
        c2.slider("Validation fraction", 0.0, 0.9, step=0.01, key="cfg.data.val_fraction",
                  help="Share of the training pool held out to validate on.", **KEEP)
    with c2:
        show_errors(form.errors_at(errors, "data.val_fraction"))
    if data_error:
        download = st.session_state.get(f"{form.suite_key(suite)}.download", False)
        then = (" The diagram never downloads; a run started now will try to download the "
                "files.") if download else ""
        st.warning(f"Cannot read this data set: {md_lines(data_error)}.{then}",
                   icon=":material/warning:")


def tasks_section(doc: dict[str, Any], errors: ConfigError | None,
                  shapes: SuiteShapes | None) -> None:
    """A row per task: include, kind, loss weight w_i in L = Σ w_i·L_i."""
    data = doc.get("data", {})
    names = form.ordered_tasks(st.session_state,
                               form.task_names(data.get("suite", ""), data.get("params", {})))
    st.markdown("**Tasks** — total loss *L* = Σᵢ *wᵢ*·*Lᵢ*")
    if not names:
        st.caption("This suite has no tasks yet (choose target columns above).")
    kinds = {t.name: t for t in shapes.tasks} if shapes else {}
    if names:
        c1, c2, c3 = st.columns([2, 2, 4])
        c1.caption("include")
        c2.caption("kind")
        c3.caption("loss weight *wᵢ*")
    for name in names:
        include_key, weight_key = form.task_key(name, "include"), form.task_key(name, "weight")
        ensure(include_key, True)
        ensure(weight_key, 1.0)
        c1, c2, c3 = st.columns([2, 2, 4], vertical_alignment="center")
        c1.checkbox(md_text(name), key=include_key, **KEEP)  # a CSV header a student chose
        spec = kinds.get(name)
        c2.caption(_kind_text(spec) if spec else "kind: ?")
        high = max(MAX_SHOWN_WEIGHT, float(st.session_state[weight_key]))
        c3.slider(f"weight of {name}", 0.0, high, step=0.05, key=weight_key,
                  label_visibility="collapsed", disabled=not st.session_state[include_key],
                  **KEEP)
    show_errors(form.errors_at(errors, "tasks"))


def _kind_text(spec: Any) -> str:
    if spec.kind == "classification":
        return f"classification · {spec.num_classes} classes"
    return str(spec.kind)


def architecture_section(errors: ConfigError | None, doc: dict[str, Any],
                         view: View = FULL_VIEW) -> None:
    arch = _described_picker("Architecture", ARCHITECTURES, "cfg.model.architecture")
    show_errors(form.errors_at(errors, "model.architecture"))
    if view.shows("model.params"):
        params_widgets(ARCHITECTURES.get(arch).params, form.arch_key(arch), errors,
                       "model.params", only=view.shows)
    else:
        show_errors(form.errors_at(errors, "model.params"), with_path=True)

    st.markdown("**Shared trunk**")
    c1, c2, c3 = st.columns(3)
    c1.selectbox("Type", list(TRUNK_TYPES), key="cfg.model.trunk.type",
                 help="mlp: dense layers; cnn: 3×3 conv + 2×2 max-pool layers (images only), "
                      "then dense layers; resnet18/34/50, mobilenet_v3_small: a torchvision "
                      "backbone (images only), then dense layers.", **KEEP)
    if view.shows("model.trunk.activation"):
        c2.selectbox("Activation", list(ACTIVATIONS), key="cfg.model.trunk.activation", **KEEP)
    if view.shows("model.trunk.dropout"):
        c3.slider("Dropout", 0.0, 0.9, step=0.05, key="cfg.model.trunk.dropout", **KEEP)
    show_errors(form.errors_at(errors, "model.trunk.type"))
    trunk_type = st.session_state["cfg.model.trunk.type"]
    cnn = trunk_type == "cnn"
    if trunk_type in BACKBONES:
        backbone_controls(errors)
    else:
        layer_editor("cfg.model.trunk.layers", "Conv" if cnn else "Dense",
                     unit="channels" if cnn else "width")
        show_errors(form.errors_at(errors, "model.trunk.layers"))
    if cnn or trunk_type in BACKBONES:
        layer_editor("cfg.model.trunk.hidden", "Dense after conv")
        show_errors(form.errors_at(errors, "model.trunk.hidden"))
    if view.shows("model.trunk.batch_norm"):
        st.checkbox("Batch norm", key="cfg.model.trunk.batch_norm", **KEEP)
    show_errors(form.errors_at(errors, "model.trunk.dropout"))

    heads_section(errors, [t["name"] for t in doc.get("tasks") or []], view)


def backbone_controls(errors: ConfigError | None) -> None:
    """Weights and what trains, for a torchvision backbone trunk."""
    ensure(form.WEIGHTS_KEY, "")
    ensure("cfg.model.trunk.trainable", "all")
    c1, c2 = st.columns([2, 1])
    c1.text_input("Weights", key=form.WEIGHTS_KEY, placeholder="empty = random init",
                  help="imagenet: torchvision's ImageNet weights, only if already in the "
                       "local torch cache (never downloaded); or the path of a state dict file "
                       "saved with torch.save(model.state_dict(), path).", **KEEP)
    c2.selectbox("Trainable", ["all", "last_block", "none"], key="cfg.model.trunk.trainable",
                 help="all: fine-tune the whole backbone; last_block: only its last stage; "
                      "none: frozen, only the heads train.", **KEEP)
    show_errors(form.errors_at(errors, "model.trunk.weights"))
    show_errors(form.errors_at(errors, "model.trunk.trainable"))


def heads_section(errors: ConfigError | None, tasks: list[str], view: View = FULL_VIEW) -> None:
    """One head layout for every task, or (toggle off) one per included task."""
    st.markdown("**Task heads** — every task gets its own copy")
    ensure(form.HEADS_SAME, True)
    same = st.toggle("Same head for every task", key=form.HEADS_SAME, **KEEP,
                     help="Off: give each task a head of its own width and depth (e.g. a "
                          "deeper head for the harder task).")
    if same:
        form.forget_head_overrides(st.session_state)  # off again starts from the shared head
        layer_editor("cfg.model.heads.layers", "Head", help="Hidden dense layers of each "
                     "task's head, before its output layer.")
        show_errors(form.errors_at(errors, "model.heads.layers"))
    else:
        shared = form.list_from_state(st.session_state, "cfg.model.heads.layers") or []
        if not tasks:
            st.caption("No task included yet.")
        for task in tasks:
            key = form.head_key(task)
            if f"{key}.n" not in st.session_state:  # a task starts from the shared head
                st.session_state.update(form.list_to_state(key, shared))
            layer_editor(key, md_text(task), help=f"Hidden dense layers of the head of "
                         f"task {md_text(task)}, before its output layer.")
            show_errors(form.errors_at(errors, f"model.heads.per_task.{task}"))
        show_errors(form.errors_at(errors, "model.heads.layers"))
    show_errors(form.errors_at(errors, "model.heads.per_task", exact=True))
    c1, c2 = st.columns(2)
    if view.shows("model.heads.activation"):
        c1.selectbox("Head activation", list(ACTIVATIONS), key="cfg.model.heads.activation",
                     **KEEP)
    if view.shows("model.heads.dropout"):
        c2.slider("Head dropout", 0.0, 0.9, step=0.05, key="cfg.model.heads.dropout", **KEEP)
    show_errors(form.errors_at(errors, "model.heads.dropout"))


def _method_label(name: str) -> str:
    kind = METHODS.get(name).extra.get("kind", "loss")
    return f"{name}  ({kind})"


def weighting_section(errors: ConfigError | None, view: View = FULL_VIEW) -> None:
    method = _described_picker("Weighting method", METHODS, "cfg.weighting.method",
                               fmt=_method_label)
    kind = METHODS.get(method).extra.get("kind", "loss")
    st.caption(f"A {kind}-level method: it {KIND_HELP.get(kind, kind)}.")
    show_errors(form.errors_at(errors, "weighting.method"))
    if view.shows("weighting.params"):
        params_widgets(METHODS.get(method).params, form.method_key(method), errors,
                       "weighting.params", only=view.shows)
    else:
        show_errors(form.errors_at(errors, "weighting.params"), with_path=True)


def training_section(errors: ConfigError | None, devices: list[str],
                     view: View = FULL_VIEW) -> None:
    """Optimizer and schedule, three controls a row; class mode closes the gaps of the
    controls it hides."""
    number = st.number_input
    controls: list[tuple[str, Callable[[], Any]]] = [
        ("optim.optimizer", lambda: st.selectbox("Optimizer", list(OPTIMIZERS),
                                                 key="cfg.optim.optimizer", **KEEP)),
        ("optim.lr", lambda: number("Learning rate", min_value=0.0, step=1e-4, format="%g",
                                    key="cfg.optim.lr", **KEEP)),
        ("optim.weight_decay", lambda: number("Weight decay", min_value=0.0, step=1e-4,
                                              format="%g", key="cfg.optim.weight_decay",
                                              **KEEP)),
        ("optim.batch_size", lambda: number("Batch size", min_value=1, step=16,
                                            key="cfg.optim.batch_size", **KEEP)),
        ("optim.epochs", lambda: number("Epochs", min_value=1, step=1, key="cfg.optim.epochs",
                                        **KEEP)),
        ("optim.early_stopping", lambda: number(
            "Early stopping patience", min_value=0, step=1,
            key="cfg.optim.early_stopping.patience", **KEEP,
            help="Stop after this many evaluations without a better validation loss; "
                 "0 = off.")),
        ("optim.eval_every", lambda: number("Evaluate every (steps)", min_value=0, step=10,
                                            key="cfg.optim.eval_every",
                                            help="0 = once per epoch.", **KEEP)),
        ("log_every", lambda: number("Log every (steps)", min_value=1, step=5,
                                     key="cfg.log_every", **KEEP)),
        ("seed", lambda: number("Seed", step=1, key="cfg.seed", **KEEP)),
        ("replicas", lambda: number(
            "Replicas (seeds)", min_value=1, step=1, key="cfg.replicas", **KEEP,
            help=f"Train seeds seed … seed+K−1 together as one stacked model (1 to "
                 f"{MAX_REPLICAS}). Curves show the mean with a band, tables mean ± sd; "
                 "on a CPU 5 seeds cost well under 5 runs.")),
    ]
    shown = [(path, draw) for path, draw in controls if view.shows(path)]
    for start in range(0, len(shown), 3):
        for col, (path, draw) in zip(st.columns(3), shown[start:start + 3], strict=False):
            with col:
                draw()
                show_errors(form.errors_at(errors, path))
    c1, c2 = st.columns(2)
    if view.shows("device"):
        _device_picker(c1, errors, devices)
    name_col = c2 if view.shows("device") else c1
    name_col.text_input("Run name", key="cfg.name", **KEEP)
    with name_col:
        show_errors(form.errors_at(errors, "name"))


def _device_picker(col: Any, errors: ConfigError | None, devices: list[str]) -> None:
    current = st.session_state.get("cfg.device", "auto")
    options = ["auto", *devices] + ([current] if current not in ("auto", *devices) else [])
    col.selectbox("Device", options, key="cfg.device", **KEEP,
                  help=f"Devices on this machine: {', '.join(devices)}. auto picks a GPU if "
                       "there is one.")
    with col:
        show_errors(form.errors_at(errors, "device"))
        if current not in ("auto", *devices):
            st.warning(f"{current} is not available here; this machine has: "
                       f"{', '.join(devices)}.")
