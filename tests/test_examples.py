"""Every example config validates, and a shortened version of each trains to the end."""
from __future__ import annotations

from pathlib import Path

import pytest
from idx_files import write_fake_mnist

from mtl_core.config import load_config, parse_config
from mtl_core.sink import MemorySink
from mtl_core.trainer import train

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
MNIST_SUITES = {"mnist_attributes", "multi_mnist", "mnist_fashion", "digit_boxes"}


def test_there_is_one_example_per_suite():
    from mtl_core.data import SUITES

    suites = {load_config(p).data.suite for p in EXAMPLES}
    assert set(SUITES.names()) <= suites


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_shortened(path, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])  # csv paths are relative to the repo root
    doc = load_config(path).to_dict()
    doc["device"] = "cpu"
    doc["optim"]["epochs"] = 1
    params = doc["data"]["params"]
    if doc["data"]["suite"] in MNIST_SUITES:
        write_fake_mnist(tmp_path / "data", n_train=80, n_test=20)
        write_fake_mnist(tmp_path / "data", n_train=80, n_test=20, fashion=True)
        params.update(n_train=0, n_test=0, download=False)
    elif "n_samples" in params:
        params["n_samples"] = 200
    result = train(parse_config(doc), MemorySink())
    assert result.status == "finished"
    assert set(result.summary["test"]) == set(parse_config(doc).task_weights())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_the_submit_checks_without_data(path, tmp_path, monkeypatch):
    """What `python -m mtl_core train <example>` checks before queueing (mtl_core.preflight),
    with an empty data folder: the MNIST suites are sized from their describe hooks."""
    from mtl_core.preflight import check_submit

    monkeypatch.chdir(Path(__file__).parents[1])  # csv paths are relative to the repo root
    monkeypatch.setenv("MTL_DATA_DIR", str(tmp_path / "data"))
    check_submit(load_config(path).model_copy(update={"device": "cpu"}))
    assert not (tmp_path / "data").exists()
