"""Loss-level weighting methods: each one's defining property on tiny hand-made problems.

Models here are hand-written MTLModels (a shared Linear+Tanh, one Linear head per task) trained
full-batch with Adam on 2-feature data, so the file does not depend on the architecture modules.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torchjd.scalarization import FAMO as TorchjdFAMO
from torchjd.scalarization import IMTLL, UW, GeometricMean

from mtl_core.diagnostics import task_gradients
from mtl_core.models.base import MTLModel
from mtl_core.weighting import METHODS, WeightingMethod, build_method
from mtl_core.weighting.base import TaskGradients

LOSS_METHODS = ["static", "uncertainty", "dwa", "gradnorm", "famo", "rlw", "gls", "imtl_l"]
TASKS = ["a", "b"]


class TinyMTL(MTLModel):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__(TASKS)
        self.trunk = nn.Sequential(nn.Linear(2, hidden), nn.Tanh())
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [self.trunk(inputs["x"])]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {t: head(features[0]).squeeze(-1) for t, head in self.towers.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.towers[task].parameters())


Targets = Callable[[Tensor, Tensor], dict[str, Tensor]]


def make_data(targets: Targets, n: int = 256) -> tuple[Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=gen)
    noise = torch.randn(n, 2, generator=gen)
    return x, targets(x, noise)


def forward_losses(model: TinyMTL, x: Tensor, y: dict[str, Tensor],
                   weights: tuple[float, ...] = (1.0, 1.0)) -> tuple[Tensor, list[Tensor]]:
    features = model.features({"x": x})
    out = model.heads(features)
    raw = torch.stack([nn.functional.mse_loss(out[t], y[t]) for t in TASKS])
    return raw * torch.tensor(weights), features


def build(name: str, model: MTLModel, **params: float) -> WeightingMethod:
    return build_method(name, params, TASKS, model)


def train(name: str, targets: Targets, steps: int, lr: float = 0.03,
          weights: tuple[float, ...] = (1.0, 1.0), epoch_len: int = 10,
          **params: float) -> tuple[TinyMTL, WeightingMethod, Tensor, Tensor]:
    """Full-batch Adam; returns model, method, raw losses (steps, T), reported weights."""
    torch.manual_seed(0)
    model = TinyMTL()
    method = build(name, model, **params)
    x, y = make_data(targets)
    opt = torch.optim.Adam([*model.parameters(), *method.extra_parameters()], lr=lr)
    losses_log, weights_log = [], []
    for step in range(steps):
        opt.zero_grad()
        losses, features = forward_losses(model, x, y, weights)
        result = method.backward(losses, features, model)
        opt.step()
        losses_log.append(losses.detach())
        weights_log.append(result.weights.detach().clone())
        if (step + 1) % epoch_len == 0:
            method.end_epoch(torch.stack(losses_log[-epoch_len:]).mean(0))
    return model, method, torch.stack(losses_log), torch.stack(weights_log)


def easy_pair(x: Tensor, noise: Tensor) -> dict[str, Tensor]:
    return {"a": x[:, 0] + 0.1 * noise[:, 0], "b": x[:, 0] - x[:, 1] + 0.1 * noise[:, 1]}


def fast_and_slow(x: Tensor, noise: Tensor) -> dict[str, Tensor]:
    # a: noiseless, its loss keeps falling; b: noise std 1, its loss stalls near 1.
    return {"a": 2.0 * x[:, 0], "b": x[:, 1] + noise[:, 1]}


# ------------------------------------------------------------------------------ registry/params


def test_every_loss_method_is_registered_with_kind_description_and_paper_defaults():
    for name in LOSS_METHODS:
        entry = METHODS.get(name)
        assert entry.extra["kind"] == "loss"
        assert entry.build.kind == "loss"
        assert 20 < len(entry.description) < 300
        for field in entry.params.model_fields.values():
            assert field.description  # the dashboard labels widgets with these
    assert METHODS.get("dwa").params().temperature == 2.0
    assert METHODS.get("gradnorm").params().alpha == 1.5
    famo = METHODS.get("famo").params()
    assert (famo.lr, famo.weight_decay) == (0.025, 0.001)
    with pytest.raises(ValidationError):
        METHODS.get("dwa").params.model_validate({"temperature": 0.0})
    with pytest.raises(ValidationError):
        METHODS.get("rlw").params.model_validate({"temperature": 1.0})


# ---------------------------------------------------------------------------------------- static


def test_static_backprops_exactly_the_weighted_sum_and_reports_unit_weights():
    x, y = make_data(easy_pair, n=32)
    torch.manual_seed(0)
    model = TinyMTL()
    reference = TinyMTL()
    reference.load_state_dict(model.state_dict())

    losses, features = forward_losses(model, x, y, weights=(1.0, 0.3))
    result = build("static", model).backward(losses, features, model)

    out = reference({"x": x})
    hand = (1.0 * nn.functional.mse_loss(out["a"], y["a"])
            + 0.3 * nn.functional.mse_loss(out["b"], y["b"]))
    hand.backward()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(result.weights, torch.ones(2))


# ----------------------------------------------------------------------------------- uncertainty


def test_uncertainty_matches_torchjd_uw_and_learns_the_task_noise_variance():
    losses = torch.tensor([0.3, 2.0], requires_grad=True)
    model = TinyMTL()
    method = build("uncertainty", model)
    with torch.no_grad():
        method.log_var.copy_(torch.tensor([0.5, -1.0]))
    result = method.backward(losses, [], model)
    values = losses.detach().clone().requires_grad_()
    uw = UW(2)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.5, -1.0]))
    uw(values).backward()
    torch.testing.assert_close(losses.grad, values.grad)
    torch.testing.assert_close(method.log_var.grad, uw.log_var.grad)
    torch.testing.assert_close(result.weights, losses.grad)  # weights = ∂total/∂ℓ

    def noisy_pair(x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        return {"a": x[:, 0] + 0.1 * noise[:, 0], "b": x[:, 1] + 1.0 * noise[:, 1]}

    _, method, losses_log, weights_log = train("uncertainty", noisy_pair, steps=300, lr=0.05)
    variance = torch.exp(method.log_var.detach())
    # σ² tracks each task's residual variance: ≈ 0.01 for a, ≈ 1 for b.
    assert 0.004 < variance[0] < 0.03
    assert 0.7 < variance[1] < 1.3
    torch.testing.assert_close(variance, losses_log[-1], rtol=0.3, atol=0.0)
    assert weights_log[-1][0] > 10 * weights_log[-1][1]  # the low-noise task weighs more


# ---------------------------------------------------------------------------------------- imtl_l


def test_imtl_l_matches_torchjd_and_equalises_the_scaled_losses():
    losses = torch.tensor([0.3, 2.0], requires_grad=True)
    model = TinyMTL()
    method = build("imtl_l", model)
    with torch.no_grad():
        method.log_scale.copy_(torch.tensor([0.5, -1.0]))
    result = method.backward(losses, [], model)
    values = losses.detach().clone().requires_grad_()
    reference = IMTLL(2)
    with torch.no_grad():
        reference.log_scale.copy_(torch.tensor([0.5, -1.0]))
    reference(values).backward()
    torch.testing.assert_close(losses.grad, values.grad)
    torch.testing.assert_close(method.log_scale.grad, reference.log_scale.grad)
    torch.testing.assert_close(result.weights, losses.grad)

    def scales_apart(x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        return {"a": 3 * x[:, 0] + 3.0 * noise[:, 0], "b": x[:, 1] + 0.1 * noise[:, 1]}

    _, method, losses_log, _ = train("imtl_l", scales_apart, steps=250, lr=0.05)
    raw = losses_log[-1]
    assert raw[0] > 300 * raw[1]  # the raw losses stay orders of magnitude apart ...
    scaled = torch.exp(method.log_scale.detach()) * raw
    torch.testing.assert_close(scaled, torch.ones(2), rtol=0.0, atol=0.05)  # ... scaled: all 1


# ------------------------------------------------------------------------------------------- gls


def test_gls_weights_are_the_geometric_mean_over_t_times_each_loss():
    losses = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    model = TinyMTL()
    result = build_method("gls", {}, ["a", "b", "c"], model).backward(losses, [], model)
    # G = (0.5 · 2 · 1)^(1/3) = 1, weights G / (3 ℓ_i)
    expected = torch.tensor([2 / 3, 1 / 6, 1 / 3])
    torch.testing.assert_close(result.weights, expected)
    torch.testing.assert_close(losses.grad, expected)
    values = losses.detach().clone().requires_grad_()
    GeometricMean()(values).backward()
    torch.testing.assert_close(losses.grad, values.grad)

    x, y = make_data(easy_pair, n=32)
    torch.manual_seed(0)
    model, reference = TinyMTL(), TinyMTL()
    reference.load_state_dict(model.state_dict())
    losses, features = forward_losses(model, x, y)
    build("gls", model).backward(losses, features, model)
    out = reference({"x": x})
    hand = torch.sqrt(nn.functional.mse_loss(out["a"], y["a"])
                      * nn.functional.mse_loss(out["b"], y["b"]))
    hand.backward()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


# ------------------------------------------------------------------------------------------- rlw


def test_rlw_draws_a_fresh_probability_vector_each_step_reproducibly():
    def draws() -> Tensor:
        torch.manual_seed(7)
        model = TinyMTL()
        method = build("rlw", model)
        before = torch.get_rng_state()
        out = []
        for _ in range(5):
            losses = torch.tensor([1.0, 2.0], requires_grad=True)
            out.append(method.backward(losses, [], model).weights)
            torch.testing.assert_close(losses.grad, out[-1])
        assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
        return torch.stack(out)

    weights = draws()
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(5))
    assert (weights[1:] - weights[:-1]).abs().max() > 1e-3  # changes between steps
    assert torch.equal(weights, draws())  # same run seed, same weights


# ------------------------------------------------------------------------ methods that adapt


def test_dwa_is_uniform_for_two_epochs_then_favours_the_task_that_improves_least():
    _, method, losses_log, weights_log = train("dwa", fast_and_slow, steps=60, epoch_len=10)
    assert torch.equal(weights_log[:20], torch.ones(20, 2))
    epoch_means = losses_log.reshape(6, 10, 2).mean(1)
    rates = epoch_means[4] / epoch_means[3]  # the last two finished epochs before epoch 6
    expected = 2 * torch.softmax(rates / 2.0, dim=0)
    torch.testing.assert_close(weights_log[-1], expected)
    torch.testing.assert_close(weights_log[20:].sum(1), torch.full((40,), 2.0))
    assert weights_log[-1][1] > weights_log[-1][0]  # the stalled task b weighs more


def test_famo_matches_the_torchjd_reference_update_on_a_loss_sequence():
    gen = torch.Generator().manual_seed(3)
    sequence = torch.rand(6, 2, generator=gen) + 0.1
    model = TinyMTL()
    method = build("famo", model)
    reference = TorchjdFAMO(2, lr=0.025, weight_decay=0.001)
    for k, step_losses in enumerate(sequence):
        ours = step_losses.clone().requires_grad_()
        result = method.backward(ours, [], model)
        theirs = step_losses.clone().requires_grad_()
        if k > 0:  # the next batch's losses stand for "after the step"
            reference.update(theirs.detach())
        reference(theirs).backward()
        torch.testing.assert_close(ours.grad, theirs.grad)
        torch.testing.assert_close(result.weights, ours.grad)
        torch.testing.assert_close(result.weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(method.logits.detach(), reference._w.detach())


def test_famo_shifts_its_task_weights_toward_the_task_that_improves_least():
    _, method, _, weights_log = train("famo", fast_and_slow, steps=200)
    task_weights = torch.softmax(method.logits.detach(), 0)
    assert task_weights[1] > 0.6  # b's share of the update grew from 0.5
    assert torch.isfinite(weights_log).all()


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slower():
    _, method, _, weights_log = train("gradnorm", fast_and_slow, steps=150)
    final = weights_log[-1]
    assert final[1] > 1.2 and final[0] < 0.8
    torch.testing.assert_close(weights_log.sum(1), torch.full((150,), 2.0))
    assert (weights_log > 0).all()
    with pytest.raises(ValueError, match="shared parameters"):
        class NoShared(TinyMTL):
            def shared_parameters(self) -> list[nn.Parameter]:
                return []

        build("gradnorm", NoShared())


# ---------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_each_method_reduces_every_task_loss_and_reports_finite_weights(name: str):
    _, _, losses_log, weights_log = train(name, easy_pair, steps=100, lr=0.02)
    assert (losses_log[-1] < 0.5 * losses_log[0]).all(), losses_log[[0, -1]]
    assert weights_log.shape == (100, 2)
    assert torch.isfinite(weights_log).all() and (weights_log >= 0).all()


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_a_zero_weight_trains_exactly_like_the_other_task_alone(name: str):
    """w_b = 0 must remove task b: same steps, weights and parameters as a method built for
    task a only (no NaN from 0/0 or log 0, no share of a normalised budget, no drift)."""
    x, y = make_data(easy_pair, n=64)
    runs = []
    for tasks in (TASKS, ["a"]):
        torch.manual_seed(0)
        model = TinyMTL()
        method = build_method(name, {}, tasks, model)
        opt = torch.optim.Adam([*model.parameters(), *method.extra_parameters()], lr=0.01)
        weights_log = []
        for epoch in range(3):  # three epochs, so DWA has used an epoch history with 0/0
            for _ in range(2):
                opt.zero_grad()
                losses, features = forward_losses(model, x, y, weights=(1.0, 0.0))
                result = method.backward(losses[: len(tasks)], features, model)
                opt.step()
                weights_log.append(result.weights[0].detach().clone())
                if len(tasks) == 2:  # no drift of the switched-off task's learned s
                    assert all(extra.grad[1] == 0.0 for extra in method.extra_parameters())
            method.end_epoch(torch.tensor([0.5, 0.0])[: len(tasks)] / (epoch + 1))
        runs.append((model, torch.stack(weights_log)))
    (model, weights), (alone, alone_weights) = runs
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, alone_weights)
    for mine, theirs in zip(model.trunk.parameters(), alone.trunk.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
    for mine, theirs in zip(model.towers.parameters(), alone.towers.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)  # b's head unchanged in both runs


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_reusing_the_diagnostic_jacobian_gives_the_gradients_of_a_plain_backward(name: str):
    """On diagnostic steps the trainer hands the per-task gradients to the method (`known`):
    every parameter, the method's own included, must get what `total.backward()` gives it."""
    x, y = make_data(fast_and_slow, n=32)
    task_weights = torch.tensor([1.0, 0.5])
    grads, step_weights = [], []
    for reuse in (False, True):
        torch.manual_seed(0)
        model = TinyMTL()
        method = build(name, model)
        params = [*model.parameters(), *method.extra_parameters()]
        for _ in range(3):  # later steps too: DWA, FAMO and GradNorm carry state
            for p in params:
                p.grad = None
            features = model.features({"x": x})
            out = model.heads(features)
            task_losses = [nn.functional.mse_loss(out[t], y[t]) for t in TASKS]
            raw = torch.stack(task_losses)
            known = None
            if reuse:
                columns = [*model.shared_parameters(), *model.task_parameters("a"),
                           *model.task_parameters("b")]
                known = TaskGradients(task_losses, columns, task_gradients(raw, columns),
                                      method.extra_parameters())
            weighted = torch.stack([loss * w for loss, w in zip(task_losses, task_weights,
                                                                  strict=True)])
            result = method.backward(weighted, features, model, known)
            grads.append([p.grad.clone() for p in params])
            step_weights.append(result.weights.detach().clone())
    half = len(grads) // 2
    for plain, reused in zip(grads[:half], grads[half:], strict=True):
        for a, b in zip(plain, reused, strict=True):
            torch.testing.assert_close(b, a)
    torch.testing.assert_close(torch.stack(step_weights[half:]), torch.stack(step_weights[:half]))
    assert all(any(g.abs().sum() > 0 for g in step) for step in grads)


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm", "famo", "rlw", "imtl_l"])
def test_state_dict_survives_a_checkpoint_and_resumes_identically(name: str):
    torch.manual_seed(0)
    model = TinyMTL()
    method = build(name, model)
    x, y = make_data(fast_and_slow, n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):  # the losses change between steps, as in a real run
        opt.zero_grad()
        losses, features = forward_losses(model, x, y)
        method.backward(losses, features, model)
        opt.step()
        if step % 2 == 1:
            method.end_epoch(losses.detach() * (step + 1))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, model)
    restored.load_state_dict(torch.load(buffer))  # weights_only: plain tensors and lists

    losses, features = forward_losses(model, x, y)
    expected = method.backward(losses, features, model).weights
    losses, features = forward_losses(model, x, y)
    got = restored.backward(losses, features, model).weights
    assert torch.equal(got, expected)
    assert_same(restored.state_dict(), method.state_dict())  # inner optimisers resumed too
    # nothing the method holds was left out of the checkpoint
    held = {k: v for k, v in vars(method).items() if isinstance(v, Tensor | list)}
    assert_same({k: vars(restored)[k] for k in held}, held)


def assert_same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for left, right in zip(a, b, strict=True):
            assert_same(left, right)
    elif isinstance(a, Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b
