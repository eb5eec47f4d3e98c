"""GPU subset: runs only where CUDA is available (`pytest -m gpu`); skipped elsewhere."""
from __future__ import annotations

import math

import pytest
import torch

from mtl_core.config import parse_config
from mtl_core.sink import MemorySink
from mtl_core.trainer import resolve_device, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("method", ["static", "uncertainty", "pcgrad", "upgrad", "mgda"])
def test_training_on_cuda_finishes_with_finite_metrics(tiny_doc, method):
    doc = tiny_doc({"device": "cuda", "weighting": {"method": method}})
    sink = MemorySink()
    result = train(parse_config(doc), sink)
    assert result.status == "finished"
    for metrics in result.summary["test"].values():
        assert all(math.isfinite(v) for v in metrics.values())
    assert resolve_device("auto").type == "cuda"


def test_model_state_lives_on_the_gpu(tiny_doc):
    sink = MemorySink()
    train(parse_config(tiny_doc({"device": "cuda", "optim": {"epochs": 1}})), sink)
    state = sink.checkpoints["final"]["model"]
    assert all(t.is_cuda for t in state.values())


def _sync_warnings(cfg) -> int:
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            train(cfg, MemorySink())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in record)


def test_no_host_sync_per_step(tiny_doc):
    """Two more epochs add ~180 steps but only two evaluations and checkpoints: if a step
    synchronised with the host, the count of synchronising calls would grow by the steps."""
    base = {"device": "cuda", "log_every": 100000, "optim": {"batch_size": 4}}
    one = _sync_warnings(parse_config(tiny_doc({**base, "optim": {"batch_size": 4, "epochs": 1}})))
    three = _sync_warnings(parse_config(tiny_doc({**base,
                                                  "optim": {"batch_size": 4, "epochs": 3}})))
    assert three - one < 100, (one, three)
