"""Widget state <-> config document: the pure layer under the Build & Train page.

Every widget of the form has a stable, namespaced key under "cfg." that mirrors the config path
("cfg.optim.lr", "cfg.model.trunk.layers.n"), so a YAML upload or a preset can fill every
widget through session_state *before* the widgets render. Plugin params are namespaced by the
plugin ("cfg.data.params.synthetic_mmoe.correlation"), so switching suite/architecture/method
never feeds one plugin's values to another. Lists of ints (layer widths) are a count plus one
key per item ("...layers.n", "...layers.0", ...). Per-task heads are a toggle
("cfg.model.heads.same") plus one such list per task ("cfg.model.heads.per_task.<task>");
only included tasks whose widths differ from the shared head go into the config.

`config_from_state` never raises: a key that is absent means "use the default", and a value the
form cannot interpret is passed through as-is so `parse_config` names the field that is wrong.
Nothing here imports streamlit; the state is any mapping.
"""
from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from mtl_core.config import (
    ConfigError,
    ExperimentConfig,
    FieldError,
    HeadConfig,
    parse_config,
    safe_yaml,
)

PREFIX = "cfg."
PENDING_KEY = "pending_config"  # a config dict to load into the form on the next run
DEFAULT_WIDTH = 32

# Trunk presets applied when the suite changes, by the suite's input kind.
TRUNK_PRESETS: dict[str, dict[str, Any]] = {
    "vector": {"type": "mlp", "layers": [64, 64], "hidden": []},
    "image": {"type": "cnn", "layers": [16, 32], "hidden": [64]},
}

FieldKind = Literal["bool", "choice", "int", "float", "str", "int_list", "str_list", "yaml"]


@dataclass(frozen=True)
class FieldSpec:
    """What a widget needs to know about one params field."""

    name: str
    kind: FieldKind
    default: Any
    description: str = ""
    optional: bool = False  # `X | None`: an empty widget means None
    options: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def slider(self) -> bool:
        """Bounded numbers with a modest range read best as a slider."""
        if self.kind not in ("int", "float") or self.optional:
            return False
        if self.low is None or self.high is None:
            return False
        if self.kind == "int":
            return self.high - self.low <= 200
        # A float slider only when its steps can show the default (not 1e-8 on a 0..1 range).
        value, step = float(self.default or 0.0), float(self.step)
        return value == 0 or (abs(value) >= step and math.isclose(
            round(value / step) * step, value, rel_tol=1e-9, abs_tol=1e-12))

    @property
    def step(self) -> float | int:
        if self.kind == "int":
            return 1
        if self.low is not None and self.high is not None and self.high > self.low:
            return 10 ** math.floor(math.log10((self.high - self.low) / 100))
        return 0.01


