"""The experiment config: one document that fully describes a run.

`parse_config` is the single gate every entry point (CLI, pages, tests, presets) goes through.
It fills defaults, validates types and bounds with pydantic, then checks references against
the registries (suite, architecture, method, task names) and each plugin's own params model.
All problems are reported together as `ConfigError`, each with the dotted field path, so the
pages can show a message next to the widget concerned and the CLI can print them all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

Activation = Literal["relu", "leaky_relu", "gelu", "tanh", "sigmoid", "elu", "silu"]
ACTIVATIONS: tuple[str, ...] = Activation.__args__  # type: ignore[attr-defined]
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class DataConfig(_Strict):
    suite: str = "synthetic_mmoe"
    params: dict[str, Any] = Field(default_factory=dict)
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)


class TaskConfig(_Strict):
    name: str
    weight: float = Field(1.0, ge=0.0)


def _widths(value: list[int]) -> list[int]:
    for width in value:
        if width < 1:
            raise ValueError(f"every layer width must be at least 1 (got {width})")
    return value


Widths = Annotated[list[int], AfterValidator(_widths)]


class TrunkConfig(_Strict):
    """Shared trunk. `mlp`: `layers` then `hidden` are dense widths. `cnn`: `layers` are conv
    channels (3x3 conv + 2x2 max-pool each), `hidden` the dense widths after flattening."""

    type: Literal["mlp", "cnn"] = "mlp"
    layers: list[int] = Field(default_factory=lambda: [64, 64])
    hidden: list[int] = Field(default_factory=list)
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False

    _check_layers = field_validator("layers", "hidden")(_widths)

    @property
    def depth(self) -> int:
        return len(self.layers) + len(self.hidden)


class HeadConfig(_Strict):
    """Task heads: dense widths before each task's output layer (may be empty).
    `per_task` gives some tasks their own widths instead of `layers`."""

    layers: list[int] = Field(default_factory=lambda: [32])
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    per_task: dict[str, Widths] = Field(default_factory=dict)

    _check_layers = field_validator("layers")(_widths)

    def layers_for(self, task: str) -> list[int]:
        return self.per_task.get(task, self.layers)


class ModelConfig(_Strict):
    architecture: str = "hard_sharing"
    trunk: TrunkConfig = Field(default_factory=TrunkConfig)
    heads: HeadConfig = Field(default_factory=HeadConfig)
    params: dict[str, Any] = Field(default_factory=dict)


class WeightingConfig(_Strict):
    method: str = "static"
    params: dict[str, Any] = Field(default_factory=dict)


MAX_REPLICAS = 32  # a stacked run holds K copies of the model and of the data


class EarlyStoppingConfig(_Strict):
    patience: int = Field(0, ge=0)  # 0 = off; else evaluations without val improvement
    min_delta: float = Field(0.0, ge=0.0)  # an improvement must lower the val loss by more


class OptimConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(0.001, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # steps between evaluations; 0 = once per epoch
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    # K seeds seed..seed+K-1 trained together as one stacked model (mtl_core.replicas).
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    tasks: list[TaskConfig] | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    log_every: int = Field(20, ge=1)

    def task_weights(self) -> dict[str, float]:
        """Included tasks and their configured weights (after parse_config, never None)."""
        return {t.name: t.weight for t in self.tasks or []}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class FieldError:
    path: str  # dotted, e.g. "optim.lr" or "data.params.correlation"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid config:\n" + "\n".join(f"  - {e}" for e in errors))

    def for_path(self, prefix: str) -> list[FieldError]:
        """Errors at or below a field, for showing next to one widget."""
        return [e for e in self.errors if e.path == prefix or e.path.startswith(prefix + ".")]


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {err['input']!r})"
        out.append(FieldError(path, msg))
    return out


def _check_plugin(registry: Any, name: str, params: dict[str, Any], path: str,
                  errors: list[FieldError]) -> Any:
    """Validate a registry reference and its params; return the validated params model."""
    if name not in registry:
        errors.append(FieldError(path, f"unknown {registry.what} {name!r}; "
                                       f"choose one of: {', '.join(registry.names())}"))
        return None
    entry = registry.get(name)
    try:
        return entry.params.model_validate(params)
    except ValidationError as exc:
        parent = path.rsplit(".", 1)[0] + ".params"
        extra = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
        errors.extend(_pydantic_errors(exc, parent))
        if extra:
            allowed = ", ".join(entry.params.model_fields) or "none"
            errors.append(FieldError(parent, f"allowed params for {name!r}: {allowed}"))
        return None


def parse_config(document: dict[str, Any] | ExperimentConfig | None) -> ExperimentConfig:
    """Validate a config document; return it with every default and task filled in."""
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.weighting import METHODS

    if isinstance(document, ExperimentConfig):
        document = document.to_dict()
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([FieldError("", "a config must be a mapping of fields "
                                          f"(got {type(document).__name__})")])
    try:
        cfg = ExperimentConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_pydantic_errors(exc)) from None

    errors: list[FieldError] = []
    data_params = _check_plugin(SUITES, cfg.data.suite, cfg.data.params, "data.suite", errors)
    arch_params = _check_plugin(ARCHITECTURES, cfg.model.architecture, cfg.model.params,
                                "model.architecture", errors)
    method_params = _check_plugin(METHODS, cfg.weighting.method, cfg.weighting.params,
                                  "weighting.method", errors)

    if data_params is not None:
        suite = SUITES.get(cfg.data.suite)
        cfg.data.params = data_params.model_dump(mode="json")
        available = suite.extra["task_names"](data_params)
        if not available:
            errors.append(FieldError("data.params", f"suite {cfg.data.suite!r} defines no task "
                                     "with these params (csv: list target columns in "
                                     "data.params.targets)"))
        elif cfg.tasks is None:
            cfg.tasks = [TaskConfig(name=n) for n in available]
        if available:
            _check_tasks(cfg.tasks or [], available, errors)
            for name in cfg.model.heads.per_task:
                if name not in available:
                    errors.append(FieldError(f"model.heads.per_task.{name}",
                                             f"unknown task {name!r}; this suite has: "
                                             f"{', '.join(available)}"))
        if cfg.model.trunk.type == "cnn" and suite.extra.get("input_kind") != "image":
            errors.append(FieldError("model.trunk.type", f"a cnn trunk needs an image suite; "
                                     f"{cfg.data.suite!r} has vector inputs, use mlp"))
    if arch_params is not None:
        cfg.model.params = arch_params.model_dump(mode="json")
        check = ARCHITECTURES.get(cfg.model.architecture).extra.get("check")
        if check:
            errors.extend(FieldError(p, m) for p, m in check(cfg.model, arch_params))
    if method_params is not None:
        cfg.weighting.params = method_params.model_dump(mode="json")
        check = METHODS.get(cfg.weighting.method).extra.get("check")
        if check:
            errors.extend(FieldError(p, m) for p, m in check(cfg, method_params))
    if not _is_device_spec(cfg.device):
        errors.append(FieldError("device", f"unknown device {cfg.device!r}; "
                                 "use auto, cpu, cuda, cuda:N or mps"))
    if errors:
        raise ConfigError(errors)
    return cfg


def _check_tasks(tasks: list[TaskConfig], available: list[str],
                 errors: list[FieldError]) -> None:
    if not tasks:
        errors.append(FieldError("tasks", "at least one task is needed; "
                                 f"this suite has: {', '.join(available)}"))
        return
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        if task.name not in available:
            errors.append(FieldError(f"tasks.{i}.name", f"unknown task {task.name!r}; "
                                     f"this suite has: {', '.join(available)}"))
        if task.name in seen:
            errors.append(FieldError(f"tasks.{i}.name", f"task {task.name!r} is listed twice"))
        seen.add(task.name)
    if all(t.weight == 0 for t in tasks):
        errors.append(FieldError("tasks", "all task weights are 0: at least one task "
                                 "needs a positive weight"))


def _is_device_spec(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a YAML or JSON file (JSON is YAML) and validate it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read {path}: {exc.strerror}")]) from None
    return parse_config(loads_config_text(text, source=str(path)))


def loads_config_text(text: str, source: str = "config") -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError("", f"{source} is not valid YAML: {exc}")]) from None
    return document if document is not None else {}


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(cfg.to_dict(), indent=2))
    else:
        path.write_text(cfg.to_yaml())
