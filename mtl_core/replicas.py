"""Stacked runs (`replicas: K`): seeds seed..seed+K-1 of one config trained together.

Replica i is the run `seed + i` alone trains (`trainer.train`):
- its data, model and weighting method are built as that run builds them, under
  `torch.manual_seed(seed + i)`; it keeps its own batch-order generator and its own global
  random state (dropout masks, GradDrop), swapped in around its work;
- it has its own `MTLModel` and weighting method, so every method, the evaluation and the
  checkpoints work on a replica unchanged; one optimizer (elementwise: Adam, AdamW, SGD,
  RMSprop; the trainer clips no gradient norm) updates each as its own run's would.

The step, two engines:
- "stacked" (the default): the K replicas' parameters live in stacked leaves (a leading
  replica dimension; each replica's own parameters are views of its slice) and one folded
  template (`models.stacked`) runs all K batches at once: one batched op per layer instead
  of K, which is what makes K seeds cost little more than one on a CPU, where small models
  are overhead-bound (bench/replicas.py).
- "loop": each replica's forward on its own model (its own leaves), K times one run's
  forward. Used where the stacked step cannot reproduce the single run: dropout (each replica
  must draw its own masks), a layer `fold` does not know, GradNorm (it differentiates a
  replica's own layer), gradient methods on the shared representation (they need each
  replica's features) or without shared parameters (they free the graph they visit).
Either way the backward is shared: the loss-level methods' totals are collected
(`weighting.base.deferred_backward`) and back-propagated in one pass; on diagnostic steps, and
on every step of a gradient-level method, every replica's Jacobian comes from T passes over the
whole graph: row t of d(Σ_r L[r, t]) is, in replica r's columns, d L[r, t] (no parameter is
shared between replicas), so replica r's method combines exactly its own task gradients.

A replica whose loss turns non-finite is marked diverged and frozen (no further updates, no
evaluation); the others go on. Early stopping is per replica too.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from mtl_core import diagnostics
from mtl_core.config import ExperimentConfig
from mtl_core.data import SuiteData, load_suite
from mtl_core.data.base import Split
from mtl_core.metrics import task_loss
from mtl_core.models import MTLModel, build_model
from mtl_core.models.stacked import (
    LeafLayout,
    fold,
    leaf_layouts,
    stacked_task_loss,
    unfoldable,
)
from mtl_core.sink import Batch, MetricRow, Sink, SnapshotEntry, replica_kind
from mtl_core.trainer import (
    CHECKPOINT_EVERY_S,
    EVAL_CHUNK,
    PROBE_SIZE,
    TrainResult,
    _ControlPoller,
    _evaluate,
    _evaluate_and_snapshot,
    _metric_rows,
    _probe_payload,
    _StopRequested,
    _weighted_stack,
    make_optimizer,
    resolve_device,
    train_rows,
)
from mtl_core.weighting import WeightingMethod, build_method
from mtl_core.weighting.base import StepResult, TaskGradients, deferred_backward

REPLICA_SNAPSHOTS = 5  # evaluations (and the last) whose snapshots every other seed writes


@dataclass
class Replica:
    """One seed of a stacked run: what its own run would hold, and where it stands."""

    index: int
    seed: int
    data: SuiteData
    model: MTLModel
    method: WeightingMethod
    order_rng: torch.Generator
    rng_state: list[Tensor]  # global CPU (and CUDA) generator state between its turns
    probe: Split
    shared: list[torch.nn.Parameter]
    reuse_params: list[torch.nn.Parameter]
    others: list[Tensor]
    weights: Tensor  # this slot's task weights w_i (a sweep's slots differ in them)
    weight_values: list[float]
    order: Tensor | None = None
    status: str = "running"  # "running" | "diverged" | "early_stopped"
    message: str | None = None
    best_val: float = math.inf
    best_state: dict[str, Any] | None = None
    evals_since_best: int = 0
    last_val: dict[str, dict[str, float]] = field(default_factory=dict)
    best_val_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    result: StepResult | None = None

    @property
    def active(self) -> bool:
        return self.status == "running"

    def parameters(self) -> list[Tensor]:
        return list(self.model.parameters()) + self.method.extra_parameters()


def _rng_state(device: torch.device) -> list[Tensor]:
    state = [torch.get_rng_state()]
    if device.type == "cuda":
        state.append(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state: list[Tensor], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


@contextmanager
def own_random_state(replica: Replica, device: torch.device) -> Iterator[None]:
    """Run with `replica`'s global random state, as if it were its own process."""
    outer = _rng_state(device)
    _set_rng_state(replica.rng_state, device)
    try:
        yield
    finally:
        replica.rng_state = _rng_state(device)
        _set_rng_state(outer, device)