def _classify(annotation: Any) -> tuple[FieldKind, bool, tuple[Any, ...]]:
    """(kind, optional, options) of a field's type annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            return "yaml", optional, ()
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        return "choice", optional, typing.get_args(annotation)
    if annotation is bool:
        return "bool", optional, ()
    if annotation is int:
        return "int", optional, ()
    if annotation is float:
        return "float", optional, ()
    if annotation is str:
        return "str", optional, ()
    if origin is list and typing.get_args(annotation) in ((int,), (str,)):
        return ("int_list" if typing.get_args(annotation) == (int,) else "str_list"), \
            optional, ()
    return "yaml", optional, ()


def field_specs(model: type[BaseModel]) -> list[FieldSpec]:
    """One FieldSpec per field of a pydantic params model, in declaration order."""
    specs = []
    for name, info in model.model_fields.items():
        kind, optional, options = _classify(info.annotation)
        low = high = None
        for meta in info.metadata:
            if isinstance(meta, (Ge, Gt)):
                low = float(meta.ge if isinstance(meta, Ge) else meta.gt)
            elif isinstance(meta, (Le, Lt)):
                high = float(meta.le if isinstance(meta, Le) else meta.lt)
        default = info.get_default(call_default_factory=True)
        specs.append(FieldSpec(name, kind, default, info.description or "", optional,
                               options, low, high))
    return specs


# --- one value <-> widget state -------------------------------------------------------------

def list_to_state(key: str, values: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{key}.n": len(values)}
    out.update({f"{key}.{i}": int(v) for i, v in enumerate(values)})
    return out


def list_item_default(state: Mapping[str, Any], key: str, i: int) -> int:
    """A new layer copies the width of the one before it."""
    for j in range(i - 1, -1, -1):
        if f"{key}.{j}" in state:
            return int(state[f"{key}.{j}"])
    return DEFAULT_WIDTH


def list_from_state(state: Mapping[str, Any], key: str) -> list[int] | None:
    if f"{key}.n" not in state:
        return None
    n = int(state[f"{key}.n"] or 0)
    return [int(state.get(f"{key}.{i}", list_item_default(state, key, i))) for i in range(n)]


def value_to_state(spec: FieldSpec, key: str, value: Any) -> dict[str, Any]:
    if spec.kind == "int_list" and isinstance(value, list):
        return list_to_state(key, value)
    if spec.kind == "yaml":
        return {key: yaml_text(value)}
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return {key: float(value)}  # number widgets refuse mixed int/float
    return {key: value}


def yaml_text(value: Any) -> str:
    """A one-line YAML text for a value; "" for None (an empty box means None)."""
    if value is None:
        return ""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip() \
        .removesuffix("...").strip()


_MISSING = object()  # "the form has no value for this field": the config default applies


def value_from_state(spec: FieldSpec, state: Mapping[str, Any], key: str) -> Any:
    """The field's value, or `_MISSING` when the form has no opinion (default applies)."""
    if spec.kind == "int_list":
        value = list_from_state(state, key)
        return _MISSING if value is None else value
    if key not in state:
        return _MISSING
    value = state[key]
    if spec.kind == "yaml" and isinstance(value, str):
        try:  # a box in a browser: the same size, alias and depth limits as a file
            return safe_yaml(value, key) if value.strip() else None
        except ConfigError:
            return value  # parse_config reports it at this field
    return value


