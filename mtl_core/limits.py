"""Size limits every config meets before anything is allocated, at every entry (CLI, form,
link, upload). Defaults are generous for a laptop; the operator overrides each with an
environment variable (read on every check, so a test or a restarted server sees a change).

Each check returns `(field path, message)` pairs; `mtl_core.config` turns them into
`ConfigError` field messages, so a page shows them next to the control and the CLI exits 2.
Every message names the limit, its variable and the value; echoed values go through `short`
so a message stays a few hundred characters whatever the input.
"""
from __future__ import annotations

import math
import os
import reprlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtl_core.config import ExperimentConfig
    from mtl_core.data.base import TaskSpec

Problems = list[tuple[str, str]]
MAX_SEED = 2**32 - 1  # numpy's generators take 0 .. 2**32 - 1 (torch takes more)
MAX_SHOWN = 80  # characters of an echoed value


@dataclass(frozen=True)
class Limits:
    max_params: int = 20_000_000  # total trainable parameters of a model
    max_width: int = 4096  # any layer width / channel count
    max_layers: int = 16  # widths in one list (trunk layers, hidden, a head)
    max_steps: int = 1_000_000  # epochs x steps per epoch
    max_tasks: int = 32
    max_inputs: int = 2048  # input columns of a table
    max_config_bytes: int = 262_144  # a YAML/JSON config text (and a link's JSON)
    max_config_nodes: int = 20_000  # YAML/JSON values, aliases expanded
    max_config_depth: int = 32  # nesting of lists and mappings
    max_csv_bytes: int = 50_000_000  # a CSV file read for a run or a preview


ENV = {f.name: "MTL_" + f.name.upper() for f in fields(Limits)}


def current() -> Limits:
    """The limits in force: the defaults, overridden by MTL_MAX_* variables."""
    values: dict[str, int] = {}
    for name, var in ENV.items():
        text = os.environ.get(var)
        if text is None or not text.strip():
            continue
        try:
            values[name] = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"{var} must be a positive integer (got {short(text)})") from None
        if values[name] < 1:
            raise ValueError(f"{var} must be a positive integer (got {short(text)})")
    return Limits(**values)


def short(value: Any, limit: int = MAX_SHOWN) -> str:
    """A bounded repr: never walks all of a huge (or alias-shared) structure."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip(text: str, limit: int = 300) -> str:
    """Plain text cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxlevel = 3


def over(what: str, value: int, limit_name: str, limits: Limits) -> str:
    limit = getattr(limits, limit_name)
    return (f"{what} is {value:,}, over the limit of {limit:,} "
            f"(the operator sets it with {ENV[limit_name]})")


# --- checks on a validated config (no data, no model) ----------------------------------------

def _pool_size(cfg: ExperimentConfig) -> int | None:
    """Training rows the suite's params promise (None: only the data can tell, e.g. csv)."""
    params = cfg.data.params
    if isinstance(params.get("n_samples"), int):
        return params["n_samples"]
    if isinstance(params.get("n_train"), int):
        return params["n_train"] or 60_000  # 0 = the whole MNIST training set
    return None


def total_steps(cfg: ExperimentConfig, rows: int | None = None) -> int:
    """epochs x steps per epoch (the training split after validation and train_fraction);
    at least `epochs` when the number of rows is not known yet."""
    rows = rows if rows is not None else _pool_size(cfg)
    if rows is None:
        return cfg.optim.epochs
    n_val = max(1, round(cfg.data.val_fraction * rows))
    n_train = max(1, math.ceil(cfg.data.train_fraction * max(rows - n_val, 1)))
    return cfg.optim.epochs * math.ceil(n_train / cfg.optim.batch_size)


def steps_problems(cfg: ExperimentConfig, rows: int | None = None,
                   limits: Limits | None = None) -> Problems:
    limits = limits or current()
    steps = total_steps(cfg, rows)
    if steps <= limits.max_steps:
        return []
    return [("optim.epochs", over(f"training steps (epochs {cfg.optim.epochs:,} x "
                                  f"{steps // cfg.optim.epochs:,} steps per epoch)",
                                  steps, "max_steps", limits))]


