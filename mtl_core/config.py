"""The experiment config: one document that fully describes a run.

`parse_config` is the single gate every entry point (CLI, pages, tests, presets) goes through.
It fills defaults, validates types and bounds with pydantic, then checks references against
the registries (suite, architecture, method, task names) and each plugin's own params model.
All problems are reported together as `ConfigError`, each with the dotted field path, so the
pages can show a message next to the widget concerned and the CLI can print them all.
"""
from __future__ import annotations

import json
import math
import re
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

from mtl_core import limits
from mtl_core.limits import MAX_SEED, clip, short

Activation = Literal["relu", "leaky_relu", "gelu", "tanh", "sigmoid", "elu", "silu"]
ACTIVATIONS: tuple[str, ...] = Activation.__args__  # type: ignore[attr-defined]
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
TrunkType = Literal["mlp", "cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small"]
TRUNK_TYPES: tuple[str, ...] = TrunkType.__args__  # type: ignore[attr-defined]
BACKBONES: tuple[str, ...] = TRUNK_TYPES[2:]  # torchvision models (mtl_core.models.backbones)
# How many stages each backbone has (the units hard_sharing's shared_layers counts).
BACKBONE_STAGES: dict[str, int] = {name: 5 for name in BACKBONES}
Trainable = Literal["all", "last_block", "none"]


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
    channels (3x3 conv + 2x2 max-pool each), `hidden` the dense widths after flattening.
    A torchvision backbone (`resnet18`, ..., image suites only) replaces the conv layers by
    its stages (`layers` is not used); `hidden` adds dense layers after it. `weights`: none,
    `imagenet` (from the local torch cache) or a path to a state dict file; `trainable`: which
    of its stages train (the heads and `hidden` layers always do)."""

    type: TrunkType = "mlp"
    layers: list[int] = Field(default_factory=lambda: [64, 64])
    hidden: list[int] = Field(default_factory=list)
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False
    weights: str | None = None
    trainable: Trainable = "all"

    _check_layers = field_validator("layers", "hidden")(_widths)

    @property
    def is_backbone(self) -> bool:
        return self.type in BACKBONES

    @property
    def depth(self) -> int:
        if self.is_backbone:
            return BACKBONE_STAGES[self.type] + len(self.hidden)
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
    seed: int = Field(0, ge=0, le=MAX_SEED)
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


MAX_ERRORS = 20  # a config with thousands of bad items gets a readable list


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    errors = exc.errors()
    for err in errors[:MAX_ERRORS]:
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = clip(err["msg"].removeprefix("Value error, "), 300)
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {short(err['input'])})"  # bounded: never the whole input
        out.append(FieldError(path, msg))
    if len(errors) > MAX_ERRORS:
        out.append(FieldError(prefix, f"... and {len(errors) - MAX_ERRORS} more problems"))
    return out


def _walk_problems(document: Any, lim: limits.Limits) -> list[FieldError]:
    """Non-finite numbers anywhere (inf/nan break training and the store's JSON), and a
    document too big or too deep (aliases counted each time they are used), checked before
    pydantic copies anything."""
    errors: list[FieldError] = []
    budget = [lim.max_config_nodes]

    def walk(node: Any, path: tuple[str, ...], depth: int) -> bool:
        budget[0] -= 1
        if budget[0] < 0 or depth > lim.max_config_depth:
            return False
        if isinstance(node, float) and not math.isfinite(node):
            errors.append(FieldError(".".join(path), f"must be a finite number (got {node})"))
        elif isinstance(node, dict):
            return all(walk(v, (*path, str(k)), depth + 1) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            return all(walk(v, (*path, str(i)), depth + 1) for i, v in enumerate(node))
        return True

    if not walk(document, (), 0):
        return [FieldError("", f"the config is too large or nested too deep: more than "
                               f"{lim.max_config_nodes:,} values or {lim.max_config_depth} "
                               f"levels (MTL_MAX_CONFIG_NODES, MTL_MAX_CONFIG_DEPTH)")]
    return errors[:MAX_ERRORS]


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


def parse_config(document: dict[str, Any] | ExperimentConfig | None, *,
                 trusted: bool = True) -> ExperimentConfig:
    """Validate a config document; return it with every default and task filled in.

    Every origin gets the size limits (mtl_core.limits) and finite numbers. `trusted=False`
    (a config from a browser, or the CLI under MTL_RESTRICT_PATHS) also keeps every file
    path inside the allowed roots (mtl_core.trust)."""
    from mtl_core.data import SUITES
    from mtl_core.models import ARCHITECTURES
    from mtl_core.trust import path_problems, refusal, weights_outside_roots
    from mtl_core.weighting import METHODS

    lim = limits.current()

    if isinstance(document, ExperimentConfig):
        document = document.to_dict()
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([FieldError("", "a config must be a mapping of fields "
                                          f"(got {type(document).__name__})")])
    walked = _walk_problems(document, lim)
    if walked:
        raise ConfigError(walked)
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
        if cfg.model.trunk.is_backbone:
            from mtl_core.models.backbones import check_trunk

            weights = cfg.model.trunk.weights
            if not trusted and weights_outside_roots(weights):
                # Refused before the file is looked at: its existence is not for a browser.
                errors.append(FieldError("model.trunk.weights", refusal(weights or "")))
            else:
                errors.extend(FieldError(p, m) for p, m in check_trunk(
                    cfg.model.trunk, cfg.data.suite, suite.extra.get("input_kind")))
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
        errors.append(FieldError("device", f"unknown device {short(cfg.device)}; "
                                 "use auto, cpu, cuda, cuda:N or mps"))
    errors.extend(FieldError(p, m) for p, m in limits.config_problems(cfg, lim))
    if cfg.seed + cfg.replicas - 1 > MAX_SEED:  # replica i trains seed + i
        errors.append(FieldError("replicas", f"seeds {cfg.seed}…{cfg.seed + cfg.replicas - 1} "
                                 f"go past the largest seed, {MAX_SEED}: lower the seed or "
                                 "the replicas"))
    if not trusted:
        errors.extend(FieldError(p, m) for p, m in path_problems(cfg.data.suite,
                                                                 cfg.data.params))
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


def load_config(path: str | Path, *, trusted: bool = True) -> ExperimentConfig:
    """Read a YAML or JSON file (JSON is YAML) and validate it."""
    return parse_config(loads_config_text(read_config_file(path), source=str(path)),
                        trusted=trusted)


def read_config_file(path: str | Path) -> str:
    """The text of a config file: at most MTL_MAX_CONFIG_BYTES, UTF-8 (ConfigError if not)."""
    path = Path(path)
    lim = limits.current()
    try:
        with path.open("rb") as handle:
            data = handle.read(lim.max_config_bytes + 1)  # never more, whatever the file is
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read {path}: {exc.strerror}")]) from None
    return decode_config_bytes(data, str(path))


def decode_config_bytes(data: bytes, source: str = "config") -> str:
    """Config bytes (a file, an upload) as text; ConfigError for a binary or non-UTF-8 one."""
    lim = limits.current()
    if len(data) > lim.max_config_bytes:
        raise ConfigError([FieldError("", _too_big(source, len(data), lim))])
    if b"\x00" in data:
        raise ConfigError([FieldError("", f"{source} is a binary file, not a YAML or JSON "
                                          "config")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError("", f"{source} is not UTF-8 text (byte "
                                          f"0x{data[exc.start]:02x} at position {exc.start}); "
                                          "save it as UTF-8")]) from None


def _too_big(source: str, size: int, lim: limits.Limits) -> str:
    return f"{source}: {limits.over('the size in bytes', size, 'max_config_bytes', lim)}"


class _TooBig(Exception):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader that counts, while composing, every node with each alias expanded (the
    size the document has once loaded and walked) and the nesting depth; it stops at the
    first node past a limit, long before an alias bomb or a 200,000-deep `[` costs anything."""

    def __init__(self, stream: str, lim: limits.Limits) -> None:
        super().__init__(stream)
        self.lim = lim
        self.depth = 0
        self.aliases = 0
        self.sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > self.lim.max_config_depth:
            raise _TooBig(f"it nests lists and mappings too deep: more than "
                          f"{self.lim.max_config_depth} levels (MTL_MAX_CONFIG_DEPTH)")
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        children = node.value if isinstance(node.value, list) else []
        size = 1
        for child in children:
            for part in (child if isinstance(child, tuple) else (child,)):
                size += self.sizes.get(id(part), 1)
        self.sizes[id(node)] = size
        if size > self.lim.max_config_nodes:
            raise _TooBig(f"it has more than {self.lim.max_config_nodes:,} values once its "
                          f"{self.aliases:,} alias references are expanded "
                          "(MTL_MAX_CONFIG_NODES)")
        return node


def safe_yaml(text: str, source: str = "config") -> Any:
    """YAML (or JSON) text as Python values, within the size, alias and depth limits."""
    lim = limits.current()
    if len(text) > lim.max_config_bytes or len(text.encode()) > lim.max_config_bytes:
        raise ConfigError([FieldError("", _too_big(source, len(text.encode()), lim))])
    loader = _LimitedLoader(text, lim)
    try:
        return loader.get_single_data()
    except _TooBig as exc:
        raise ConfigError([FieldError("", f"{source} was refused: {exc}")]) from None
    except RecursionError:  # belt and braces: the depth limit comes first
        raise ConfigError([FieldError("", f"{source} nests too deep")]) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # also a bad date,
        raise ConfigError([FieldError("", f"{source} is not valid YAML: "  # a 5,000-digit int
                                          f"{clip(str(exc), 300)}")]) from None
    finally:
        loader.dispose()


def loads_config_text(text: str, source: str = "config") -> dict[str, Any]:
    document = safe_yaml(text, source)
    return document if document is not None else {}


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def safe_json(raw: bytes | str, source: str = "config") -> Any:
    """JSON as Python values, refused before `json.loads` when too big or nested too deep."""
    lim = limits.current()
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if len(text) > lim.max_config_bytes:
        raise ConfigError([FieldError("", _too_big(source, len(text), lim))])
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > lim.max_config_depth:
                raise ConfigError([FieldError("", f"{source} nests lists and mappings too "
                                                  f"deep: more than {lim.max_config_depth} "
                                                  "levels (MTL_MAX_CONFIG_DEPTH)")])
        elif token in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError([FieldError("", f"{source} nests too deep")]) from None


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(cfg.to_dict(), indent=2))
    else:
        path.write_text(cfg.to_yaml())
