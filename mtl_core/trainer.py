"""The training loop: everything a step does is visible in `train`, read top to bottom.

Per step: slice a batch (data already on the device), forward through the shared features
and the task heads, compute each task's loss, scale by the configured weights w_i, let the
weighting method fill the gradients, step the optimizer. Losses and effective weights are
accumulated on the device and read once per `log_every` steps, so a GPU never waits on the
host between logging steps. Evaluation (val metrics, prediction snapshots, early stopping)
runs every epoch or every `optim.eval_every` steps; test metrics at the end.

`replicas: K > 1` (K seeds as one stacked model) runs the same loop over K replicas at once in
`mtl_core.replicas.train_replicas`; it reuses this module's evaluation, logging rows and
checkpoint pieces.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtl_core import diagnostics
from mtl_core.config import ExperimentConfig, OptimConfig
from mtl_core.data import SuiteData, load_suite
from mtl_core.data.base import DENSE_KINDS, Split
from mtl_core.metrics import confusion_matrix, display_output, predict, task_loss, task_metrics
from mtl_core.models import MTLModel, build_model
from mtl_core.sink import Batch, MetricRow, Sink, replica_kind
from mtl_core.weighting import WeightingMethod, build_method
from mtl_core.weighting.base import StepResult, TaskGradients

PROBE_SIZE = 32  # fixed probe batch shown on the Predictions page
DENSE_PROBE_SIZE = 8  # with per-pixel tasks every probe sample stores whole maps
GRID_SIZE = 60  # resolution of the decision-boundary grid for 2-D suites
SCATTER_POINTS = 500  # regression scatter / boundary points kept per snapshot
EVAL_CHUNK = 2048
CONTROL_POLL_S = 0.5
# The "last" checkpoint (what a killed run keeps) is written at the first epoch's end, then at
# most this often: a run of 3-step epochs otherwise wrote one every 3 steps.
CHECKPOINT_EVERY_S = 10.0


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped" | "diverged"
    message: str | None
    steps: int
    summary: dict[str, Any] = field(default_factory=dict)


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec not in available_devices():
        raise ValueError(f"device {spec!r} is not available here; available: "
                         f"{', '.join(['auto', *available_devices()])}")
    return torch.device(spec)


def _check_size(cfg: ExperimentConfig, data: Any) -> None:
    """The limits once more with the real data, before any weight exists (a config that
    reached the store some other way than the CLI or the pages)."""
    from mtl_core import limits

    rows = len(data.train) + len(data.val)
    counts = limits.count_parameters(cfg, data.tasks, data.input_shapes)
    problems = (limits.params_problems(counts, replicas=cfg.replicas)
                + limits.steps_problems(cfg, rows))
    if problems:
        raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))


def make_optimizer(o: OptimConfig, params: list[torch.nn.Parameter],
                   device: torch.device) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
           "rmsprop": torch.optim.RMSprop}[o.optimizer]
    options: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay}
    if o.optimizer == "sgd":
        options["momentum"] = 0.9
    if o.optimizer != "rmsprop" and device.type in ("cpu", "cuda"):
        # One fused kernel per step for all parameters instead of a dozen small ops per
        # parameter: the same update, and 25-30% faster training for the small models here
        # on CPU (bench/overhead.py). PyTorch's default is the per-parameter loop.
        try:
            return cls(params, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):  # a dtype or device without fused kernels
            pass
    return cls(params, **options)


class _StopRequested(Exception):
    pass


def train(cfg: ExperimentConfig, sink: Sink) -> TrainResult:
    """Run one experiment (cfg already validated by parse_config), logging to `sink`."""
    if cfg.replicas > 1:  # K seeds as one stacked model
        from mtl_core.replicas import train_replicas

        return train_replicas(cfg, sink)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    names = [t.name for t in cfg.tasks or []]
    weight_values = [t.weight for t in cfg.tasks or []]
    task_weights = torch.tensor(weight_values, device=device)
    weighted = any(w != 1.0 for w in weight_values)  # else the losses are the raw ones
    data = load_suite(cfg.data, cfg.seed, names, device=device)
    specs = [data.task(n) for n in names]

    _check_size(cfg, data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data).to(device)
    method = build_method(cfg.weighting.method, cfg.weighting.params, names, model)
    optimizer = make_optimizer(cfg.optim, list(model.parameters()) + method.extra_parameters(),
                               device)
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    # On diagnostic steps the method's step may reuse the per-task gradients (see
    # weighting.base): those on the shared and the task parameters come from the Jacobian,
    # anything else (a loss-level method's own parameters) from a backward of its total.
    reuse_params = shared + model.all_task_parameters()
    listed = {id(p) for p in reuse_params}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in listed]
    others += method.extra_parameters()
    n_shared = sum(p.numel() for p in shared)

    n_train = len(data.train)
    batch_size = min(cfg.optim.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    eval_every = cfg.optim.eval_every or steps_per_epoch
    log_every = min(cfg.log_every, total_steps)
    order_rng = torch.Generator().manual_seed(cfg.seed)

    dense = any(s.kind in DENSE_KINDS for s in specs)
    probe = data.val.take(slice(0, DENSE_PROBE_SIZE if dense else PROBE_SIZE))
    sink.snapshot(0, "probe", _probe_payload(data, probe, names))
    sink.progress(0, total_steps, 0.0)

    # Device-side buffers: one row per step, read once per logging window. `epoch_mark` is
    # where the current epoch starts inside the window (windows may span epochs).
    window_losses = torch.zeros(log_every, len(names), device=device)
    window_weights = torch.zeros(log_every, len(names), device=device)
    window_steps, epoch_mark = 0, 0
    epoch_loss_sum = torch.zeros(len(names), device=device)

    best_val, best_state, evals_since_best = math.inf, None, 0
    last_val: dict[str, dict[str, float]] = {}
    best_val_metrics: dict[str, dict[str, float]] = {}
    control = _ControlPoller(sink, total_steps)
    next_checkpoint = 0.0
    step, epoch, status, message = 0, 0, "finished", None

    try:
        for epoch in range(cfg.optim.epochs):
            order = torch.randperm(n_train, generator=order_rng).to(device)
            model.train()  # once per epoch and after each evaluation, not per step (it recurses)
            for start in range(0, n_train, batch_size):
                batch = data.train.take(order[start:start + batch_size])
                features = model.features(batch.inputs)
                outputs = model.heads(features)
                task_losses = [task_loss(s, outputs[s.name], batch.targets[s.name])
                               for s in specs]
                raw = torch.stack(task_losses)
                losses = _weighted_stack(task_losses, weight_values) if weighted else raw

                step += 1
                logging_step = step % log_every == 0 or step == 1 or step == total_steps
                known: TaskGradients | None = None
                diag_rows: list[MetricRow] = []
                if logging_step and shared:  # diagnostics only here: other steps pay nothing
                    reuse = method.reuses_task_gradients
                    grads = diagnostics.task_gradients(raw, reuse_params if reuse else shared)
                    diag_rows = diagnostics.diagnostic_rows(
                        step, float(epoch), names,
                        diagnostics.gradient_stats(grads[:, :n_shared]))
                    if reuse:
                        known = TaskGradients(task_losses, reuse_params, grads, others)

                optimizer.zero_grad(set_to_none=True)
                result = method.backward(losses, features, model, known)
                # Read before the step: the update's pieces are the gradients it consumes.
                update_norm = result.update_norm if logging_step else None
                optimizer.step()

                window_losses[window_steps] = raw.detach()
                if not method.constant_weights:
                    window_weights[window_steps] = result.weights.detach()
                window_steps += 1

                if logging_step:
                    if update_norm is not None:
                        diag_rows.append((step, 0.0, "diag", "total", "update_norm",
                                          float(update_norm), 0))
                    fraction = min(epoch + (start + batch_size) / n_train, epoch + 1.0)
                    epoch_loss_sum += window_losses[epoch_mark:window_steps].sum(0)
                    diverged = _flush(sink, step, fraction, names, task_weights,
                                      window_losses[:window_steps],
                                      _mean_weights(method, result, window_weights,
                                                    window_steps) * task_weights,
                                      diag_rows)
                    sink.progress(step, total_steps, fraction)
                    if diverged:
                        row, task, value = diverged
                        bad_step = step - window_steps + 1 + row
                        message = f"loss of task {task!r} became {value} at step {bad_step}"
                        return TrainResult("diverged", message, step,
                                           {"val": _drop_total(last_val)})
                    window_steps, epoch_mark = 0, 0
                if step % eval_every == 0 or step == total_steps:
                    last_val = _evaluate_and_snapshot(model, data, probe, specs, task_weights,
                                                      sink, step, epoch)
                    model.train()
                    val_total = last_val["total"]["loss"]
                    if val_total < best_val - cfg.optim.early_stopping.min_delta:
                        best_val, evals_since_best = val_total, 0
                        best_val_metrics = last_val
                        if cfg.optim.early_stopping.patience:
                            best_state = copy.deepcopy(model.state_dict())
                    else:
                        evals_since_best += 1
                    patience = cfg.optim.early_stopping.patience
                    if patience and evals_since_best >= patience:
                        message = (f"early stopping: no val improvement in {patience} "
                                   f"evaluations (best total val loss {best_val:.4g})")
                        raise _StopRequested
                control.poll(step, epoch)
            epoch_loss_sum += window_losses[epoch_mark:window_steps].sum(0)
            epoch_mark = window_steps
            method.end_epoch(epoch_loss_sum * task_weights / steps_per_epoch)
            epoch_loss_sum.zero_()
            if time.monotonic() >= next_checkpoint:
                sink.checkpoint(_checkpoint(model, optimizer, method, step, epoch), "last")
                next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
    except _StopRequested:
        if message is None:
            status, message = "stopped", f"stopped by request at step {step}"

    if best_state is not None:
        model.load_state_dict(best_state)
    test = _evaluate(model, data.test, specs, task_weights)
    sink.metrics(_metric_rows(step, float(epoch + 1), "test", test))
    sink.checkpoint(_checkpoint(model, optimizer, method, step, epoch), "final")
    summary = {"test": _drop_total(test), "best_val": _drop_total(best_val_metrics),
               "val": _drop_total(last_val)}
    return TrainResult(status, message, step, summary)


def _weighted_stack(task_losses: list[Tensor], weights: list[float]) -> Tensor:
    """w_i · L_i, stacked from the per-task scalars (not `raw * w`): per-task backward passes
    can then start at each task's loss (diagnostics.stacked_scalars) instead of pushing zeros
    through every head."""
    return torch.stack([loss * w for loss, w in zip(task_losses, weights, strict=True)])


def _mean_weights(method: WeightingMethod, result: StepResult, window: Tensor,
                  steps: int) -> Tensor:
    """The window's mean effective weights (constant ones are not copied every step)."""
    return result.weights if method.constant_weights else window[:steps].mean(0)