def params_to_state(model: type[BaseModel], key: str, params: Mapping[str, Any]
                    ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in field_specs(model):
        value = params.get(spec.name, spec.default)
        out.update(value_to_state(spec, f"{key}.{spec.name}", value))
    return out


def params_from_state(model: type[BaseModel], state: Mapping[str, Any], key: str
                      ) -> dict[str, Any]:
    out = {}
    for spec in field_specs(model):
        value = value_from_state(spec, state, f"{key}.{spec.name}")
        if value is not _MISSING:
            out[spec.name] = value
    return out


# --- the whole config -----------------------------------------------------------------------

def suite_key(suite: str) -> str:
    return f"cfg.data.params.{suite}"


def arch_key(architecture: str) -> str:
    return f"cfg.model.params.{architecture}"


def method_key(method: str) -> str:
    return f"cfg.weighting.params.{method}"


def task_key(task: str, what: Literal["include", "weight"]) -> str:
    return f"cfg.tasks.{task}.{what}"


TASK_ORDER = "cfg.tasks._order"  # the config's task order (weighting params may depend on it)


def ordered_tasks(state: Mapping[str, Any], names: list[str]) -> list[str]:
    """The suite's task names, those the loaded config listed first and in its order."""
    order = [n for n in state.get(TASK_ORDER, []) if n in names]
    return order + [n for n in names if n not in order]


CSV_KINDS = "cfg.data.params.csv.kinds"  # + ".<target column>": "auto" or a task kind

# Per-task heads: a toggle, and (toggle off) one width list per task. Only the tasks whose
# widths differ from the shared `heads.layers` go into `model.heads.per_task`.
HEADS_SAME = "cfg.model.heads.same"
WEIGHTS_KEY = "cfg.model.trunk.weights"  # backbone weights: "", "imagenet" or a file path


def head_key(task: str) -> str:
    return f"cfg.model.heads.per_task.{task}"

_SCALARS = ("name", "seed", "replicas", "device", "log_every", "data.train_fraction",
            "data.val_fraction",
            "model.trunk.type", "model.trunk.activation", "model.trunk.dropout",
            "model.trunk.batch_norm", "model.trunk.trainable", "model.heads.activation",
            "model.heads.dropout",
            "optim.optimizer", "optim.lr", "optim.weight_decay", "optim.batch_size",
            "optim.epochs", "optim.eval_every", "optim.early_stopping.patience")
_FLOATS = {"data.train_fraction", "data.val_fraction", "model.trunk.dropout",
           "model.heads.dropout", "optim.lr", "optim.weight_decay"}
_LISTS = ("model.trunk.layers", "model.trunk.hidden", "model.heads.layers")


def _get(doc: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        doc = doc[part]
    return doc


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def task_names(suite: str, params: Mapping[str, Any]) -> list[str]:
    """The tasks a suite offers with these params ([] when the params are not valid yet)."""
    from mtl_core.data import SUITES

    if suite not in SUITES:
        return []
    entry = SUITES.get(suite)
    try:
        return list(entry.extra["task_names"](entry.params.model_validate(dict(params))))
    except Exception:  # invalid params: parse_config reports them next to their widgets
        return []


def state_from_config(cfg: ExperimentConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """Every widget value for a config (validated first, so every default is filled in).

    An mlp trunk's `hidden` widths are folded into `layers`: for an mlp both are plain dense
    layers, and the form shows a single list for them."""
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.weighting import METHODS

    cfg = parse_config(cfg if cfg is not None else {})
    doc = cfg.to_dict()
    if doc["model"]["trunk"]["type"] == "mlp":
        trunk = doc["model"]["trunk"]
        trunk["layers"], trunk["hidden"] = trunk["layers"] + trunk["hidden"], []
    state: dict[str, Any] = {}
    for path in _SCALARS:
        value = _get(doc, path)
        state[PREFIX + path] = float(value) if path in _FLOATS else value
    for path in _LISTS:
        state.update(list_to_state(PREFIX + path, _get(doc, path)))
    state[WEIGHTS_KEY] = cfg.model.trunk.weights or ""  # a text box: "" = no weights file

    suite = cfg.data.suite
    state["cfg.data.suite"] = suite
    state.update(params_to_state(SUITES.get(suite).params, suite_key(suite), cfg.data.params))
    if suite == "csv":
        state.pop(CSV_KINDS, None)  # the kinds are one selectbox per target instead
        kinds = cfg.data.params.get("kinds", {})
        for target in cfg.data.params.get("targets", []):
            state[f"{CSV_KINDS}.{target}"] = kinds.get(target, "auto")
    weights = cfg.task_weights()
    state[TASK_ORDER] = list(weights)
    names = task_names(suite, cfg.data.params)
    for name in names:
        state[task_key(name, "include")] = name in weights
        state[task_key(name, "weight")] = float(weights.get(name, 1.0))
    state.update(_heads_to_state(cfg, names))

    arch = cfg.model.architecture
    state["cfg.model.architecture"] = arch
    state.update(params_to_state(ARCHITECTURES.get(arch).params, arch_key(arch),
                                 cfg.model.params))
    method = cfg.weighting.method
    state["cfg.weighting.method"] = method
    state.update(params_to_state(METHODS.get(method).params, method_key(method),
                                 cfg.weighting.params))
    return state


def config_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The config document the widgets describe (absent keys keep the config defaults)."""
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.weighting import METHODS

    doc: dict[str, Any] = {}
    for path in _SCALARS:
        if PREFIX + path in state:
            _put(doc, path, state[PREFIX + path])
    for path in _LISTS:
        value = list_from_state(state, PREFIX + path)
        if value is not None:
            _put(doc, path, value)
    if doc.get("model", {}).get("trunk", {}).get("type", "mlp") == "mlp":
        _put(doc, "model.trunk.hidden", [])  # the form shows an mlp's widths as one list
    weights = str(state.get(WEIGHTS_KEY) or "").strip()
    if weights:
        _put(doc, "model.trunk.weights", weights)

    suite = state.get("cfg.data.suite", ExperimentConfig().data.suite)
    _put(doc, "data.suite", suite)
    if suite in SUITES:
        params = params_from_state(SUITES.get(suite).params, state, suite_key(suite))
        if suite == "csv":
            params["kinds"] = _csv_kinds(state, params.get("targets", []))
        _put(doc, "data.params", params)
        names = task_names(suite, params)
        if names:
            doc["tasks"] = [
                {"name": n, "weight": state.get(task_key(n, "weight"), 1.0)}
                for n in ordered_tasks(state, names)
                if state.get(task_key(n, "include"), True)
            ]
            per_task = _heads_from_state(state, doc)
            if per_task:
                _put(doc, "model.heads.per_task", per_task)

    for section, key, registry, keyfn in (
        ("model", "architecture", ARCHITECTURES, arch_key),
        ("weighting", "method", METHODS, method_key),
    ):
        name = state.get(f"cfg.{section}.{key}")
        if name is None:
            continue
        _put(doc, f"{section}.{key}", name)
        if name in registry:
            _put(doc, f"{section}.params",
                 params_from_state(registry.get(name).params, state, keyfn(name)))
    return doc


def _heads_to_state(cfg: ExperimentConfig, names: list[str]) -> dict[str, Any]:
    """The toggle, and each task's widths when some task has a head of its own."""
    heads = cfg.model.heads
    custom = any(widths != heads.layers for widths in heads.per_task.values())
    state: dict[str, Any] = {HEADS_SAME: not custom}
    if custom:
        for name in names:
            state.update(list_to_state(head_key(name), heads.layers_for(name)))
    return state


def _heads_from_state(state: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, list[int]]:
    """`model.heads.per_task` for the included tasks whose widths differ from the shared ones
    (a task whose editor is untouched, or equal to them, simply uses `heads.layers`)."""
    if state.get(HEADS_SAME, True):
        return {}
    shared = doc.get("model", {}).get("heads", {}).get("layers", HeadConfig().layers)
    out = {}
    for task in doc.get("tasks", []):
        widths = list_from_state(state, head_key(task["name"]))
        if widths is not None and widths != shared:
            out[task["name"]] = widths
    return out


def forget_head_overrides(state: MutableMapping[str, Any]) -> None:
    """Drop every task's own head widths (the toggle is back on "same head for every task"):
    turning it off again starts each task from the shared layout."""
    prefix = head_key("")
    for key in [k for k in state if isinstance(k, str) and k.startswith(prefix)]:
        del state[key]


def _csv_kinds(state: Mapping[str, Any], targets: list[str]) -> dict[str, str]:
    """Explicit kind overrides per target column ("auto" = let the suite guess)."""
    out = {}
    for target in targets:
        kind = state.get(f"{CSV_KINDS}.{target}", "auto")
        if kind != "auto":
            out[target] = kind
    return out


def validate(doc: Mapping[str, Any]) -> tuple[ExperimentConfig | None, ConfigError | None]:
    """The form's config, validated as a browser's (untrusted: paths inside the roots)."""
    try:
        return parse_config(dict(doc), trusted=False), None
    except ConfigError as exc:
        return None, exc


def errors_at(error: ConfigError | None, path: str, exact: bool = False) -> list[FieldError]:
    """Errors to show next to the widget of `path` (exact: not the fields below it)."""
    if error is None:
        return []
    if exact:
        return [e for e in error.errors if e.path == path]
    return error.for_path(path)


# --- state transitions ----------------------------------------------------------------------

def load_config_into(state: MutableMapping[str, Any], cfg: ExperimentConfig | Mapping[str, Any]
                     ) -> None:
    """Replace every form value by those of `cfg` (call before any widget renders)."""
    values = state_from_config(cfg)
    for key in [k for k in state if isinstance(k, str) and k.startswith(PREFIX)]:
        del state[key]
    state.update(values)


def reset_for_suite(state: MutableMapping[str, Any], suite: str) -> None:
    """A new suite: its own task rows (all included, weight 1), one head layout for every
    task, and a trunk that fits its inputs (cnn for images, mlp for vectors)."""
    from mtl_core.data import SUITES

    for key in [k for k in state if isinstance(k, str) and k.startswith("cfg.tasks.")]:
        del state[key]
    forget_head_overrides(state)  # the new suite has other tasks
    state[HEADS_SAME] = True
    kind = SUITES.get(suite).extra.get("input_kind", "vector") if suite in SUITES else "vector"
    preset = TRUNK_PRESETS.get(kind, TRUNK_PRESETS["vector"])
    state["cfg.model.trunk.type"] = preset["type"]
    for path in ("layers", "hidden"):
        key = f"cfg.model.trunk.{path}"
        for old in [k for k in state if isinstance(k, str) and k.startswith(key + ".")]:
            del state[old]
        state.update(list_to_state(key, preset[path]))
