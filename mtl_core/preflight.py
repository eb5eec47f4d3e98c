"""Refuse at submit what is knowable at submit (after `parse_config`, before a run is queued).

- the device: `cuda` on a machine without CUDA is refused now, not in the worker;
- a table (csv suite): read and checked now with the suite's own checks (missing target
  column, missing values, a constant target, too few rows, non-numeric inputs, a binary
  file), and its real row count sizes the step limit;
- the model's parameter count, from a meta-device build (shapes only, no weights).

The CLI calls `check_submit` before `jobs.submit`; the Train page runs the same checks on the
shapes it already has (a message next to the control, Start disabled).
"""
from __future__ import annotations

from pathlib import Path

from mtl_core import limits
from mtl_core.config import ConfigError, ExperimentConfig, FieldError


def device_problem(device: str, available: list[str] | None = None) -> str | None:
    """Why `device` cannot train here, or None."""
    from mtl_core.jobs import ray_address

    if device == "auto" or ray_address() is not None:
        return None  # with Ray, the cluster's devices count: ray_executor.check at submit
    if available is None:
        from mtl_core.trainer import available_devices

        available = available_devices()
    if device in available:
        return None
    return f"device {limits.short(device)} is not available here; this machine has: " \
           f"{', '.join(['auto', *available])}"


def check_submit(cfg: ExperimentConfig, root: Path | None = None) -> None:
    """ConfigError naming each field that cannot work on this machine."""
    errors: list[FieldError] = []
    problem = device_problem(cfg.device)
    if problem:
        errors.append(FieldError("device", problem))
    tasks = shapes = rows = None
    if cfg.data.suite == "csv":
        from mtl_core.data import DataError, load_suite

        try:
            data = load_suite(cfg.data, seed=cfg.seed, tasks=list(cfg.task_weights()),
                              root=root)
        except DataError as exc:
            errors.append(FieldError("data", limits.clip(str(exc), 400)))
        else:
            tasks, shapes = data.tasks, data.input_shapes
            rows = len(data.train) + len(data.val)
            errors += [FieldError(p, m) for p, m in limits.steps_problems(cfg, rows)]
    if cfg.data.suite != "csv" or tasks is not None:
        counts = limits.count_parameters(cfg, tasks, shapes)
        errors += [FieldError(p, m)
                   for p, m in limits.params_problems(counts, replicas=cfg.replicas)]
    if errors:
        raise ConfigError(errors)