def _manual_seed(seed: int, device: torch.device) -> None:
    """`torch.manual_seed` as the single run calls it, for a CPU run without its seeding of
    every accelerator backend (each records a traceback for its lazy init: 2/3 of the call,
    twice per replica)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


Slot = tuple[int, list[float]]  # (seed, task weights): what one stacked replica trains


def default_slots(cfg: ExperimentConfig) -> list[Slot]:
    """`replicas: K`: seeds seed..seed+K-1, all with the config's task weights."""
    weights = [t.weight for t in cfg.tasks or []]
    return [(cfg.seed + i, list(weights)) for i in range(cfg.replicas)]


def build_replicas(cfg: ExperimentConfig, device: torch.device, names: list[str],
                   probe_size: int, slots: list[Slot] | None = None) -> list[Replica]:
    """One replica per slot (`default_slots` unless given: a stacked sweep's slots are
    (point, seed) pairs), each built exactly as `trainer.train` builds the run of its seed
    with its weights."""
    replicas = []
    # A sweep's points share their seeds: each seed's data and initial model are built once
    # (its later slots get their own copies) and the random state they leave is restored.
    built: dict[int, tuple[SuiteData, MTLModel, list[Tensor]]] = {}
    slots = slots or default_slots(cfg)
    seeds = [seed for seed, _ in slots]
    for index, (seed, weights) in enumerate(slots):
        if seed in built:
            first_data, first_model, state = built[seed]
            data, model = copy.copy(first_data), copy.deepcopy(first_model)
            _set_rng_state(state, device)
        else:
            _manual_seed(seed, device)
            data = load_suite(cfg.data, seed, names, device=device)
            _manual_seed(seed, device)
            model = build_model(cfg.model, data).to(device)
            if seeds.count(seed) > 1:  # kept only for a seed a later slot shares
                built[seed] = (copy.copy(data), copy.deepcopy(model), _rng_state(device))
        method = build_method(cfg.weighting.method, cfg.weighting.params, names, model)
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        reuse = shared + model.all_task_parameters()
        listed = {id(p) for p in reuse}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in listed]
        others += method.extra_parameters()
        replicas.append(Replica(index, seed, data, model, method,
                                torch.Generator().manual_seed(seed), _rng_state(device),
                                data.val.take(slice(0, probe_size)), shared, reuse, others,
                                torch.tensor(weights, device=device), list(weights)))
    sizes = {len(r.data.train) for r in replicas}
    if len(sizes) > 1:  # a suite whose size depends on the seed cannot share batch steps
        raise ValueError(f"replicas: the seeds give training sets of different sizes "
                         f"{sorted(sizes)}; use replicas: 1")
    return replicas


def choose_engine(cfg: ExperimentConfig, replicas: list[Replica]) -> str:
    """"stacked" where the vmapped forward reproduces each replica's run, else "loop"."""
    if cfg.model.trunk.dropout > 0 or cfg.model.heads.dropout > 0:
        return "loop"
    first = replicas[0]
    method = first.method
    if method.differentiates_parameters:
        return "loop"  # its own gradients on a replica's parameters need them in the graph
    if method.kind == "gradient":
        if not method.reuses_task_gradients:
            return "loop"
        own = [id(p) for p in (*method.shared, *method._own_params)]  # type: ignore[attr-defined]
        if own != [id(p) for p in first.reuse_params]:
            return "loop"  # it would compute (and free) its own Jacobian
    return "stacked"