class _ControlPoller:
    """Checks for stop/pause requests at most every CONTROL_POLL_S seconds of wall time."""

    def __init__(self, sink: Sink, total_steps: int) -> None:
        self.sink, self.total_steps, self.next_poll = sink, total_steps, 0.0

    def poll(self, step: int, epoch: int) -> None:
        now = time.monotonic()
        if now < self.next_poll:
            return
        self.next_poll = now + CONTROL_POLL_S
        request = self.sink.control()
        if request == "stop":
            raise _StopRequested
        if request == "pause":
            self.sink.status("paused")
            last_beat = time.monotonic()
            while True:
                time.sleep(0.2)
                if time.monotonic() - last_beat > 5.0:  # keeps the heartbeat fresh
                    self.sink.progress(step, self.total_steps, float(epoch))
                    last_beat = time.monotonic()
                request = self.sink.control()
                if request == "stop":
                    raise _StopRequested
                if request == "resume":
                    self.sink.status("running")
                    return


def _flush(sink: Sink, step: int, epoch: float, names: list[str], task_weights: Tensor,
           losses: Tensor, weights: Tensor,
           diag_rows: list[MetricRow]) -> tuple[int, str, str] | None:
    """Write one logging window; return (row, task, value) of the first non-finite loss."""
    host_losses = losses.tolist()  # the one host sync of the window
    for i, row in enumerate(host_losses):
        for name, value in zip(names, row, strict=True):
            if not math.isfinite(value):
                sink.metrics(diag_rows)
                return i, name, str(value)
    means = losses.mean(0).tolist()
    mean_weights = weights.tolist()
    total = float((losses.mean(0) * task_weights).sum())
    sink.metrics(train_rows(step, epoch, names, total, means, mean_weights)
                 + [(s, epoch, *rest) for s, _, *rest in diag_rows])
    return None


