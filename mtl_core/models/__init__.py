"""Architectures: a registry plus `build_model`.

An architecture is registered with

    @ARCHITECTURES.register(name, description, params=ParamsModel, check=optional_fn)
    def build(model_cfg: ModelConfig, params, tasks: list[TaskSpec],
              input_shapes: dict[str, tuple[int, ...]]) -> MTLModel: ...

`check(model_cfg, params) -> list[(field_path, message)]` refuses combinations the params
model alone cannot see (e.g. a branch point deeper than the trunk).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mtl_core.models.base import Block, MTLModel
from mtl_core.registry import Registry

if TYPE_CHECKING:
    from mtl_core.config import ModelConfig
    from mtl_core.data.base import SuiteData

ARCHITECTURES: Registry[Callable[..., MTLModel]] = Registry("architecture")

__all__ = ["ARCHITECTURES", "Block", "MTLModel", "build_model"]


def build_model(cfg: ModelConfig, data: SuiteData) -> MTLModel:
    entry = ARCHITECTURES.get(cfg.architecture)
    params = entry.params.model_validate(cfg.params)
    return entry.build(cfg, params, data.tasks, data.input_shapes)


from mtl_core.models import hard_sharing, single_task, cross_stitch, mmoe, mtan  # noqa: E402,F401,I001
