"""The same config trained twice in one process (same thread count) gives the same numbers.

Found on the lesson preset soft_vs_hard_b (cross-stitch): its task1 test MSE was 0.0718 in one
training and 0.0746 in the next. The cause was the per-task Jacobian (diagnostics.jacobian,
which a loss-level method's update reuses on logging steps): the first run of a process timed
the vmapped and the looped backward against each other, alternating, and later runs used the
faster one; the two round differently, so the trajectory depended on the process's history
and on the machine's load.
"""
from __future__ import annotations

import pytest
import torch

from mtl_core import diagnostics
from mtl_core.config import parse_config
from mtl_core.lessons import get_lesson, load_preset
from mtl_core.sink import MemorySink
from mtl_core.trainer import train


@pytest.fixture
def one_thread():
    """Intra-op threads change how matmuls are split, hence their rounding: pinned here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _short(variant: int, replicas: int) -> dict:
    doc = load_preset(get_lesson("soft_vs_hard"), variant).to_dict()
    doc.update(device="cpu", replicas=replicas, log_every=1)  # every step uses the Jacobian
    doc["optim"].update(epochs=1, eval_every=5)
    doc["data"]["params"].update(n_samples=400, n_test=100)
    return doc


@pytest.mark.parametrize("variant, replicas", [(1, 1), (1, 2), (0, 1)],
                         ids=["cross_stitch", "cross_stitch-stacked", "hard_sharing"])
def test_training_twice_in_one_process_gives_identical_numbers(variant, replicas, one_thread,
                                                                monkeypatch):
    monkeypatch.setattr(diagnostics, "_STRATEGIES", {})  # as in a fresh process
    doc = _short(variant, replicas)
    sinks, results = [], []
    for _ in range(2):
        sink = MemorySink()
        results.append(train(parse_config(doc), sink))
        sinks.append(sink)
    first, second = results
    assert first.status == second.status == "finished"
    assert first.summary == second.summary
    assert [r for r in sinks[0].rows if r[2] == "train"] == \
        [r for r in sinks[1].rows if r[2] == "train"]