def model_problems(model: Any, limits: Limits | None = None) -> Problems:
    """Layer widths and counts of a ModelConfig: what bounds a (meta) build's size."""
    limits = limits or current()
    out: Problems = []
    lists = {"model.trunk.layers": model.trunk.layers, "model.trunk.hidden": model.trunk.hidden,
             "model.heads.layers": model.heads.layers}
    lists.update({f"model.heads.per_task.{k}": v for k, v in model.heads.per_task.items()})
    for path, widths in lists.items():
        if len(widths) > limits.max_layers:
            out.append((path, over("the number of layers", len(widths), "max_layers", limits)))
        for i, width in enumerate(widths):
            if width > limits.max_width:
                out.append((f"{path}.{i}", over("the width", width, "max_width", limits)))
    return out  # (mmoe's experts are bounded by its params model: 16 at most)


def config_problems(cfg: ExperimentConfig, limits: Limits | None = None) -> Problems:
    """Widths, layer counts, steps, tasks and input columns: checks that need no data."""
    limits = limits or current()
    out = model_problems(cfg.model, limits)
    out += steps_problems(cfg, limits=limits)
    n_tasks = len(cfg.tasks) if cfg.tasks is not None else 0
    if n_tasks > limits.max_tasks:
        out.append(("tasks", over("the number of tasks", n_tasks, "max_tasks", limits)))
    inputs = cfg.data.params.get("inputs")
    if isinstance(inputs, list) and len(inputs) > limits.max_inputs:
        out.append(("data.params.inputs", over("the number of input columns", len(inputs),
                                               "max_inputs", limits)))
    return out


# --- parameter counts without weights ---------------------------------------------------------

def count_parameters(cfg: ExperimentConfig, tasks: list[TaskSpec] | None = None,
                     input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Parameters per owner ("shared", each task) of the model `cfg` describes, built on
    torch's meta device: shapes only, no memory for weights. `tasks`/`input_shapes` default
    to what the suite's params promise (`describe`); a csv table needs them given."""
    return meta_model(cfg, tasks, input_shapes).parameter_counts()


def meta_model(cfg: Any, tasks: list[TaskSpec] | None = None,
               input_shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
    """The model of `cfg.model` (an ExperimentConfig or a ModelConfig with `tasks` and
    `input_shapes` given) on the meta device. Call only after `config_problems` passed: the
    widths and depths bound the Python objects made here."""
    import torch

    from mtl_core.config import ModelConfig
    from mtl_core.data.base import Split, SuiteData
    from mtl_core.models import build_model

    model_cfg = cfg if isinstance(cfg, ModelConfig) else cfg.model
    if tasks is None or input_shapes is None:
        tasks, input_shapes = describe(cfg)
        wanted = set(cfg.task_weights())
        tasks = [t for t in tasks if t.name in wanted]
    used = {t.input for t in tasks}
    shapes = {k: v for k, v in input_shapes.items() if k in used}
    empty = Split({}, {})
    kind = "image" if any(len(shape) == 3 for shape in shapes.values()) else "vector"
    data = SuiteData("", list(tasks), empty, empty, empty, shapes, kind)
    with torch.device("meta"):
        return build_model(model_cfg, data)


def describe(cfg: ExperimentConfig) -> tuple[list[TaskSpec], dict[str, tuple[int, ...]]]:
    """Task specs and input shapes a suite's params promise, without reading any data."""
    from mtl_core.data import SUITES

    entry = SUITES.get(cfg.data.suite)
    hook = entry.extra.get("describe")
    if hook is None:
        raise ValueError(f"suite {cfg.data.suite!r} cannot say its shapes without its data")
    return hook(entry.params.model_validate(cfg.data.params))


def params_problems(counts: dict[str, int], limits: Limits | None = None,
                    replicas: int = 1) -> Problems:
    """The parameter limit, over all the replicas a stacked run holds at once."""
    limits = limits or current()
    total = sum(counts.values()) * replicas
    if total <= limits.max_params:
        return []
    what = ("the model's parameter count" if replicas == 1
            else f"the parameter count of {replicas} stacked replicas")
    return [("model", over(what, total, "max_params", limits)
             + "; use narrower or fewer layers" + (" or fewer replicas" if replicas > 1 else ""))]