def train_rows(step: int, epoch: float, names: list[str], total: float, means: list[float],
               weights: list[float], replica: int = 0) -> list[MetricRow]:
    """One logging window's train rows: the total loss, each task's mean loss and weight."""
    rows: list[MetricRow] = [(step, epoch, "train", "total", "loss", total, replica)]
    for name, loss, weight in zip(names, means, weights, strict=True):
        rows.append((step, epoch, "train", name, "loss", loss, replica))
        rows.append((step, epoch, "train", name, "weight", weight, replica))
    return rows


@torch.no_grad()
def _forward_chunked(model: MTLModel, split: Split) -> dict[str, Tensor]:
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(split), EVAL_CHUNK):
        out = model(split.take(slice(start, start + EVAL_CHUNK)).inputs)
        for name, value in out.items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def _evaluate(model: MTLModel, split: Split, specs: list, task_weights: Tensor,
              outputs: dict[str, Tensor] | None = None) -> dict[str, dict[str, float]]:
    outputs = outputs if outputs is not None else _forward_chunked(model, split)
    device_metrics = {s.name: task_metrics(s, outputs[s.name], split.targets[s.name])
                      for s in specs}
    total = sum(w * device_metrics[s.name]["loss"]
                for s, w in zip(specs, task_weights, strict=True))
    host = {task: {k: float(v) for k, v in m.items()} for task, m in device_metrics.items()}
    host["total"] = {"loss": float(total)}
    return host


