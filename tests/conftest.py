"""Shared fixtures: an isolated runs dir and data dir per test, its run store, and a tiny-config
factory."""
from __future__ import annotations

import copy
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)  # the CI machine has 2 cores; worker processes need the other

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"suite": "toy_2d", "params": {"n_samples": 400}},
    "model": {"trunk": {"type": "mlp", "layers": [16, 16]}, "heads": {"layers": [8]}},
    "optim": {"lr": 0.01, "batch_size": 64, "epochs": 2},
    "log_every": 5,
}


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny_doc():
    """Return a factory: tiny_doc(**changes) -> a small, fast config document."""

    def make(changes: dict[str, Any] | None = None) -> dict[str, Any]:
        return deep_update(TINY, changes or {})

    return make


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "runs"
    monkeypatch.setenv("MTL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MTL_MAX_JOBS", os.environ.get("MTL_TEST_MAX_JOBS", "2"))
    monkeypatch.setenv("MTL_WARM_UP", "0")  # no idle pre-started workers outliving a test
    return runs


@pytest.fixture
def store(isolated_dirs: Path) -> Any:
    """The test's own run store (in the isolated runs dir)."""
    from mtl_core.store import RunStore

    return RunStore(isolated_dirs)


@pytest.fixture
def end_workers(isolated_dirs: Path) -> Iterator[Path]:
    """The runs dir, for tests that start worker processes: idle workers wait for more runs
    for a while, so they are ended afterwards (they serve a store only this test uses)."""
    from mtl_core import jobs
    from mtl_core.store import RunStore

    yield isolated_dirs
    if (isolated_dirs / "runs.db").exists():
        for pid, _, _ in RunStore(isolated_dirs).workers():
            if jobs.pid_alive(pid):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def runs_dir(end_workers: Path) -> Path:
    return end_workers


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The device of every parameter any module registers (meta = no memory behind it)."""
    devices: list[str] = []
    original = torch.nn.Module.register_parameter

    def spy(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None:
            devices.append(param.device.type)
        original(self, name, param)

    monkeypatch.setattr(torch.nn.Module, "register_parameter", spy)
    return devices


# Browser tests (tests/test_browser*.py) share these; other tests never ask for them.
@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; skip without one, except under CI=true (then fail)."""
    from browser_support import require_chromium

    return require_chromium()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """One headless Chromium per test module."""
    from browser_support import launch_chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch_chromium(playwright, chromium)
        try:
            yield launched
        finally:
            launched.close()

