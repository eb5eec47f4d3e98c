"""Gradient-combination methods: PCGrad, MGDA, CAGrad, IMTL-G, Nash-MTL, UPGrad, Aligned-MTL,
GradDrop, GradVac and DualProj, on top of torchjd's aggregators (PCGrad, MGDA, CAGrad and
Nash-MTL: the same weightings computed by our own small solvers, in `gramian_solvers`).

Every method follows the same recipe (torchjd's `mtl_backward` + `jac_to_grad` semantics):
- task-specific parameters get the plain gradient of their own task loss, untouched by the
  combination (were one also reached by other tasks' losses, it would get what
  `loss.backward()` gives it: the sum);
- the shared part gets one combined update, computed from the matrix J of per-task gradients:
  `parameters`      J holds the exact per-task gradients on the shared parameters (T x P):
                    T backward passes over the whole graph, each from one task's loss (or,
                    on a trainer's diagnostic step, the diagnostics' own passes, reused);
  `representation`  J holds the per-task gradients on the shared representation `features`
                    (T x batch*feature, as in MGDA-UB): one backward through the heads where
                    the graph allows (`_FeatureTaps`), else T; the combined feature gradient
                    is then back-propagated once through the shared trunk, which costs what
                    it costs in a plain `loss.backward()`.
Loss vectors that are not a stack of per-task scalars take one Jacobian instead, vmapped or
looped, whichever `mtl_core.diagnostics.JacobianStrategy` measured faster.

Gramian-based methods (all but GradDrop) only need the T x T Gramian G = J J^T to choose their
weights w; the update is then w @ J. We move G to the CPU once, in float64, and run the
weighting there: every one of those weightings needs the host anyway (quadprog or our own
solvers, or Python branches on tensor values), and one small transfer replaces many tiny GPU
syncs. That transfer is the only host sync of a step; GradDrop has none. Rows of J that are
exactly zero (a task with configured weight 0) are left out of the weighting, so such a task
neither stalls MGDA at the origin nor breaks Nash-MTL's solver; its weight is 0.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from mtl_core.diagnostics import jacobian, stacked_scalars
from mtl_core.models.base import MTLModel
from mtl_core.registry import Params
from mtl_core.weighting import METHODS
from mtl_core.weighting.base import StepResult, TaskGradients, WeightingMethod
from mtl_core.weighting.gramian_solvers import (
    CAGradSolver,
    GramianSolver,
    MGDASolver,
    NashMTLSolver,
    PCGradSolver,
)

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

    from mtl_core.config import ExperimentConfig


def _jd() -> ModuleType:
    """torchjd.aggregation, imported on first use: importing torchjd imports cvxpy and scipy
    (about 1 s and 100 MB), which a run with a loss-level method, the app's pages and the CLI
    never need."""
    import torchjd.aggregation

    return torchjd.aggregation


def _quadprog(norm_eps: float, reg_eps: float) -> object:
    from torchjd.linalg import QuadprogProjector

    return QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps)

# Architectures whose `features` are not one shared representation (see MTLModel). An
# architecture entry may also say so itself with `supports_representation=False` in its extras.
NO_REPRESENTATION = frozenset({"cross_stitch", "single_task"})

GradientSource = Literal["parameters", "representation"]
_GRADIENTS_HELP = (
    "parameters: the exact Jacobian on the shared parameters; representation: the cheaper "
    "gradient on the shared representation, as in MGDA-UB"
)


# --------------------------------------------------------------------------------------------
# Params models


class GradientParams(Params):
    gradients: GradientSource = Field("parameters", description=_GRADIENTS_HELP)


PrefVector = list[Annotated[float, Field(ge=0.0)]] | None
_PREF_HELP = "weight of each task when combining (one per task, in task order); default: equal"


class MGDAParams(GradientParams):
    epsilon: float = Field(0.001, gt=0.0, le=1.0,
                           description="Frank-Wolfe stops once its step is below this")
    max_iters: int = Field(100, ge=1, le=10_000, description="Frank-Wolfe iterations at most")


class CAGradParams(GradientParams):
    c: float = Field(0.5, ge=0.0, le=10.0,
                     description="radius of the ball around the mean gradient (0 = mean)")
    norm_eps: float = Field(1e-4, ge=0.0, le=1.0, description="guard against dividing by zero")


class NashMTLParams(GradientParams):
    max_norm: float = Field(1.0, ge=0.0, description="clip the update's norm to this (0 = off)")
    update_weights_every: int = Field(1, ge=1, le=1000,
                                      description="solve for new weights every N steps")
    optim_niter: int = Field(20, ge=1, le=1000,
                             description="accepted for torchjd-style configs; unused (the "
                                         "bargaining point is solved exactly)")


class ProjectorParams(GradientParams):
    pref_vector: PrefVector = Field(None, description=_PREF_HELP)
    norm_eps: float = Field(1e-4, ge=0.0, le=1.0,
                            description="below this Gramian trace the tasks count as converged")
    reg_eps: float = Field(1e-4, ge=0.0, le=1.0,
                           description="added to the Gramian's diagonal so the QP stays solvable")


class AlignedMTLParams(GradientParams):
    pref_vector: PrefVector = Field(None, description=_PREF_HELP)
    scale_mode: Literal["min", "median", "rmse"] = Field(
        "min", description="which eigenvalue sets the scale of the aligned update")


class GradDropParams(GradientParams):
    leak: float = Field(0.0, ge=0.0, le=1.0,
                        description="share of each task gradient let through unmasked")


class GradVacParams(GradientParams):
    beta: float = Field(0.5, ge=0.0, le=1.0,
                        description="EMA rate of the target gradient similarity")
    eps: float = Field(1e-8, ge=0.0, le=1e-2, description="guard against dividing by zero")


# --------------------------------------------------------------------------------------------
# Config check


def check_gradient_method(cfg: ExperimentConfig, params: Params) -> list[tuple[str, str]]:
    """Refuse what the params model alone cannot see: `representation` on an architecture
    without a shared representation, and a pref_vector whose length is not the task count."""
    errors: list[tuple[str, str]] = []
    arch = cfg.model.architecture
    if getattr(params, "gradients", "parameters") == "representation" \
            and not _has_representation(arch):
        errors.append(("weighting.params.gradients",
                       f"architecture {arch!r} has no shared representation; use 'parameters' "
                       "(allowed: 'parameters', or 'representation' with hard_sharing-style "
                       "architectures)"))
    pref = getattr(params, "pref_vector", None)
    n_tasks = len(cfg.tasks or [])
    if pref is not None and n_tasks and len(pref) != n_tasks:
        errors.append(("weighting.params.pref_vector",
                       f"needs one value per task ({n_tasks}), got {len(pref)}"))
    if pref is not None and not any(v > 0 for v in pref):
        errors.append(("weighting.params.pref_vector", "needs at least one positive value"))
    return errors


def _has_representation(architecture: str) -> bool:
    try:
        from mtl_core.models import ARCHITECTURES

        if architecture in ARCHITECTURES:
            extra = ARCHITECTURES.get(architecture).extra
            if "supports_representation" in extra:
                return bool(extra["supports_representation"])
    except ImportError:  # architecture modules not importable: fall back to the known names
        pass
    return architecture not in NO_REPRESENTATION


# --------------------------------------------------------------------------------------------
# The shared machinery


def _trainable(params: list[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def _accumulate(param: Tensor, grad: Tensor) -> None:
    """Add to .grad the way loss.backward() does. `grad` is a tensor made for this step (an
    autograd result, or a slice of this step's update), so it is taken without a copy."""
    if grad.shape != param.shape:  # checked first: a no-op reshape still costs a dispatch
        grad = grad.reshape(param.shape)
    if grad.dtype != param.dtype:
        grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def _features_layout(feats: list[Tensor], shared: list[nn.Parameter]
                     ) -> tuple[list[tuple[list[int], list[nn.Parameter]]], list[nn.Parameter]]:
    """Which shared parameters sit before which feature tensors.

    Walking the graph down from each feature, stopping at the other features, finds the
    parameters whose every path to the losses goes through that feature first. Returns groups
    (feature indices, parameters) and the shared parameters no feature reaches (coupling
    parameters used after the split). Features may depend on one another (mtan returns every
    stage's output): with the *total* derivative of the losses at each feature, pushing each
    group back only through its own stretch of the trunk counts every path once.
    """
    edges = [get_gradient_edge(f) for f in feats]
    stops = {(e.node, e.output_nr) for e in edges}
    reached_by: dict[int, set[int]] = {}
    for k, edge in enumerate(edges):
        stack, seen = [edge.node], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold the leaf
            if variable is not None:
                reached_by.setdefault(id(variable), set()).add(k)
            stack.extend(n for n, nr in node.next_functions
                         if n is not None and (n, nr) not in stops)
    groups: dict[frozenset[int], list[nn.Parameter]] = {}
    after = []
    for p in shared:
        key = frozenset(reached_by.get(id(p), ()))
        if key:
            groups.setdefault(key, []).append(p)
        else:
            after.append(p)
    return [(sorted(key), params) for key, params in groups.items()], after


Path = tuple[int, ...]  # next_functions indices from a task's loss node down to a node


class _FeatureTaps:
    """Every task's gradient on the features from ONE backward through the heads.

    Each node of task t's head that takes a feature tensor as input gets a hook keeping the
    gradient it sends into that feature; one `autograd.grad` of Σ losses, stopped at the
    features, then yields all T rows (MGDA-UB's one pass) instead of T passes. This needs each
    such node to belong to one task only and the features not to feed one another; `find`
    returns None otherwise and the caller makes T passes. The nodes are found once, as paths
    from each task's loss node, and followed again each step (the graph's shape does not
    change between steps).
    """

    def __init__(self, taps: list[list[tuple[Path, int, int]]]) -> None:
        self.taps = taps  # per task: (path to the node, its input slot, feature index)

    @classmethod
    def find(cls, starts: list[GradientEdge], feats: list[Tensor]) -> _FeatureTaps | None:
        feature_at = {(e.node, e.output_nr): k
                      for k, e in enumerate(get_gradient_edge(f) for f in feats)}
        if any(_reaches(node, feature_at) for node, _ in feature_at):
            return None  # a feature computed from another one (mtan's stages)
        owner: dict[object, int] = {}
        taps: list[list[tuple[Path, int, int]]] = []
        for t, start in enumerate(starts):
            found: list[tuple[Path, int, int]] = []
            stack: list[tuple[object, Path]] = [(start.node, ())]
            while stack:
                node, path = stack.pop()
                if owner.get(node) == t:  # reached again along another path of this task
                    continue
                if node in owner:
                    return None  # a node two tasks' losses reach (coupling after the split)
                owner[node] = t
                for i, (child, nr) in enumerate(node.next_functions):
                    if (child, nr) in feature_at:
                        found.append((path, i, feature_at[(child, nr)]))
                    elif child is not None:
                        stack.append((child, (*path, i)))
            taps.append(found)
        return cls(taps)

    def rows(self, starts: list[GradientEdge], feats: list[Tensor], own: list[nn.Parameter],
             keep_graph: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        """(T, N) per-task gradients on the features, and Σ losses' gradient on `own`."""
        captured: list[list[Tensor | None]] = [[None] * len(feats) for _ in starts]
        handles = []
        for start, taps, row in zip(starts, self.taps, captured, strict=True):
            for path, slot, k in taps:
                node = start.node
                for i in path:
                    node = node.next_functions[i][0]
                handles.append(node.register_hook(partial(_keep, row, k, slot)))
        try:  # Σ losses, stopped at the features: the trunk is not visited
            grads = torch.autograd.grad(starts, [*feats, *own],
                                        grad_outputs=[feats[0].new_ones(())] * len(starts),
                                        retain_graph=keep_graph, materialize_grads=True)
        finally:
            for handle in handles:
                handle.remove()
        rows = feats[0].new_empty((len(starts), sum(f.numel() for f in feats)))
        for t, row in enumerate(captured):
            torch.cat([(g if g is not None else torch.zeros_like(f)).reshape(-1)
                       for g, f in zip(row, feats, strict=True)], out=rows[t])
        return rows, grads[len(feats):]


def _keep(row: list[Tensor | None], k: int, slot: int, grad_inputs: tuple, _outputs: tuple
          ) -> None:
    """Node hook: add the gradient the node sends into feature k (its input `slot`)."""
    grad = grad_inputs[slot]
    if grad is not None:
        row[k] = grad if row[k] is None else row[k] + grad


def _reaches(node: object, targets: dict) -> bool:
    """Whether walking down from `node` meets one of the `targets` edges."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for child, nr in current.next_functions:
            if child is None:
                continue
            if (child, nr) in targets:
                return True
            stack.append(child)
    return False


def _read_scales(losses: Tensor, raw: list[Tensor]) -> Tensor | None:
    """d losses_t / d raw_t read off the graph when `losses` is the trainer's stack of
    `raw_t · w_t` (w_t a number) or of `raw_t` itself: a backward through that tiny graph
    cost ~0.3 ms a step and replica, more than PCGrad's whole weighting. None for any other
    graph (the caller then differentiates)."""
    edges = stacked_scalars(losses)
    if edges is None or len(edges) != len(raw):
        return None
    scales = []
    for edge, r in zip(edges, raw, strict=True):
        if r.grad_fn is None:
            return None
        source = get_gradient_edge(r)  # (node, output): raw_t may be one output of an unbind
        if edge.node is source.node and edge.output_nr == source.output_nr:
            scales.append(1.0)
            continue
        mul = edge.node
        if mul.name() != "MulBackward0" or len(mul.next_functions) != 2:
            return None
        (first, nr), (second, _) = mul.next_functions
        if first is not source.node or nr != source.output_nr or second is not None:
            return None  # not raw_t times a constant
        other = getattr(mul, "_saved_other", None)
        if isinstance(other, Tensor):
            if other.numel() != 1 or other.requires_grad:
                return None
            other = other.item()
        if not isinstance(other, int | float):
            return None
        scales.append(float(other))
    return torch.tensor(scales, dtype=losses.dtype, device=losses.device)


class GradientMethod(WeightingMethod):
    """Base of every gradient-level method: subclasses only say which torchjd aggregator to
    build for a set of active tasks."""

    kind = "gradient"
    gramian_based = True  # False: the aggregator needs J itself (GradDrop)

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        self.representation = getattr(params, "gradients", "parameters") == "representation"
        if self.representation and not model.supports_representation:
            raise ValueError(f"weighting.params.gradients: {type(model).__name__} has no shared "
                             "representation; use gradients: parameters")
        self.task_params = [_trainable(model.task_parameters(t)) for t in self.task_names]
        task_ids = {id(p) for ps in self.task_params for p in ps}
        shared = _trainable(model.shared_parameters())
        shared_ids = {id(p) for p in shared}
        # A trainable parameter listed nowhere is treated as shared, so it still gets a .grad.
        shared += [p for p in model.parameters()
                   if p.requires_grad and id(p) not in task_ids and id(p) not in shared_ids]
        self.shared = shared
        # Task parameters without repeats. Each gets the sum of the task-loss gradients that reach
        # it: by the contract only its own task's, and otherwise what loss.backward() gives.
        self._own_params = model.all_task_parameters()
        self._layout: tuple[list[tuple[list[int], list[nn.Parameter]]],
                            list[nn.Parameter]] | None = None
        self._taps: _FeatureTaps | None = None
        self._taps_searched = False
        self._aggregators: dict[tuple[int, ...], Aggregator] = {}
        self._pending_state: dict[tuple[int, ...], dict] = {}

    # -- what subclasses provide -------------------------------------------------------------

    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        """The torchjd aggregator for the tasks `active` (indices into task_names)."""
        raise NotImplementedError

    def _pref(self, active: tuple[int, ...]) -> Tensor | None:
        pref = getattr(self.params, "pref_vector", None)
        if pref is None:
            return None
        return torch.tensor([pref[i] for i in active], dtype=torch.float64)

    # -- the step ----------------------------------------------------------------------------

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        if not self.shared:
            return self._no_shared_backward(losses)
        if self.representation:
            return self._representation_backward(losses, features)
        return self._parameters_backward(losses, known)

    @property
    def reuses_task_gradients(self) -> bool:
        return not self.representation and bool(self.shared)

    def _no_shared_backward(self, losses: Tensor) -> StepResult:
        # Nothing to combine: every parameter belongs to one task, so the sum's gradient is
        # each task's own gradient.
        params = self._own_params
        if params:
            grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    _accumulate(p, g)
        return StepResult(weights=torch.ones_like(losses.detach()), update_parts=[])

    def _parameters_backward(self, losses: Tensor, known: TaskGradients | None) -> StepResult:
        rows = self._known_rows(losses, known) if known is not None else None
        if rows is None:  # T backward passes over the whole graph
            rows = self._task_rows(losses, self.shared, keep_graph=False)
        update, weights = self._combine(rows)
        for p, g in zip(self.shared, update.split([p.numel() for p in self.shared]),
                        strict=True):
            _accumulate(p, g)
        return StepResult(weights=weights, update_parts=[update])

    def _representation_backward(self, losses: Tensor, features: list[Tensor]) -> StepResult:
        feats = [f for f in features if f.requires_grad]
        if self._layout is None:  # the graph's shape does not change between steps
            self._layout = _features_layout(feats, self.shared)
        groups, after = self._layout
        # Per-task gradients on the features (and on shared parameters used after the split,
        # coupling): one backward through the heads when the graph allows, else T.
        represented = [*feats, *after]
        starts = stacked_scalars(losses)
        taps = self._feature_taps(starts, feats) if starts is not None and not after else None
        if taps is not None:
            matrix, own_grads = taps.rows(starts, feats, self._own_params, bool(groups))
            for p, g in zip(self._own_params, own_grads, strict=True):
                _accumulate(p, g)
        else:
            matrix = self._task_rows(losses, represented, keep_graph=bool(groups))
        combined, weights = self._combine(matrix)
        pieces = combined.split([t.numel() for t in represented])
        update = list(pieces[len(feats):])
        for p, g in zip(after, update, strict=True):
            _accumulate(p, g)
        # The combined feature gradient goes back through the shared trunk once.
        for n, (indices, params) in enumerate(groups):
            grads = torch.autograd.grad(
                [feats[i] for i in indices], params,
                grad_outputs=[pieces[i].reshape(feats[i].shape) for i in indices],
                retain_graph=n < len(groups) - 1, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    _accumulate(p, g)
                    update.append(g)
        return StepResult(weights=weights, update_parts=update)

    def _feature_taps(self, starts: list[GradientEdge], feats: list[Tensor]
                      ) -> _FeatureTaps | None:
        if not self._taps_searched:  # once: the graph's shape does not change between steps
            self._taps, self._taps_searched = _FeatureTaps.find(starts, feats), True
        return self._taps

    def _known_rows(self, losses: Tensor, known: TaskGradients) -> Tensor | None:
        """The shared parameters' rows of the trainer's diagnostic Jacobian, rescaled from the
        raw task losses to `losses`; the task parameters get their gradient from it too. None
        when it is not on exactly this method's parameters."""
        if [id(p) for p in known.params] != [id(p) for p in (*self.shared, *self._own_params)]:
            return None
        # d losses_t / d raw_t: the configured task weight (each reaches its own task only).
        scale = _read_scales(losses, known.losses)
        if scale is None:
            scale = torch.stack(torch.autograd.grad(losses.sum(), known.losses,
                                                    materialize_grads=True))
        rows = known.matrix * scale.to(known.matrix.dtype)[:, None]
        n_shared = sum(p.numel() for p in self.shared)
        self._apply_task_grads(rows[:, n_shared:])
        return rows[:, :n_shared]

    def _task_rows(self, losses: Tensor, wrt: list[Tensor], keep_graph: bool) -> Tensor:
        """Per-task gradients on `wrt`, a (T, N) matrix; each task parameter gets its task's
        gradient (accumulated) on the way.

        When `losses` is a stack of per-task scalars (the trainer's), row t is one backward
        pass from task t's loss over `wrt` and task t's own parameters only, so no pass pushes
        zeros through the other tasks' heads or fills in their (zero) gradients: at 8 tasks on
        the MLP of bench/grad_methods.py that took `representation` from 2.3-2.6x static to
        1.6-1.9x. Any other loss vector: one Jacobian on `wrt` and every task parameter.
        """
        n_wrt = sum(x.numel() for x in wrt)
        starts = stacked_scalars(losses)
        if starts is None:
            matrix = jacobian(losses, [*wrt, *self._own_params], retain_graph=keep_graph)
            self._apply_task_grads(matrix[:, n_wrt:])
            return matrix[:, :n_wrt]
        rows = losses.new_empty((len(starts), n_wrt))
        one = losses.new_ones(())
        for t, (start, own) in enumerate(zip(starts, self.task_params, strict=True)):
            grads = torch.autograd.grad(start, [*wrt, *own], grad_outputs=one,
                                        retain_graph=keep_graph or t < len(starts) - 1,
                                        materialize_grads=True)
            torch.cat([g.reshape(-1) for g in grads[:len(wrt)]], out=rows[t])
            for p, g in zip(own, grads[len(wrt):], strict=True):
                _accumulate(p, g)
        return rows

    def _apply_task_grads(self, columns: Tensor) -> None:
        """Each task parameter gets the sum of its rows (by the contract only its task's)."""
        summed = columns.sum(dim=0)
        for p, g in zip(self._own_params, summed.split([p.numel() for p in self._own_params]),
                        strict=True):
            _accumulate(p, g)

    def _combine(self, matrix: Tensor) -> tuple[Tensor, Tensor]:
        """Combined update (n,) and effective weights (T,) from J (T, n)."""
        with torch.no_grad():
            if not self.gramian_based:
                update = self._aggregator(tuple(range(matrix.shape[0])))(matrix)
                return update, torch.full((matrix.shape[0],), float("nan"),
                                          device=matrix.device, dtype=matrix.dtype)
            gramian = (matrix @ matrix.T).to("cpu", torch.float64)  # the one host sync
            weights = self.weights_from_gramian(gramian)
            weights = weights.to(matrix.device, matrix.dtype)
            return weights @ matrix, weights

    def weights_from_gramian(self, gramian: Tensor) -> Tensor:
        """Weights (T,) from the Gramian (T, T) on the CPU; zero rows get weight 0."""
        n = gramian.shape[0]
        active = tuple(i for i, d in enumerate(gramian.diagonal().tolist()) if d > 0)
        if len(active) == n:  # the usual case: no sub-matrix to cut out
            return self._weigh(self._aggregator(active), gramian).to(gramian.dtype)
        weights = torch.zeros(n, dtype=gramian.dtype)
        if active:
            sub = gramian[list(active)][:, list(active)]
            weights[list(active)] = self._weigh(self._aggregator(active), sub).to(gramian.dtype)
        return weights

    @staticmethod
    def _weigh(aggregator: Aggregator, gramian: Tensor) -> Tensor:
        if isinstance(aggregator, GramianSolver):  # ours: no torchjd import
            return aggregator.gramian_weights(gramian)
        # Inference mode: the Python loops of PCGrad, MGDA and GradVac run 12-18 % faster on
        # these T x T tensors; the clone makes the result an ordinary tensor again.
        # Every torchjd aggregator that reaches here (all but GradDrop, which is not
        # Gramian-based) is a GramianWeightedAggregator.
        with torch.inference_mode():
            weights = aggregator.gramian_weighting(gramian)
        return weights.clone()

    def _aggregator(self, active: tuple[int, ...]) -> Aggregator:
        if active not in self._aggregators:
            self._aggregators[active] = self.build_aggregator(active)
            if active in self._pending_state:  # restored from a checkpoint before first use
                self.load_aggregator_state(self._aggregators[active],
                                           self._pending_state.pop(active))
        return self._aggregators[active]

    # -- checkpoints: only GradVac's running similarities are worth keeping -----------------
    # (Nash-MTL's state is a solver warm start: it converges to the same weights without it.)

    def aggregator_state(self, aggregator: Aggregator) -> dict | None:
        return None

    def load_aggregator_state(self, aggregator: Aggregator, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        states = {",".join(map(str, key)): self.aggregator_state(agg)
                  for key, agg in self._aggregators.items()}
        return {"aggregators": {k: v for k, v in states.items() if v is not None}}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.get("aggregators", {}).items():
            active = tuple(int(i) for i in key.split(",") if i != "")
            self._pending_state[active] = value


def _register(name: str, description: str, params: type[Params] = GradientParams) -> Callable:
    return METHODS.register(name, description, params=params, kind="gradient",
                            check=check_gradient_method)


# --------------------------------------------------------------------------------------------
# The methods


@_register("pcgrad", "Projects each task's gradient off the gradients it conflicts with "
           "(negative dot product), then sums them. Helps when tasks pull the shared layers "
           "in opposite directions.")
class PCGradMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> PCGradSolver:
        return PCGradSolver()  # torchjd's PCGradWeighting on Python floats (gramian_solvers)


@_register("mgda", "Takes the smallest update in the convex hull of the task gradients: a "
           "direction that improves every task at once (Pareto descent). Safe against "
           "conflicts, but it can favour the task with the smallest gradient.", MGDAParams)
class MGDAMethod(GradientMethod):
    # torchjd's MGDAWeighting on Python floats (gramian_solvers): its loop of 0-d tensor ops
    # made MGDA the slowest path of the geometry page (~4 s for 800 steps).
    def build_aggregator(self, active: tuple[int, ...]) -> MGDASolver:
        p: MGDAParams = self.params  # type: ignore[assignment]
        return MGDASolver(epsilon=p.epsilon, max_iters=p.max_iters)


@_register("cagrad", "Moves along the average gradient while maximising the worst task's "
           "improvement within a ball of radius c around it. Between plain averaging (c=0) "
           "and MGDA (large c).", CAGradParams)
class CAGradMethod(GradientMethod):
    # torchjd's CAGradWeighting, solved in closed form (T = 2) or by Newton steps instead of a
    # cvxpy program each step (30 ms a step here): see gramian_solvers.
    def build_aggregator(self, active: tuple[int, ...]) -> CAGradSolver:
        p: CAGradParams = self.params  # type: ignore[assignment]
        return CAGradSolver(c=p.c, norm_eps=p.norm_eps)


@_register("imtl_g", "Chooses the update whose projection on every task's unit gradient is "
           "equal, so no task dominates by gradient size. Helps with very different loss "
           "scales.")
class IMTLGMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        return _jd().IMTLG()


@_register("nash_mtl", "Treats the tasks as players bargaining over the update (Nash "
           "bargaining solution): weights so each task gets a fair share of progress. Solves a "
           "small convex problem each step, so it is slower.", NashMTLParams)
class NashMTLMethod(GradientMethod):
    # torchjd's NashMTL weighting, with the bargaining solution found by Newton steps instead
    # of up to `optim_niter` ECOS programs each step (0.4 s a step here): see gramian_solvers.
    # optim_niter is kept as a parameter (configs name it) but Newton needs no cap of it.
    def build_aggregator(self, active: tuple[int, ...]) -> NashMTLSolver:
        p: NashMTLParams = self.params  # type: ignore[assignment]
        return NashMTLSolver(n_tasks=len(active), max_norm=p.max_norm,
                             update_weights_every=p.update_weights_every)


@_register("upgrad", "Projects each task's gradient onto the cone of directions that hurt no "
           "task, then averages them (Jacobian descent). Never increases any task's loss to "
           "first order, and keeps the update's size.", ProjectorParams)
class UPGradMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        p: ProjectorParams = self.params  # type: ignore[assignment]
        return _jd().UPGrad(pref_vector=self._pref(active),
                          projector=_quadprog(p.norm_eps, p.reg_eps))


@_register("aligned_mtl", "Makes the task gradients orthogonal and of equal size (aligning "
           "their principal components) before combining them. Helps with conflicts and "
           "dominating tasks at once.", AlignedMTLParams)
class AlignedMTLMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        p: AlignedMTLParams = self.params  # type: ignore[assignment]
        return _jd().AlignedMTL(pref_vector=self._pref(active), scale_mode=p.scale_mode)


@_register("graddrop", "For each shared weight, keeps only the task gradients of one sign, "
           "chosen at random in proportion to how much the tasks agree on it. Adds noise that "
           "can help escape conflicts; it has no per-task weights.", GradDropParams)
class GradDropMethod(GradientMethod):
    gramian_based = False

    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        p: GradDropParams = self.params  # type: ignore[assignment]
        return _jd().GradDrop(leak=torch.full((len(active),), p.leak))

    def _combine(self, matrix: Tensor) -> tuple[Tensor, Tensor]:
        aggregator = self._aggregator(tuple(range(matrix.shape[0])))
        leak = aggregator.leak  # follow the device and dtype of J (no-op after the first step)
        if leak is not None and (leak.device != matrix.device or leak.dtype != matrix.dtype):
            aggregator.leak = leak.to(matrix.device, matrix.dtype)
        return super()._combine(matrix)


@_register("gradvac", "Like PCGrad, but instead of only removing conflicts it nudges each pair "
           "of task gradients towards the similarity they usually have (a running average). "
           "Helps related tasks share more.", GradVacParams)
class GradVacMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        p: GradVacParams = self.params  # type: ignore[assignment]
        return _jd().GradVac(beta=p.beta, eps=p.eps)

    def aggregator_state(self, aggregator: Aggregator) -> dict | None:
        phi = aggregator.gramian_weighting._phi_t  # the running target similarities
        return None if phi is None else {"phi": phi.tolist()}

    def load_aggregator_state(self, aggregator: Aggregator, state: dict) -> None:
        phi = torch.tensor(state["phi"], dtype=torch.float64)
        aggregator.gramian_weighting._phi_t = phi
        aggregator.gramian_weighting._state_key = (phi.shape[0], phi.dtype)


@_register("dualproj", "Projects the average gradient onto the cone of directions that hurt no "
           "task (as in GEM). Cheaper than UPGrad, one projection instead of one per task.",
           ProjectorParams)
class DualProjMethod(GradientMethod):
    def build_aggregator(self, active: tuple[int, ...]) -> Aggregator:
        p: ProjectorParams = self.params  # type: ignore[assignment]
        return _jd().DualProj(pref_vector=self._pref(active),
                            projector=_quadprog(p.norm_eps, p.reg_eps))