def _evaluate_and_snapshot(model: MTLModel, data: SuiteData, probe: Split, specs: list,
                           task_weights: Tensor, sink: Sink, step: int,
                           epoch: int, replica: int = 0,
                           outputs: dict[str, Tensor] | None = None,
                           pending: Batch | None = None
                           ) -> dict[str, dict[str, float]]:
    """Val metrics and the evaluation snapshots (`probe`: the first rows of `data.val`);
    `outputs` are the model's val outputs when
    the caller has them (a stacked run computes every replica's in one pass). The rows and
    snapshots go to the sink in one write each, or, with `pending`, are added to it for the
    caller to write (a stacked run writes every replica's evaluation at once)."""
    outputs = outputs if outputs is not None else _forward_chunked(model, data.val)
    val = _evaluate(model, data.val, specs, task_weights, outputs)
    batch = Batch() if pending is None else pending
    batch.rows += _metric_rows(step, float(epoch + 1), "val", val, replica)

    def add(name: str, payload: dict[str, Any]) -> None:
        batch.snapshots.append((step, replica_kind(name, replica), payload))

    # `probe` is the first rows of val (as `train` and `replicas.build_replicas` take it):
    # its outputs are those rows of the val outputs, not one more forward (a stacked run
    # paid one per replica and evaluation)
    probe_out = {name: value[:len(probe)] for name, value in outputs.items()}
    if model.training:  # what follows (inspect, grid) runs the model in evaluation mode
        model.eval()
    add("predictions", {"outputs": {
        s.name: _display_output(s, probe_out[s.name]).tolist() for s in specs}})
    confusion, scatter = {}, {}
    for s in specs:
        target = data.val.targets[s.name]
        if s.kind == "regression":
            k = min(SCATTER_POINTS, len(target))
            scatter[s.name] = {"true": target[:k].tolist(), "pred": outputs[s.name][:k].tolist()}
        elif s.kind in ("classification", "binary"):
            classes = s.num_classes if s.kind == "classification" else 2
            confusion[s.name] = confusion_matrix(predict(s, outputs[s.name]), target,
                                                 classes).tolist()
    if confusion:
        add("confusion", confusion)
    if scatter:
        add("scatter", scatter)
    if data.plane is not None:
        add("grid", _grid_payload(model, data, specs))
    inspected = model.inspect(probe.inputs)
    if inspected:
        add("inspect", inspected)
    if pending is None:
        batch.write(sink)
    return val


