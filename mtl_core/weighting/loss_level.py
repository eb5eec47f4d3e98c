"""Loss-level weighting: methods that turn the per-task losses into one scalar and backprop it.

Every method here computes a total `L = Σ λ_i · ℓ_i` (or a non-linear function of the `ℓ_i`,
for GLS) and back-propagates it once (`base.backprop`: `.backward()`, or on a diagnostic step
the gradient assembled from the diagnostics' per-task gradients), so the cost per step is that
of plain training (GradNorm adds one small gradient per task on the last shared layer).

Conventions shared by all methods (see `mtl_core.weighting.base`):
- `losses` (ℓ_i) arrive already multiplied by the configured task weights w_i.
- `StepResult.weights` is ∂L/∂ℓ_i: the weight this step put on the loss it was given (static: 1).
  The weight on the raw task loss is w_i · weights_i; the trainer multiplies when it logs.
- A task whose configured weight is 0 arrives with a loss of exactly 0. Every method treats such
  a task as absent (no NaN from 0/0 or log 0, no drifting learned parameter, no share of a
  normalised weight budget), so `w_i = 0` removes a task under every method. The test is done
  with tensor ops (`losses > 0`), never on the host.
- No host synchronisation in `backward`: no `.item()`, no Python `if` on tensor values.
- State (learned parameters, histories, inner optimisers) lives on the device the model was on
  when the method was built: build the method after `model.to(device)`.

torchjd 0.18 ships scalarizers for UW, DWA, FAMO, IMTL-L, GLS and RLW. They are not used here
because none can express the zero-weight rule above (DWA divides 0/0, FAMO's normaliser is
swamped by a zero loss, UW/IMTL-L parameters drift), `GeometricMean` checks its input on the
host, `Random` draws from the global RNG and none returns its weights. The formulas are the
same; tests/test_weighting_loss.py checks them against the torchjd scalarizers.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.functional import softmax

from mtl_core.models.base import MTLModel
from mtl_core.registry import Params
from mtl_core.weighting import METHODS
from mtl_core.weighting.base import StepResult, TaskGradients, WeightingMethod, backprop

_EPS = 1e-8  # FAMO's shift inside log(ℓ + ε), as in the reference implementation


def _device_of(model: MTLModel) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _active(losses: Tensor) -> Tensor:
    """Tasks in play: a configured weight of 0 makes a loss of exactly 0."""
    return losses.detach() > 0


def _masked_softmax(logits: Tensor, active: Tensor) -> Tensor:
    """Softmax over the active entries; inactive ones get 0. The most negative finite float
    (not -inf) keeps an all-inactive vector NaN-free."""
    return softmax(logits.masked_fill(~active, torch.finfo(logits.dtype).min), dim=0)


# --------------------------------------------------------------------------------------- static


class StaticParams(Params):
    pass


@METHODS.register(
    "static",
    "The plain weighted sum Σ wᵢ·Lᵢ with the task weights you set by hand. The baseline every "
    "other method is compared with; set a weight to 0 to train without that task.",
    params=StaticParams,
    kind="loss",
)
class Static(WeightingMethod):
    constant_weights = True
    sums_losses = True
    _ones: Tensor | None = None

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        backprop(losses.sum(), known)  # the w_i are already in `losses`
        if self._ones is None:  # one constant tensor, not a new one per step
            self._ones = torch.ones_like(losses.detach())
        return StepResult(weights=self._ones)


# ---------------------------------------------------------------------------------- uncertainty


class UncertaintyParams(Params):
    pass


@METHODS.register(
    "uncertainty",
    "Uncertainty weighting (Kendall et al., 2018): learns a noise level per task and down-weights "
    "noisy or large-scale tasks by 1/(2σ²). Helps when tasks have very different loss scales.",
    params=UncertaintyParams,
    kind="loss",
)
class Uncertainty(WeightingMethod):
    """L = Σ ½·exp(−s_i)·ℓ_i + ½·s_i with s_i = log σ_i² learned by the trainer's optimizer.

    The ½ factors (the paper's Gaussian-regression form) are used for every task, as torchjd's
    `UW` and LibMTL do: the contract does not tell regression from classification, and the
    stationary point exp(s_i) = ℓ_i is the same for the ½ form and the simplified
    exp(−s)·ℓ + s form, so σ_i² tracks each task's loss (its noise variance, for regression).
    The effective weight starts at ½. s_i = 0 at the start (torchjd; LibMTL uses −0.5).
    """

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        self.log_var = nn.Parameter(torch.zeros(len(task_names), device=_device_of(model)))

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.log_var]

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        s = self.log_var
        # The regulariser is masked so the s of a switched-off task does not drift to -inf.
        total = (0.5 * torch.exp(-s) * losses + 0.5 * s * _active(losses)).sum()
        backprop(total, known)
        return StepResult(weights=0.5 * torch.exp(-s.detach()))

    def state_dict(self) -> dict[str, Any]:
        return {"log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_var.copy_(torch.as_tensor(state["log_var"]))


# ------------------------------------------------------------------------------------------ dwa


class DWAParams(Params):
    temperature: float = Field(
        2.0, gt=0.0, le=100.0,
        description="Softmax temperature T: larger values keep the weights closer to uniform "
                    "(the paper uses 2).",
    )


@METHODS.register(
    "dwa",
    "Dynamic Weight Average (Liu et al., 2019): each epoch, gives more weight to the tasks whose "
    "loss went down least over the last two epochs. Cheap; reacts once per epoch.",
    params=DWAParams,
    kind="loss",
)
class DWA(WeightingMethod):
    """λ_i = K·softmax(r/T)_i with r_i = ℓ̄_i(t−1)/ℓ̄_i(t−2), the ratio of the last two epochs'
    mean losses (passed to `end_epoch`); λ = 1 during the first two epochs. K is the number of
    tasks in play, so the weights sum to K as in the paper."""

    params: DWAParams

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        self._history: list[Tensor] = []  # mean losses of the last (at most) two epochs
        self._weights = torch.ones(len(task_names), device=_device_of(model))

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        weights = self._weights.to(losses.dtype)
        backprop((weights * losses).sum(), known)
        return StepResult(weights=weights)

    def end_epoch(self, mean_losses: Tensor) -> None:
        self._history = [*self._history, mean_losses.detach().clone()][-2:]
        if len(self._history) == 2:
            self._weights = self._compute(*self._history).to(self._weights.device)

    def _compute(self, older: Tensor, newer: Tensor) -> Tensor:
        active = (older > 0) & (newer > 0)
        rates = newer / torch.where(active, older, torch.ones_like(older))
        return active.sum() * _masked_softmax(rates / self.params.temperature, active)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [h.tolist() for h in self._history]}  # checkpoint time, off hot path

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._weights.device
        self._history = [torch.tensor(h, device=device) for h in state["history"]]
        self._weights = torch.ones_like(self._weights)
        if len(self._history) == 2:
            self._weights = self._compute(*self._history)


# ------------------------------------------------------------------------------------- gradnorm


class GradNormParams(Params):
    alpha: float = Field(
        1.5, ge=0.0, le=10.0,
        description="Restoring force α: how strongly tasks that train slower get larger "
                    "gradients (0 = equal gradient norms; the paper uses 1.5).",
    )
    lr: float = Field(
        0.025, gt=0.0, le=1.0,
        description="Learning rate of the task weights (they have their own Adam).",
    )


def _check_gradnorm(cfg, params: Params) -> list[tuple[str, str]]:
    """GradNorm balances gradient norms on the last shared layer, so there must be one."""
    model = cfg.model
    unshared = model.architecture == "single_task" or (
        model.architecture == "hard_sharing" and model.params.get("shared_layers") == 0)
    if unshared:
        return [("weighting.method", "gradnorm needs shared layers, and this model shares none; "
                 "share at least one trunk layer or pick another method")]
    return []


@METHODS.register(
    "gradnorm",
    "GradNorm (Chen et al., 2018): learns task weights so each task's gradient on the last shared "
    "layer has a size matched to how fast it trains; lagging tasks get larger weights.",
    params=GradNormParams,
    kind="loss",
    check=_check_gradnorm,
)
class GradNorm(WeightingMethod):
    """Weights w_i (start at 1) are learned by their own Adam on the GradNorm loss
    Σ |G_i − Ḡ·r_i^α|, where G_i = ‖∇_W w_i·ℓ_i‖ on W = the last shared weight tensor (the
    paper's "last shared layer"; the last shared parameter with ≥ 2 dims), Ḡ the mean G_i and
    r_i = (ℓ_i/ℓ_i(0)) / mean_j(ℓ_j/ℓ_j(0)) the inverse training rate, ℓ_i(0) the first step's
    losses. The target Ḡ·r^α is a constant (as in the paper). After each update the weights are
    clamped positive and renormalised to sum to the number of tasks in play.
    """

    params: GradNormParams
    differentiates_parameters = True  # ‖∇_W ℓ_i‖ on the last shared layer

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        if not shared:
            raise ValueError("gradnorm balances task gradients on shared parameters and this "
                             "model trains none (a single-task baseline, or a frozen "
                             "backbone: model.trunk.trainable none); use static instead")
        matrices = [p for p in shared if p.ndim >= 2]
        self.layer: nn.Parameter = (matrices or shared)[-1]
        self.w = torch.ones(len(task_names), device=_device_of(model), requires_grad=True)
        self._optimizer = torch.optim.Adam([self.w], lr=self.params.lr)
        self._initial: Tensor | None = None

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        detached = losses.detach()
        active = _active(losses)
        n = active.sum().to(detached.dtype)
        if self._initial is None:  # a Python check on state, not on a tensor value
            self._initial = detached.clone()
        w = self.w.detach().clone()

        # ‖∇_W ℓ_i‖ per task; the graph is kept for the real backward below.
        norms = torch.stack([
            torch.linalg.vector_norm(torch.autograd.grad(
                losses[i], self.layer, retain_graph=True, allow_unused=True,
                materialize_grads=True)[0])
            for i in range(len(self.task_names))
        ]).to(detached.dtype)
        grad_norms = w * norms
        mean_norm = (grad_norms * active).sum() / n
        initial = torch.where(self._initial > 0, self._initial, torch.ones_like(self._initial))
        ratio = torch.where(active, detached / initial, torch.zeros_like(detached))
        inverse_rate = ratio / (ratio.sum() / n)
        target = mean_norm * inverse_rate ** self.params.alpha
        # d/dw_i |w_i·n_i − target_i| with the target held constant (0 where n_i = 0).
        grad_w = torch.sign(grad_norms - target) * norms

        backprop((w * losses).sum(), known)

        self.w.grad = grad_w
        self._optimizer.step()
        self.w.grad = None
        with torch.no_grad():  # keep w > 0 and Σ_active w = number of active tasks
            self.w.clamp_(min=1e-4)
            total = (self.w * active).sum()
            self.w.copy_(torch.where(active, self.w * n / total, self.w))
        return StepResult(weights=w * active)

    def state_dict(self) -> dict[str, Any]:
        return {
            "w": self.w.detach().clone(),
            "initial": None if self._initial is None else self._initial.clone(),
            "optimizer": self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(torch.as_tensor(state["w"]))
        initial = state.get("initial")
        self._initial = None if initial is None else torch.as_tensor(initial).to(self.w.device)
        self._optimizer.load_state_dict(state["optimizer"])


# ----------------------------------------------------------------------------------------- famo


class FAMOParams(Params):
    lr: float = Field(
        0.025, gt=0.0, le=1.0,
        description="Learning rate of FAMO's task logits (their own Adam; the paper uses 0.025).",
    )
    weight_decay: float = Field(
        0.001, ge=0.0, le=1.0,
        description="Weight decay γ on the task logits, pulling the weights back toward uniform.",
    )


@METHODS.register(
    "famo",
    "FAMO (Liu et al., 2023): adjusts the task weights after every step so all tasks' losses "
    "shrink at the same relative rate, using only loss values (no per-task gradients).",
    params=FAMOParams,
    kind="loss",
)
class FAMO(WeightingMethod):
    """Backprops Σ_i e_i·ℓ_i with e_i = (z_i/ℓ_i) / Σ_j (z_j/ℓ_j), z = softmax(logits): the
    gradient of FAMO's c·Σ z_i·log ℓ_i, so the e_i sum to 1.

    The logits are updated from δ_i = log ℓ_i(before step) − log ℓ_i(after step) by one step of
    their own Adam, descending on (∂z/∂logits)ᵀδ. The reference implementation (and torchjd's
    `FAMO.update`) recomputes the losses on the same batch after the optimizer step; a method
    here never sees the inputs, so the update is made at the start of the next `backward`, with
    the next batch's losses as "after". That estimate is one step late and carries batch-to-batch
    noise; with full-batch training it is exactly the reference update.
    """

    params: FAMOParams

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        self.logits = torch.zeros(len(task_names), device=_device_of(model), requires_grad=True)
        self._optimizer = torch.optim.Adam(
            [self.logits], lr=self.params.lr, weight_decay=self.params.weight_decay)
        self._previous: Tensor | None = None  # last step's losses, before its update

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        detached = losses.detach()
        active = _active(losses)
        if self._previous is not None:
            self._update(self._previous, detached)

        z = _masked_softmax(self.logits.detach(), active)  # 0 for switched-off tasks
        inverse = z / (detached + _EPS)
        weights = inverse / inverse.sum().clamp_min(torch.finfo(z.dtype).tiny)
        backprop((weights * losses).sum(), known)
        self._previous = detached.clone()
        return StepResult(weights=weights)

    def _update(self, before: Tensor, after: Tensor) -> None:
        both = (before > 0) & (after > 0)
        delta = torch.where(both, torch.log(before + _EPS) - torch.log(after + _EPS),
                            torch.zeros_like(after))
        with torch.enable_grad():
            z = _masked_softmax(self.logits, both)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
        self.logits.grad = grad
        self._optimizer.step()
        self.logits.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().clone(),
            "previous": None if self._previous is None else self._previous.clone(),
            "optimizer": self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(torch.as_tensor(state["logits"]))
        previous = state.get("previous")
        self._previous = (None if previous is None
                          else torch.as_tensor(previous).to(self.logits.device))
        self._optimizer.load_state_dict(state["optimizer"])


# ------------------------------------------------------------------------------------------ rlw


class RLWParams(Params):
    pass


@METHODS.register(
    "rlw",
    "Random loss weighting (Lin et al., 2021): draws fresh random task weights (summing to 1) at "
    "every step. A surprisingly strong baseline that any clever method should beat.",
    params=RLWParams,
    kind="loss",
)
class RLW(WeightingMethod):
    """λ = softmax(ε), ε ~ N(0, I) each step, over the tasks in play.

    Draws come from a private generator seeded from `torch.initial_seed()` (the run seed): the
    run is reproducible, and RLW does not shift the global random stream, so data order and
    dropout masks match a static run with the same seed.
    """

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        device = _device_of(model)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(torch.initial_seed() % (2**63) + 1)
        self._device = device

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        noise = torch.randn(losses.shape, generator=self._generator, device=self._device,
                            dtype=losses.dtype)
        weights = _masked_softmax(noise, _active(losses))
        backprop((weights * losses).sum(), known)
        return StepResult(weights=weights)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])


# ------------------------------------------------------------------------------------------ gls


class GLSParams(Params):
    pass


@METHODS.register(
    "gls",
    "Geometric loss strategy (Chennupati et al., 2019): minimises the geometric mean of the task "
    "losses, (Π L_i)^(1/T), which is blind to each task's loss scale.",
    params=GLSParams,
    kind="loss",
)
class GLS(WeightingMethod):
    """L = (Π ℓ_i)^(1/K) over the K tasks in play; effective weights ∂L/∂ℓ_i = L / (K·ℓ_i), so a
    task whose loss is small relative to the others gets a large weight."""

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        active = _active(losses)
        n = active.sum().to(losses.dtype)
        # log(1) = 0 for switched-off tasks; the where() inside keeps their gradient finite.
        logs = torch.log(torch.where(active, losses, torch.ones_like(losses)))
        total = torch.exp(logs.sum() / n)
        backprop(total, known)
        detached = losses.detach()
        safe = torch.where(active, detached, torch.ones_like(detached))
        weights = torch.where(active, total.detach() / (n * safe), torch.zeros_like(detached))
        return StepResult(weights=weights)


# --------------------------------------------------------------------------------------- imtl_l


class IMTLLParams(Params):
    pass


@METHODS.register(
    "imtl_l",
    "IMTL-L (Liu et al., 2021): learns a scale per task so the scaled losses stay equal (all "
    "near 1), putting tasks with very different loss magnitudes on the same footing.",
    params=IMTLLParams,
    kind="loss",
)
class IMTLL(WeightingMethod):
    """L = Σ exp(s_i)·ℓ_i − s_i with s_i learned by the trainer's optimizer (start at 0). At the
    optimum of s, exp(s_i)·ℓ_i = 1 for every task: the scaled losses are equalised."""

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        super().__init__(task_names, params, model)
        self.log_scale = nn.Parameter(torch.zeros(len(task_names), device=_device_of(model)))

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.log_scale]

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        s = self.log_scale
        # The regulariser is masked so the s of a switched-off task does not drift to +inf.
        total = (torch.exp(s) * losses - s * _active(losses)).sum()
        backprop(total, known)
        return StepResult(weights=torch.exp(s.detach()))

    def state_dict(self) -> dict[str, Any]:
        return {"log_scale": self.log_scale.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_scale.copy_(torch.as_tensor(state["log_scale"]))
