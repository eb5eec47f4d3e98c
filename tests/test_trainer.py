"""The training loop: learning, logging, early stopping, divergence, stop and pause."""
from __future__ import annotations

import math

import pytest
import torch

from mtl_core.config import parse_config
from mtl_core.sink import MemorySink
from mtl_core.trainer import resolve_device, train


def run(doc, sink=None):
    sink = sink or MemorySink()
    return train(parse_config(doc), sink), sink


def test_short_run_reduces_every_task_loss(tiny_doc):
    tasks = ["circle", "xor", "distance"]  # the spiral needs far more than a short run
    doc = tiny_doc({"tasks": [{"name": t} for t in tasks], "optim": {"epochs": 8}})
    result, sink = run(doc)
    assert result.status == "finished"
    for task in tasks:
        curve = [v for _, v in sink.series("train", task, "loss")]
        assert len(curve) >= 6
        first, last = sum(curve[:2]) / 2, sum(curve[-2:]) / 2
        assert last < 0.8 * first, (task, curve)
    assert set(result.summary["test"]) == set(tasks)


def test_logs_what_the_design_lists(tiny_doc):
    result, sink = run(tiny_doc())
    names = list(parse_config(tiny_doc()).task_weights())
    keys = {(r[2], r[3], r[4]) for r in sink.rows}
    for task in names:
        assert {("train", task, "loss"), ("train", task, "weight"), ("diag", task, "grad_norm"),
                ("val", task, "loss"), ("test", task, "loss")} <= keys
    assert ("train", "total", "loss") in keys and ("val", "total", "loss") in keys
    assert ("diag", f"{names[0]}|{names[1]}", "cosine") in keys
    # static weights equal the configured ones
    assert all(v == pytest.approx(1.0) for _, v in sink.series("train", names[0], "weight"))
    kinds = {kind for _, kind, _ in sink.snapshots}
    assert {"probe", "predictions", "grid"} <= kinds
    step, total, epoch = sink.last_progress
    assert step == total == result.steps and epoch == pytest.approx(2.0)
    assert set(sink.checkpoints) == {"last", "final"}
    # logging happens every log_every steps (plus the first and last), not every step
    logged_steps = [s for s, _ in sink.series("train", "total", "loss")]
    assert logged_steps[0] == 1 and logged_steps[-1] == result.steps
    assert all(s % 5 == 0 for s in logged_steps[1:-1])


def test_grid_snapshot_matches_the_plane(tiny_doc):
    _, sink = run(tiny_doc({"optim": {"epochs": 1}}))
    step, payload = [(s, p) for s, k, p in sink.snapshots if k == "grid"][-1]
    first = next(iter(payload["values"].values()))
    assert len(payload["xs"]) == len(payload["ys"]) == len(first) == len(first[0])
    for values in payload["values"].values():
        assert all(math.isfinite(v) for row in values for v in row)


def test_same_seed_same_result(tiny_doc):
    a, _ = run(tiny_doc({"optim": {"epochs": 1}}))
    b, _ = run(tiny_doc({"optim": {"epochs": 1}}))
    assert a.summary == b.summary


def test_weights_scale_the_logged_total(tiny_doc):
    names = list(parse_config(tiny_doc()).task_weights())
    doc = tiny_doc({"tasks": [{"name": names[0], "weight": 0.5}, {"name": names[1], "weight": 2.0}],
                    "optim": {"epochs": 1}})
    _, sink = run(doc)
    step = sink.series("train", "total", "loss")[-1][0]
    at = {r[3]: r[5] for r in sink.rows if r[0] == step and r[2] == "train" and r[4] == "loss"}
    assert at["total"] == pytest.approx(0.5 * at[names[0]] + 2.0 * at[names[1]], rel=1e-5)
    weights = {t: sink.series("train", t, "weight")[-1][1] for t in names[:2]}
    assert weights == {names[0]: pytest.approx(0.5), names[1]: pytest.approx(2.0)}