def _display_output(spec, output: Tensor) -> Tensor:
    return display_output(spec, output)


@torch.no_grad()
def _grid_payload(model: MTLModel, data: SuiteData, specs: list) -> dict[str, Any]:
    xmin, xmax, ymin, ymax = data.plane  # type: ignore[misc]
    device = next(iter(data.val.inputs.values())).device
    xs = torch.linspace(xmin, xmax, GRID_SIZE, device=device)
    ys = torch.linspace(ymin, ymax, GRID_SIZE, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    key = specs[0].input
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    model.eval()
    out = model({key: points})
    values = {}
    for s in specs:
        o = out[s.name]
        if s.kind == "binary":
            o = torch.sigmoid(o)
        elif s.kind == "classification":
            o = o.argmax(-1).float()
        values[s.name] = o.reshape(GRID_SIZE, GRID_SIZE).tolist()
    shown = data.val.take(slice(0, SCATTER_POINTS))
    pts = shown.inputs[key]
    return {"xs": xs.tolist(), "ys": ys.tolist(),
            "points": {"x": pts[:, 0].tolist(), "y": pts[:, 1].tolist()},
            "targets": {s.name: shown.targets[s.name].tolist() for s in specs},
            "values": values}


def _probe_payload(data: SuiteData, probe: Split, names: list[str]) -> dict[str, Any]:
    tasks = {}
    for name in names:
        s = data.task(name)
        tasks[name] = {"kind": s.kind, "class_names": s.class_names, "input": s.input,
                       "num_classes": s.num_classes}
        if s.out_size is not None:
            tasks[name]["out_size"] = list(s.out_size)
    images = {}
    if data.input_kind == "image":
        for key, x in probe.inputs.items():
            flat = x.reshape(x.shape[0], -1)
            lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
            scaled = ((flat - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
            # (N, H, W) for grey images, (N, 3, H, W) for colour ones
            images[key] = scaled.reshape(x.shape if x.shape[1] == 3 else
                                         (x.shape[0], *x.shape[-2:])).tolist()
    return {"tasks": tasks, "images": images,
            "targets": {n: probe.targets[n].tolist() for n in names}}


def _metric_rows(step: int, epoch: float, split: str,
                 metrics: dict[str, dict[str, float]], replica: int = 0) -> list[MetricRow]:
    return [(step, epoch, split, task, name, value, replica)
            for task, values in metrics.items() for name, value in values.items()]


def _drop_total(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: v for k, v in metrics.items() if k != "total"}


def _checkpoint(model: MTLModel, optimizer: torch.optim.Optimizer, method: WeightingMethod,
                step: int, epoch: int) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "weighting": method.state_dict(), "step": step, "epoch": epoch}
