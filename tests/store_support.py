"""A config for tests of the run store, its owners and its recovery: validated only as a
model (no registry checks), since the store does not care what the run trains."""
from __future__ import annotations

from mtl_core.config import ExperimentConfig


def config(name: str = "t") -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": name, "data": {"suite": "toy_2d"},
                                            "optim": {"epochs": 1}})
