"""Task suites: a registry of builders plus `load_suite`, the one way to get training data.

A builder is registered with

    @SUITES.register(name, description, params=ParamsModel,
                     task_names=lambda params: [...], input_kind="vector" | "image")
    def build(params, *, seed: int, data_dir: Path) -> SuiteData: ...

and returns the full training pool as `train` (its `val` is ignored) and its own `test`.
Optional extras: `describe=lambda params: (task specs, input shapes)` says the shapes without
any data (mtl_core.limits sizes the model from it; the Train page draws generated suites from
it), `reads_files=True` marks a suite whose data must be read from disk even so (MNIST), and
`paths=("path",)` names the params that are file paths (mtl_core.trust keeps a browser's
inside the allowed roots).
`load_suite` carves the validation split out of the pool, applies `train_fraction`, keeps
only the configured tasks, and moves everything to the training device once.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtl_core.data.base import TASK_KINDS, DataError, Split, SuiteData, TaskSpec
from mtl_core.registry import Registry

if TYPE_CHECKING:
    from mtl_core.config import DataConfig

SUITES: Registry[Callable[..., SuiteData]] = Registry("suite")

__all__ = ["SUITES", "TASK_KINDS", "DataError", "Split", "SuiteData", "TaskSpec",
           "data_dir", "load_suite"]


def data_dir() -> Path:
    """Where MNIST-style data sets live: $MTL_DATA_DIR, else a per-user cache folder."""
    env = os.environ.get("MTL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtl_lab" / "data"


def load_suite(
    cfg: DataConfig,
    seed: int,
    tasks: list[str] | None = None,
    device: torch.device | str = "cpu",
    root: Path | None = None,
) -> SuiteData:
    entry = SUITES.get(cfg.suite)
    params = entry.params.model_validate(cfg.params)
    raw = entry.build(params, seed=seed, data_dir=root or data_dir())

    pool = raw.train
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=generator)
    n_val = max(1, round(cfg.val_fraction * len(pool)))
    if len(pool) - n_val < 1:
        raise DataError(f"{cfg.suite}: {len(pool)} training samples leave none for training "
                        f"after a val_fraction of {cfg.val_fraction}")
    val = pool.take(order[:n_val])
    train_index = order[n_val:]
    n_train = max(1, math.ceil(cfg.train_fraction * len(train_index)))
    train = pool.take(train_index[:n_train])

    specs = raw.tasks
    if tasks is not None:
        by_name = {t.name: t for t in raw.tasks}
        specs = [by_name[name] for name in tasks]
    keep = {t.name for t in specs}
    inputs_used = {t.input for t in specs}

    def select(split: Split) -> Split:
        return Split({k: v for k, v in split.inputs.items() if k in inputs_used},
                     {k: v for k, v in split.targets.items() if k in keep}).to(device)

    return SuiteData(
        suite=raw.suite, tasks=specs, train=select(train), val=select(val),
        test=select(raw.test),
        input_shapes={k: v for k, v in raw.input_shapes.items() if k in inputs_used},
        input_kind=raw.input_kind, plane=raw.plane, meta=raw.meta,
    )


# Importing the suite modules registers them.
from mtl_core.data import synthetic, mnist, vision, table  # noqa: E402,F401,I001 (order = menu order)