@pytest.mark.parametrize("method", ["static", "uncertainty", "gls", "upgrad"])
def test_diagnostic_steps_train_exactly_like_plain_steps(tiny_doc, method):
    """A step on a diagnostic step reuses the diagnostics' per-task gradients (see
    weighting.base): diagnosing every step must train the same model as diagnosing almost
    never, with task weights other than 1 and a learned method parameter."""
    names = list(parse_config(tiny_doc()).task_weights())
    summaries = []
    for log_every in (1, 10**6):
        doc = tiny_doc({"tasks": [{"name": names[0], "weight": 0.5},
                                  {"name": names[1], "weight": 2.0}],
                        "weighting": {"method": method}, "log_every": log_every})
        result, sink = run(doc)
        assert result.status == "finished"
        summaries.append(result.summary["test"])
    assert len(sink.series("diag", names[0], "grad_norm")) == 2  # first and last step only
    for task in names[:2]:
        for metric, value in summaries[0][task].items():
            assert value == pytest.approx(summaries[1][task][metric], rel=1e-4, abs=1e-6), \
                (task, metric)


def test_early_stopping_triggers(tiny_doc):
    doc = tiny_doc({"optim": {"epochs": 50, "eval_every": 2,
                              "early_stopping": {"patience": 3, "min_delta": 100.0}}})
    result, sink = run(doc)
    assert result.status == "finished"
    assert "early stopping" in result.message
    val_steps = [s for s, _ in sink.series("val", "total", "loss")]
    assert len(val_steps) == 4  # the first evaluation sets the best; 3 more without improvement
    assert result.steps == 8


def test_diverging_lr_ends_as_diverged_naming_task_and_step(tiny_doc):
    doc = tiny_doc({"optim": {"optimizer": "sgd", "lr": 1e12, "epochs": 5}})
    result, sink = run(doc)
    assert result.status == "diverged"
    assert "became" in result.message and "at step" in result.message
    names = parse_config(doc).task_weights()
    assert any(f"'{n}'" in result.message for n in names)
    assert result.steps < 5 * math.ceil(360 / 64)


def test_stop_request_ends_run_and_keeps_metrics(tiny_doc):
    sink = MemorySink(requests=["stop"])
    result, sink = run(tiny_doc({"optim": {"epochs": 20}}), sink)
    assert result.status == "stopped"
    assert result.steps < 20 * 6
    assert sink.series("train", "total", "loss")  # what was logged is kept
    assert "final" in sink.checkpoints and result.summary["test"]


def test_pause_then_resume_continues_to_the_end(tiny_doc):
    sink = MemorySink(requests=["pause", None, "resume"])
    result, sink = run(tiny_doc({"optim": {"epochs": 1}}), sink)
    assert result.status == "finished"
    assert [s for s, _ in sink.statuses] == ["paused", "running"]


def test_train_fraction_uses_fewer_steps(tiny_doc):
    full, _ = run(tiny_doc({"optim": {"epochs": 1, "batch_size": 10}}))
    part, _ = run(tiny_doc({"optim": {"epochs": 1, "batch_size": 10},
                            "data": {"train_fraction": 0.25}}))
    assert part.steps == math.ceil(full.steps / 4) or abs(part.steps - full.steps / 4) <= 1


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda:3")


def test_end_epoch_gets_the_epoch_mean_of_weighted_losses(tiny_doc, monkeypatch):
    """DWA's input: logging windows span epochs (log_every 7), the epoch means must not."""
    from mtl_core.weighting.loss_level import Static

    names, weights = ["circle", "distance"], (0.5, 1.0)
    seen: list[list[float]] = []
    monkeypatch.setattr(Static, "end_epoch", lambda self, means: seen.append(means.tolist()),
                        raising=False)

    def epoch_means(log_every: int) -> tuple[list[list[float]], MemorySink]:
        seen.clear()
        tasks = [{"name": n, "weight": w} for n, w in zip(names, weights, strict=True)]
        doc = tiny_doc({"tasks": tasks,
                        "optim": {"epochs": 3, "batch_size": 50}, "log_every": log_every})
        _, sink = run(doc)
        return list(seen), sink

    every_step, sink = epoch_means(1)  # every step's raw loss is logged
    steps = len(sink.series("train", "circle", "loss")) // 3
    assert len(every_step) == 3
    for e in range(3):
        for i, (name, w) in enumerate(zip(names, weights, strict=True)):
            losses = [v for _, v in sink.series("train", name, "loss")][e * steps:(e + 1) * steps]
            assert every_step[e][i] == pytest.approx(w * sum(losses) / steps, rel=1e-5)
    windowed, _ = epoch_means(7)
    for got, expected in zip(windowed, every_step, strict=True):
        assert got == pytest.approx(expected, rel=1e-5)
