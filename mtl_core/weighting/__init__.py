"""Loss weighting and gradient combination: a registry plus `build_method`.

A method is registered with

    @METHODS.register(name, description, params=ParamsModel, kind="loss" | "gradient",
                      check=optional_fn)
    class MyMethod(WeightingMethod): ...

`check(cfg: ExperimentConfig, params) -> list[(field_path, message)]` refuses combinations
the params model alone cannot see (e.g. `gradients: representation` on an architecture
without a shared representation).
"""
from __future__ import annotations

from mtl_core.models.base import MTLModel
from mtl_core.registry import Registry
from mtl_core.weighting.base import StepResult, WeightingMethod

METHODS: Registry[type[WeightingMethod]] = Registry("weighting method")

__all__ = ["METHODS", "StepResult", "WeightingMethod", "build_method"]


def build_method(name: str, params: dict, task_names: list[str],
                 model: MTLModel) -> WeightingMethod:
    entry = METHODS.get(name)
    return entry.build(task_names, entry.params.model_validate(params), model)


from mtl_core.weighting import loss_level, gradient_level  # noqa: E402,F401,I001