class StackedModel:
    """The replicas' parameters and buffers as stacked leaves (leading replica dimension), and
    the task losses (K, T) of all replicas from one pass of a folded template
    (`models.stacked.fold`: replica r's batch is rows r·B..(r+1)·B−1).

    The optimizer updates the stacked leaves; each replica's own `nn.Parameter`s (those its
    model and its weighting method hold) are views of its slice, so evaluation, checkpoints
    and `load_state_dict` on a replica's model read and write the stacked storage. A method
    that writes a replica's `.grad` (from a Jacobian, `known`) writes it on those views;
    `collect_grads` moves it into the stacked leaves before the optimizer step."""

    @classmethod
    def build(cls, models: list[MTLModel], specs: list) -> StackedModel | None:
        """None when the model has a layer `fold` cannot stack."""
        names = [n for n, _ in models[0].named_parameters()]
        named = [dict(m.named_parameters()) for m in models]  # once per model, not per name
        per_replica = [[params[n] for params in named] for n in names]
        by_name = leaf_layouts(models[0])
        layouts = [by_name[n] for n in names]
        leaves = [torch.nn.Parameter(layout.stack([v.detach() for v in views]))
                  for layout, views in zip(layouts, per_replica, strict=True)]
        buffer_names = [n for n, _ in models[0].named_buffers()]
        buffers = [torch.stack([m.get_buffer(n) for m in models]) for n in buffer_names]
        template = fold(models[0], dict(zip(names, leaves, strict=True)),
                        dict(zip(buffer_names, buffers, strict=True)), len(models))
        if template is None:
            return None
        return cls(models, specs, template, per_replica, leaves, layouts, buffer_names,
                   buffers)

    def __init__(self, models: list[MTLModel], specs: list, template: MTLModel,
                 per_replica: list[list[torch.nn.Parameter]],
                 leaves: list[torch.nn.Parameter], layouts: list[LeafLayout],
                 buffer_names: list[str], buffers: list[Tensor]) -> None:
        self.template, self.specs, self.replicas = template, specs, len(models)
        # training inputs and targets (K, B, ...) as they are, where the template can
        self.unfolded = all(s.kind in ("classification", "binary", "regression")
                            for s in specs) and unfoldable(template)
        self.per_replica, self.params, self.layouts = per_replica, leaves, layouts
        for leaf, layout, views in zip(leaves, layouts, per_replica, strict=True):
            for r, v in enumerate(views):
                v.data = layout.view(leaf.data, r)
        self.index = {id(v): j for j, views in enumerate(per_replica) for v in views}
        for name, stacked in zip(buffer_names, buffers, strict=True):
            owner, _, leaf_name = name.rpartition(".")
            for r, m in enumerate(models):
                m.get_submodule(owner)._buffers[leaf_name] = stacked[r]

    def __call__(self, inputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """inputs and targets (K, B, ...) -> the task losses (K, T)."""
        def folded(x: Tensor) -> Tensor:
            return x.reshape(-1, *x.shape[2:])

        out = self.template(inputs if self.unfolded else
                            {n: folded(x) for n, x in inputs.items()})
        return torch.stack([stacked_task_loss(
            s, out[s.name], targets[s.name] if self.unfolded else folded(targets[s.name]),
            self.replicas) for s in self.specs], dim=1)

    @torch.no_grad()
    def outputs(self, inputs: dict[str, Tensor], chunk: int) -> list[dict[str, Tensor]]:
        """Every replica's outputs (evaluation mode) on its own inputs (K, N, ...), in one
        pass per chunk of N."""
        self.template.eval()
        n = next(iter(inputs.values())).shape[1]
        parts: list[dict[str, list[Tensor]]] = [{} for _ in range(self.replicas)]
        for start in range(0, n, chunk):
            folded = {k: x[:, start:start + chunk].reshape(-1, *x.shape[2:])
                      for k, x in inputs.items()}
            for name, value in self.template(folded).items():
                for r, part in enumerate(value.chunk(self.replicas)):
                    parts[r].setdefault(name, []).append(part)
        self.template.train()
        return [{name: torch.cat(v) for name, v in p.items()} for p in parts]

    def collect_grads(self) -> None:
        """Add the gradients written on the replicas' views to the stacked leaves."""
        for leaf, layout, views in zip(self.params, self.layouts, self.per_replica,
                                       strict=True):
            grads = [v.grad for v in views]
            if all(g is None for g in grads):
                continue
            stacked = torch.stack([leaf.new_zeros(leaf.shape[1:]) if g is None
                                   else layout.to_slice(g, leaf.shape[1:]) for g in grads])
            leaf.grad = stacked if leaf.grad is None else leaf.grad.add_(stacked)
            for v in views:
                v.grad = None

    def jacobian_blocks(self, raw: Tensor, params: list[torch.nn.Parameter]
                        ) -> tuple[list[int], list[Tensor]]:
        """The stacked leaves of replica 0's `params` (their indices in `self.params`) and,
        for each, the (T, K, slice numel) block of task gradients in the leaf's layout: row t
        of leaf j is the gradient of Σ_r raw[r, t] on the leaf, which is, in slice r,
        d raw[r, t] (no parameter is shared between replicas). T passes over the stacked
        graph, each started at task t's (K,) losses where `raw` stacks them (a pass from
        raw[:, t] would push zeros through every other task's head too, as
        `diagnostics.stacked_scalars` says of the single run); the graph is kept."""
        order = [self.index[id(p)] for p in params]
        n_replicas, n_tasks = raw.shape
        leaves = [self.params[j] for j in order]
        if not order or not raw.requires_grad:
            return order, [raw.new_zeros((n_tasks, n_replicas, leaf[0].numel()))
                           for leaf in leaves]
        starts = _task_edges(raw) or [raw[:, t] for t in range(n_tasks)]
        ones = raw.new_ones(n_replicas)
        rows = [torch.autograd.grad(start, leaves, grad_outputs=ones, retain_graph=True,
                                    materialize_grads=True) for start in starts]
        blocks = [torch.stack([r[j].reshape(n_replicas, -1) for r in rows])
                  for j in range(len(leaves))]
        return order, blocks

    def jacobians(self, raw: Tensor, per_replica: list[list[torch.nn.Parameter]]
                  ) -> list[Tensor]:
        """Each replica's (T, P_r) task-gradient matrix on its own parameters `per_replica[r]`
        (views), from `jacobian_blocks`. The graph is kept."""
        order, blocks = self.jacobian_blocks(raw, per_replica[0])
        if not order:
            return [raw.new_zeros((raw.shape[1], 0)) for _ in per_replica]
        ordered = [self.layouts[j].replica_order(b, self.params[j].shape[1:])
                   for j, b in zip(order, blocks, strict=True)]
        return [torch.cat([b[:, r] for b in ordered], dim=1) for r in range(raw.shape[0])]

    def assign_grads(self, order: list[int], blocks: list[Tensor], coefficients: Tensor
                     ) -> None:
        """Static's update from the task gradients: leaf j's gradient in slice r is
        Σ_t coefficients[r, t] · blocks[j][t, r], as `weighting.base.backprop` assembles a
        single run's from its Jacobian (coefficients (K, T): each replica's task weights,
        zero where it no longer trains)."""
        weights = coefficients.t().unsqueeze(-1).to(blocks[0].dtype) if blocks else None
        for j, block in zip(order, blocks, strict=True):
            leaf = self.params[j]
            leaf.grad = (weights * block).sum(0).reshape(leaf.shape)


def _task_edges(raw: Tensor) -> list[GradientEdge] | None:
    """The graph edge into each task's (K,) losses when `raw` (K, T) is their stack (dim 1)."""
    node = raw.grad_fn
    if node is None or node.name() != "StackBackward0":
        return None
    edges = node.next_functions
    if len(edges) != raw.shape[1] or any(n is None for n, _ in edges):
        return None
    return [GradientEdge(n, nr) for n, nr in edges]


class StackedBatches:
    """Every replica's batch as one (K, B, ...) tensor per input and target: the replicas'
    training sets stacked once (each replica's own split then views its slice, so nothing is
    held twice), and one gather per key and step."""

    def __init__(self, replicas: list[Replica]) -> None:
        first = replicas[0].data.train
        self.inputs = {k: torch.stack([r.data.train.inputs[k] for r in replicas])
                       for k in first.inputs}
        self.targets = {k: torch.stack([r.data.train.targets[k] for r in replicas])
                        for k in first.targets}
        for i, r in enumerate(replicas):
            r.data.train = Split({k: v[i] for k, v in self.inputs.items()},
                                 {k: v[i] for k, v in self.targets.items()})
        device = next(iter(self.inputs.values())).device
        n = len(first)
        # replica r's sample i is row r·N + i of the flattened (K·N, ...) tensors
        self.offsets = (torch.arange(len(replicas), device=device) * n)[:, None]

    def take(self, index: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """index (K, B): replica r's sample ids. One index_select per key (much faster on a
        CPU than indexing with two index tensors)."""
        flat = (index + self.offsets).reshape(-1)
        k, b = index.shape

        def gather(v: Tensor) -> Tensor:
            return v.reshape(-1, *v.shape[2:]).index_select(0, flat).reshape(k, b, *v.shape[2:])

        return ({name: gather(v) for name, v in self.inputs.items()},
                {name: gather(v) for name, v in self.targets.items()})


def replica_jacobians(raw: Tensor, per_replica: list[list[torch.nn.Parameter]]
                      ) -> list[Tensor]:
    """Each replica's (T, P_r) task-gradient matrix from T passes over the stacked graph.

    `raw` (K, T) are the replicas' task losses; replica r's parameters reach only row r, so
    the gradient of Σ_r raw[r, t] on replica r's parameters is d raw[r, t]. The graph is kept.
    """
    flat = [p for params in per_replica for p in params]
    if not flat or not raw.requires_grad:
        return [raw.new_zeros((raw.shape[1], sum(p.numel() for p in ps))) for ps in per_replica]
    matrix = diagnostics.jacobian(raw.sum(0), flat, retain_graph=True)
    sizes = [sum(p.numel() for p in ps) for ps in per_replica]
    return list(matrix.split(sizes, dim=1))


def mean_metrics(entries: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean of each task's metric over the entries that have it finite."""
    out: dict[str, dict[str, float]] = {}
    tasks = list(dict.fromkeys(t for e in entries for t in e))
    for task in tasks:
        names = list(dict.fromkeys(n for e in entries for n in e.get(task, {})))
        values = {}
        for name in names:
            xs = [e[task][name] for e in entries
                  if name in e.get(task, {}) and math.isfinite(e[task][name])]
            if xs:
                values[name] = statistics.fmean(xs)
        out[task] = values
    return out


def replica_summary(replicas: list[Replica], tests: list[dict[str, dict[str, float]]]
                    ) -> dict[str, Any]:
    """`summary.test/val/best_val` as means over the replicas, plus `summary.replicas`."""
    entries = []
    for rep, test in zip(replicas, tests, strict=True):
        entry: dict[str, Any] = {"seed": rep.seed, "test": test,
                                 "val": _drop_total(rep.last_val),
                                 "best_val": _drop_total(rep.best_val_metrics)}
        if rep.status == "diverged":
            entry["diverged"] = rep.message
        entries.append(entry)
    return {key: mean_metrics([e[key] for e in entries]) for key in ("test", "val", "best_val")
            } | {"replicas": entries}


def _drop_total(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: v for k, v in metrics.items() if k != "total"}


def flush_replicas(sink: Sink, step: int, epoch: float, names: list[str],
                   task_weights: Tensor, replicas: list[Replica], losses: Tensor,
                   weights: list[Tensor], diag_rows: list[MetricRow]) -> None:
    """Write one logging window of every active replica; losses (steps, K, T). A replica
    with a non-finite loss in the window is marked diverged instead (its rows stop here)."""
    host = losses.tolist()  # the window's host sync
    means = losses.mean(0)
    all_means, totals = means.tolist(), (means * task_weights).sum(-1).tolist()
    all_weights = (torch.stack(weights) * task_weights).tolist()
    rows: list[MetricRow] = []
    first_step = step - len(host) + 1
    for rep in replicas:
        if not rep.active:
            continue
        bad = next(((i, name, value) for i, row in enumerate(host)
                    for name, value in zip(names, row[rep.index], strict=True)
                    if not math.isfinite(value)), None)
        if bad is not None:
            i, task, value = bad
            rep.status = "diverged"
            rep.message = f"loss of task {task!r} became {value} at step {first_step + i}"
            continue
        rows += train_rows(step, epoch, names, totals[rep.index], all_means[rep.index],
                           all_weights[rep.index], rep.index)
    active = {rep.index for rep in replicas if rep.active}
    sink.metrics(rows + [(s, epoch, *rest) for s, _, *rest in diag_rows if rest[-1] in active])


def train_replicas(cfg: ExperimentConfig, sink: Sink) -> TrainResult:
    """`trainer.train` for `replicas: K > 1`: the same loop, over K replicas at once."""
    out = train_slots(cfg, sink)
    if out.status == "diverged":
        messages = "; ".join(f"seed {r.seed}: {r.message}" for r in out.replicas)
        return TrainResult("diverged", f"every replica diverged ({messages})", out.steps,
                           replica_summary(out.replicas, out.tests))
    message = out.message
    diverged = [r for r in out.replicas if r.status == "diverged"]
    if diverged:
        note = "; ".join(f"replica {r.index} (seed {r.seed}) diverged: {r.message}"
                         for r in diverged)
        message = f"{message}; {note}" if message else note
    return TrainResult(out.status, message, out.steps, replica_summary(out.replicas, out.tests))


@dataclass
class SlotsOutcome:
    """What `train_slots` ends with: the run's status ("diverged" only when every slot
    diverged), its message, the steps, every slot's replica and test metrics ({} where it
    diverged)."""

    status: str
    message: str | None
    steps: int
    replicas: list[Replica]
    tests: list[dict[str, dict[str, float]]]


def train_slots(cfg: ExperimentConfig, sink: Sink, slots: list[Slot] | None = None
                ) -> SlotsOutcome:
    """The stacked loop over `slots` ((seed, task weights) each; `default_slots(cfg)` unless
    given). Slot s logs as replica s of `sink`; its loss is Σ_i w_{s,i} L_{s,i} with its own
    weights, so a static weight sweep's points train as one stacked model
    (`mtl_core.stacked_sweep`)."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    names = [t.name for t in cfg.tasks or []]
    replicas = build_replicas(cfg, device, names, PROBE_SIZE, slots)
    # (K, T): each slot's own weights (all rows equal in a plain `replicas: K` run)
    task_weights = torch.stack([r.weights for r in replicas])
    weighted = any(w != 1.0 for r in replicas for w in r.weight_values)
    first = replicas[0]
    specs = [first.data.task(n) for n in names]
    engine = choose_engine(cfg, replicas)
    # Loss-level methods draw nothing from the global generator (RLW has its own): only a
    # gradient-level one (GradDrop) needs each replica's global random state around its step.
    own_rng = first.method.kind != "loss"
    # Static's step is exactly backprop(Σ losses) with weights 1: summed for all replicas at once
    plain_sum = first.method.sums_losses
    if plain_sum:
        for rep in replicas:
            rep.result = StepResult(weights=torch.ones(len(names), device=device))
    reuse = first.method.reuses_task_gradients
    gradient_level = first.method.kind == "gradient"
    n_shared = sum(p.numel() for p in first.shared)
    K, T = len(replicas), len(names)
    # Static with every trainable leaf among the shared and task parameters: its logging
    # steps' update comes from the Jacobian blocks (`StackedModel.assign_grads`).
    static_blocks = plain_sum and reuse and not first.others
    n_shared_leaves = len(first.shared)

    stacked = StackedModel.build([r.model for r in replicas], specs) \
        if engine == "stacked" else None
    batches = StackedBatches(replicas) if stacked is not None else None
    # every replica's val inputs side by side, for one stacked evaluation pass
    val_inputs = ({k: torch.stack([r.data.val.inputs[k] for r in replicas])
                   for k in first.data.val.inputs} if stacked is not None else {})
    if stacked is not None:  # the stacked leaves, and each method's own parameters
        params = stacked.params + [p for r in replicas for p in r.method.extra_parameters()]
    else:
        params = [p for r in replicas for p in r.parameters()]
    optimizer = make_optimizer(cfg.optim, params, device)

    n_train = len(first.data.train)
    batch_size = min(cfg.optim.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = cfg.optim.epochs * steps_per_epoch
    eval_every = cfg.optim.eval_every or steps_per_epoch
    log_every = min(cfg.log_every, total_steps)
    patience = cfg.optim.early_stopping.patience
    # The other seeds' evaluation snapshots (replica r > 0 of a run; of each point, in a
    # stacked sweep) are written at about REPLICA_SNAPSHOTS evaluations spread over the run
    # and at its last; the others are held back, the latest is written if the run ends early.
    # The run's own seed writes every evaluation. Writing all of them cost more than the
    # training (loss_scales, 5 seeds: 405 snapshots, 16.5 MB, for 20 epochs).
    evaluations = math.ceil(total_steps / eval_every)
    spread = max(1, math.ceil(evaluations / REPLICA_SNAPSHOTS))
    held: dict[int, list[SnapshotEntry]] = {}  # replica -> its latest unwritten snapshots
    n_eval = 0

    sink.snapshot_many([(0, replica_kind("probe", rep.index),
                         _probe_payload(rep.data, rep.probe, names)) for rep in replicas])
    sink.progress(0, total_steps, 0.0)

    window_losses = torch.zeros(log_every, K, T, device=device)
    window_weights = torch.zeros(log_every, K, T, device=device)
    window_steps, epoch_mark = 0, 0
    epoch_loss_sum = torch.zeros(K, T, device=device)
    control = _ControlPoller(sink, total_steps)
    next_checkpoint = 0.0
    step, epoch, status, message = 0, 0, "finished", None

    try:
        for epoch in range(cfg.optim.epochs):
            for rep in replicas:
                rep.order = torch.randperm(n_train, generator=rep.order_rng).to(device)
                if stacked is None:  # the stacked template is always in training mode
                    rep.model.train()
            orders = torch.stack([r.order for r in replicas])  # type: ignore[misc]
            for start in range(0, n_train, batch_size):
                step += 1
                logging_step = step % log_every == 0 or step == 1 or step == total_steps
                # Per-task scalars (the Jacobian's `known.losses`) only where a Jacobian is
                # taken; other steps give each method its row of `raw` (the same values).
                scalars = (logging_step and bool(first.shared)) or (gradient_level and reuse)
                features: list[list[Tensor]] = [[] for _ in replicas]
                if stacked is not None and batches is not None:
                    raw = stacked(*batches.take(orders[:, start:start + batch_size]))
                    per_task = ([list(raw[r].unbind(0)) for r in range(K)]
                                if scalars and not static_blocks else [])
                else:
                    per_task = []
                    for rep in replicas:
                        with own_random_state(rep, device):
                            batch = rep.data.train.take(
                                rep.order[start:start + batch_size])  # type: ignore[index]
                            features[rep.index] = rep.model.features(batch.inputs)
                            outputs = rep.model.heads(features[rep.index])
                        per_task.append([task_loss(s, outputs[s.name], batch.targets[s.name])
                                         for s in specs])
                    raw = torch.stack([torch.stack(ls) for ls in per_task])
                weighted_raw = raw * task_weights if weighted else raw
                diag_rows: list[MetricRow] = []
                known: list[TaskGradients | None] = [None] * K
                assembled: tuple[list[int], list[Tensor]] | None = None
                if scalars and static_blocks and stacked is not None:
                    # static: the update is assembled from the stacked blocks for every
                    # replica at once (no per-replica method step, no gather of view grads)
                    assembled = stacked.jacobian_blocks(raw, first.reuse_params)
                    diag_rows = _diagnostic_rows(step, epoch, names, replicas, torch.cat(
                        assembled[1][:n_shared_leaves], dim=2).transpose(0, 1))
                elif scalars:
                    wrt = [r.reuse_params if reuse else r.shared for r in replicas]
                    grads = (stacked.jacobians(raw, wrt) if stacked is not None
                             else replica_jacobians(raw, wrt))
                    if logging_step and first.shared:
                        diag_rows = _diagnostic_rows(step, epoch, names, replicas, torch.stack(
                            [g[:, :n_shared] for g in grads]))
                    if reuse:
                        for rep, g in zip(replicas, grads, strict=True):
                            known[rep.index] = TaskGradients(per_task[rep.index],
                                                             rep.reuse_params, g, rep.others)

                optimizer.zero_grad(set_to_none=True)
                with_known = any(k is not None for k in known)
                if assembled is not None and stacked is not None:
                    active_rows = torch.tensor([r.active for r in replicas], device=device)
                    stacked.assign_grads(*assembled, task_weights * active_rows[:, None])
                elif plain_sum and not with_known and stacked is not None:
                    # static on every replica: Σ_r Σ_t w_t·L[r, t] in one op and one backward
                    active = [r.index for r in replicas if r.active]
                    summed = weighted_raw if len(active) == K else weighted_raw[active]
                    summed.sum().backward()
                else:
                    # each replica's weighted losses, built only here (static's summed and
                    # assembled steps above need none: K autograd nodes a step fewer)
                    if per_task:
                        losses = [_weighted_stack(ls, rep.weight_values) if weighted
                                  else torch.stack(ls)
                                  for ls, rep in zip(per_task, replicas, strict=True)]
                    else:
                        losses = list(weighted_raw.unbind(0))
                    with deferred_backward() as totals:
                        for rep in replicas:
                            if rep.active:
                                _replica_backward(rep, losses[rep.index], features[rep.index],
                                                  known[rep.index], raw, device, own_rng)
                    if totals:
                        torch.autograd.backward(totals)
                if stacked is not None and with_known:  # grads written on the replicas' views
                    stacked.collect_grads()
                for rep in replicas:
                    if not rep.active:  # frozen: the optimizer skips a parameter without grad
                        # (a stacked leaf still moves its slice: early stopping restores the
                        # best state, and a diverged replica is not evaluated again)
                        for p in (rep.method.extra_parameters() if stacked is not None
                                  else rep.parameters()):
                            p.grad = None
                update_norms = [rep.result.update_norm if logging_step and rep.active
                                and rep.result is not None else None for rep in replicas]
                optimizer.step()

                window_losses[window_steps] = raw.detach()
                if not first.method.constant_weights:
                    for rep in replicas:
                        if rep.active and rep.result is not None:
                            window_weights[window_steps, rep.index] = rep.result.weights.detach()
                window_steps += 1

                if logging_step:
                    for rep, norm in zip(replicas, update_norms, strict=True):
                        if norm is not None:
                            diag_rows.append((step, 0.0, "diag", "total", "update_norm",
                                              float(norm), rep.index))
                    fraction = min(epoch + (start + batch_size) / n_train, epoch + 1.0)
                    epoch_loss_sum += window_losses[epoch_mark:window_steps].sum(0)
                    weights = [_window_weights(rep, window_weights, window_steps, T)
                               for rep in replicas]
                    flush_replicas(sink, step, fraction, names, task_weights, replicas,
                                   window_losses[:window_steps], weights, diag_rows)
                    sink.progress(step, total_steps, fraction)
                    window_steps, epoch_mark = 0, 0
                if step % eval_every == 0 or step == total_steps:
                    val_outputs = (stacked.outputs(val_inputs, EVAL_CHUNK)  # type: ignore[arg-type]
                                   if stacked is not None else [None] * K)
                    n_eval += 1
                    shown = n_eval % spread == 0 or step == total_steps
                    pending = Batch()  # every replica's rows and snapshots, one write each
                    for rep in replicas:
                        if not rep.active:
                            continue
                        own = pending if shown or rep.seed == cfg.seed else Batch()
                        _evaluate_replica(rep, cfg, specs, rep.weights, sink, step, epoch,
                                          stacked is None, val_outputs[rep.index], own)
                        if own is pending:
                            held.pop(rep.index, None)
                        else:
                            pending.rows += own.rows
                            held[rep.index] = own.snapshots
                    pending.write(sink)
                if not any(rep.active for rep in replicas):
                    if all(rep.status == "diverged" for rep in replicas):
                        raise _AllDiverged
                    message = (f"early stopping: every replica went {patience} evaluations "
                               "without a val improvement")
                    raise _StopRequested
                control.poll(step, epoch)
            epoch_loss_sum += window_losses[epoch_mark:window_steps].sum(0)
            epoch_mark = window_steps
            for rep in replicas:
                if rep.active:
                    rep.method.end_epoch(epoch_loss_sum[rep.index] * rep.weights
                                         / steps_per_epoch)
            epoch_loss_sum.zero_()
            if time.monotonic() >= next_checkpoint:  # as in trainer.train
                sink.checkpoint(_replicas_checkpoint(replicas, optimizer, step, epoch), "last")
                next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
    except _StopRequested:
        if message is None:
            status, message = "stopped", f"stopped by request at step {step}"
    except _AllDiverged:
        _write_held(sink, held)
        return SlotsOutcome("diverged", None, step, replicas, [{} for _ in replicas])

    _write_held(sink, held)
    for rep in replicas:
        if rep.status != "diverged" and rep.best_state is not None:
            rep.model.load_state_dict(rep.best_state)
    # every replica's test outputs in one stacked pass, as its val outputs
    test_outputs = (stacked.outputs({k: torch.stack([r.data.test.inputs[k] for r in replicas])
                                     for k in first.data.test.inputs}, EVAL_CHUNK)
                    if stacked is not None else [None] * K)
    tests, test_rows = [], []
    for rep in replicas:
        if rep.status == "diverged":
            tests.append({})
            continue
        test = _evaluate(rep.model, rep.data.test, specs, rep.weights,
                         test_outputs[rep.index])
        test_rows += _metric_rows(step, float(epoch + 1), "test", test, rep.index)
        tests.append(_drop_total(test))
    sink.metrics(test_rows)
    sink.checkpoint(_replicas_checkpoint(replicas, optimizer, step, epoch), "final")
    return SlotsOutcome(status, message, step, replicas, tests)


class _AllDiverged(Exception):
    pass


def _write_held(sink: Sink, held: dict[int, list[SnapshotEntry]]) -> None:
    """The held-back snapshots of each replica's last evaluation, in one write."""
    entries = [entry for index in sorted(held) for entry in held[index]]
    if entries:
        sink.snapshot_many(entries)
    held.clear()


def _replica_backward(rep: Replica, losses: Tensor, features: list[Tensor],
                      known: TaskGradients | None, raw: Tensor, device: torch.device,
                      own_rng: bool) -> None:
    """Replica `rep`'s method step, with its own random state where the method may draw
    from the global generator. A method that fails on a non-finite loss (a solver on a NaN
    Gramian) marks the replica diverged instead."""
    try:
        with own_random_state(rep, device) if own_rng else nullcontext():
            rep.result = rep.method.backward(losses, features, rep.model, known)
    except (RuntimeError, ValueError, ArithmeticError):
        values = raw[rep.index].detach()
        if bool(torch.isfinite(values).all()):
            raise
        rep.status, rep.result = "diverged", None
        rep.message = f"a task loss became {values.tolist()} (the weighting method failed on it)"


def _diagnostic_rows(step: int, epoch: int, names: list[str], replicas: list[Replica],
                     shared: Tensor) -> list[MetricRow]:
    """Every active replica's diagnostic rows from its (T, P_shared) gradients on the shared
    parameters, shared (K, T, P_shared): one batched Gramian for all replicas. The columns may
    be in any order (a leaf layout's): norms and cosines do not depend on it."""
    stats = diagnostics.gradient_stats(shared)
    rows: list[MetricRow] = []
    for rep in replicas:
        if rep.active:
            rows += diagnostics.diagnostic_rows(
                step, float(epoch), names, {k: v[rep.index] for k, v in stats.items()},
                replica=rep.index)
    return rows


def _window_weights(rep: Replica, window: Tensor, steps: int, n_tasks: int) -> Tensor:
    if rep.result is None:
        return window.new_full((n_tasks,), math.nan)
    if rep.method.constant_weights:
        return rep.result.weights.detach()
    return window[:steps, rep.index].mean(0)


def _evaluate_replica(rep: Replica, cfg: ExperimentConfig, specs: list, task_weights: Tensor,
                      sink: Sink, step: int, epoch: int, train_mode: bool,
                      outputs: dict[str, Tensor] | None, pending: Batch) -> None:
    """The single run's evaluation step for one replica, early stopping included; its rows
    and snapshots are added to `pending`."""
    rep.last_val = _evaluate_and_snapshot(rep.model, rep.data, rep.probe, specs, task_weights,
                                          sink, step, epoch, rep.index, outputs, pending)
    if train_mode:
        rep.model.train()
    val_total = rep.last_val["total"]["loss"]
    stopping = cfg.optim.early_stopping
    if val_total < rep.best_val - stopping.min_delta:
        rep.best_val, rep.evals_since_best = val_total, 0
        rep.best_val_metrics = rep.last_val
        if stopping.patience:
            # clone, not deepcopy: a stacked replica's tensors are views of all replicas' storage
            rep.best_state = {k: v.detach().clone() for k, v in rep.model.state_dict().items()}
    else:
        rep.evals_since_best += 1
    if stopping.patience and rep.evals_since_best >= stopping.patience:
        rep.status = "early_stopped"
        rep.message = (f"early stopping: no val improvement in {stopping.patience} "
                       f"evaluations (best total val loss {rep.best_val:.4g})")


def _replicas_checkpoint(replicas: list[Replica], optimizer: torch.optim.Optimizer, step: int,
                         epoch: int) -> dict[str, Any]:
    """Replica 0 where a single run's checkpoint has it, and every replica under "replicas"."""
    first = replicas[0]
    return {"model": first.model.state_dict(), "optimizer": optimizer.state_dict(),
            "weighting": first.method.state_dict(), "step": step, "epoch": epoch,
            "replicas": [{"seed": r.seed, "status": r.status, "model": r.model.state_dict(),
                          "weighting": r.method.state_dict()} for r in replicas]}
