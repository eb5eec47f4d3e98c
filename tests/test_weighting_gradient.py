"""Gradient-level weighting methods and gradient diagnostics, on tiny hand-made models."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchjd.aggregation import (
    IMTLG,
    MGDA,
    Aggregator,
    AlignedMTL,
    CAGrad,
    DualProj,
    NashMTL,
    UPGrad,
)

from mtl_core.config import ExperimentConfig
from mtl_core.diagnostics import (
    JacobianStrategy,
    diagnostic_rows,
    gradient_stats,
    task_gradients,
)
from mtl_core.models.base import MTLModel
from mtl_core.weighting import METHODS, build_method
from mtl_core.weighting.base import TaskGradients
from mtl_core.weighting.gradient_level import check_gradient_method

GRADIENT_METHODS = ["pcgrad", "mgda", "cagrad", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl",
                    "graddrop", "gradvac", "dualproj"]
MODES = ["parameters", "representation"]


# ---------------------------------------------------------------------------------------------
# Hand-made models


class LinearLosses(MTLModel):
    """L_t = g_t · w + c_t · b_t: the shared gradient of task t is exactly g_t (a row of
    `directions`), the gradient of its own parameter b_t is c_t. features = [w] (1, D)."""

    def __init__(self, directions: list[list[float]], own: list[float]) -> None:
        names = [f"t{i}" for i in range(len(directions))]
        super().__init__(names)
        self.w = nn.Parameter(torch.zeros(len(directions[0])))
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(())) for _ in names])
        self.register_buffer("g", torch.tensor(directions))
        self.register_buffer("c", torch.tensor(own))

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [self.w.unsqueeze(0) * inputs["x"]]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        f = features[0]
        return {n: (f @ self.g[i]) + self.c[i] * self.b[i] for i, n in enumerate(self.task_names)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.w]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [self.b[self.task_names.index(task)]]


class TrunkHeads(MTLModel):
    """Hard sharing: Linear trunk (optionally + tanh, + a second stage whose output is also a
    feature, as mtan does) and per-task heads; a coupling scalar used after the split."""

    def __init__(self, n_tasks: int, d_in: int = 4, width: int = 3, deep: bool = False,
                 linear_trunk: bool = True, coupling: bool = False) -> None:
        super().__init__([f"t{i}" for i in range(n_tasks)])
        self.trunk = nn.Linear(d_in, width, bias=not linear_trunk)
        self.linear_trunk = linear_trunk
        self.stage2 = nn.Linear(width, width) if deep else None
        self.coupling = nn.Parameter(torch.tensor(0.7)) if coupling else None
        n_feats = 2 if deep else 1
        self.task_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width * n_feats, 5), nn.Tanh(), nn.Linear(5, 1))
            for _ in range(n_tasks))

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        h = self.trunk(inputs["x"])
        if not self.linear_trunk:
            h = torch.tanh(h)
        if self.stage2 is None:
            return [h]
        return [h, torch.tanh(self.stage2(h))]  # the second feature depends on the first

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        f = torch.cat(features, dim=1)
        if self.coupling is not None:
            f = f * self.coupling
        return {n: head(f).squeeze(1) for n, head in zip(self.task_names, self.task_heads,
                                                          strict=True)}

    def shared_parameters(self) -> list[nn.Parameter]:
        params = list(self.trunk.parameters())
        if self.stage2 is not None:
            params += list(self.stage2.parameters())
        if self.coupling is not None:
            params.append(self.coupling)
        return params

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.task_heads[self.task_names.index(task)].parameters())


class Separate(TrunkHeads):
    """No shared parameters at all (single-task style)."""

    supports_representation = False

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        own = list(super().task_parameters(task))
        return own + list(self.trunk.parameters()) if task == "t0" else own

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [inputs["x"]]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        x = features[0]
        out = {n: head(x[:, :3] if i else self.trunk(x)).squeeze(1)
               for i, (n, head) in enumerate(zip(self.task_names, self.task_heads, strict=True))}
        return out


def regression_data(n_tasks: int, n: int = 32, d_in: int = 4, seed: int = 0
                    ) -> tuple[dict[str, Tensor], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen)
    y = torch.stack([torch.sin(x @ torch.randn(d_in, generator=gen)) for _ in range(n_tasks)])
    return {"x": x}, y


def mse_losses(model: MTLModel, inputs: dict[str, Tensor], y: Tensor
               ) -> tuple[Tensor, list[Tensor]]:
    features = model.features(inputs)
    out = model.heads(features)
    losses = torch.stack([((out[n] - y[i]) ** 2).mean() for i, n in enumerate(model.task_names)])
    return losses, features


def linear_step(name: str, directions: list[list[float]], mode: str = "parameters",
                scale: list[float] | None = None, **params):
    """One method.backward on LinearLosses; returns (model, result)."""
    own = [float(i + 2) for i in range(len(directions))]
    model = LinearLosses(directions, own)
    method = build_method(name, {"gradients": mode, **params}, model.task_names, model)
    features = model.features({"x": torch.ones(1, len(directions[0]))})
    out = model.heads(features)
    losses = torch.stack([out[n].sum() for n in model.task_names])
    if scale is not None:  # configured task weights, as the trainer applies them
        losses = losses * torch.tensor(scale)
    return model, method.backward(losses, features, model)


def manual_jacobian(losses: Tensor, params: list[Tensor]) -> Tensor:
    rows = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                               for g, p in zip(grads, params, strict=True)]))
    return torch.stack(rows)


def flat_grads(params: list[Tensor]) -> Tensor:
    return torch.cat([p.grad.flatten() for p in params])


# ---------------------------------------------------------------------------------------------
# Registration and config check


def test_every_method_is_registered_as_gradient_with_documented_params():
    for name in GRADIENT_METHODS:
        entry = METHODS.get(name)
        assert entry.extra["kind"] == "gradient"
        assert entry.extra["check"] is check_gradient_method
        fields = entry.params.model_fields
        assert fields["gradients"].default == "parameters"
        assert all(f.description for f in fields.values()), name
    defaults = {name: METHODS.get(name).params().model_dump() for name in GRADIENT_METHODS}
    assert defaults["cagrad"]["c"] == 0.5
    assert defaults["nash_mtl"]["max_norm"] == 1.0
    assert defaults["nash_mtl"]["update_weights_every"] == 1
    assert defaults["gradvac"]["beta"] == 0.5
    assert defaults["graddrop"]["leak"] == 0.0
    assert defaults["upgrad"]["pref_vector"] is None
    assert defaults["mgda"]["max_iters"] == 100


def _cfg(architecture: str, n_tasks: int = 2) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": {"architecture": architecture},
        "tasks": [{"name": f"t{i}"} for i in range(n_tasks)]})


@pytest.mark.parametrize("architecture", ["cross_stitch", "single_task"])
def test_check_refuses_representation_without_shared_representation(architecture):
    params = METHODS.get("pcgrad").params(gradients="representation")
    errors = check_gradient_method(_cfg(architecture), params)
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "weighting.params.gradients"
    assert architecture in message and "'parameters'" in message


def test_check_accepts_representation_on_hard_sharing_and_parameters_everywhere():
    rep = METHODS.get("mgda").params(gradients="representation")
    assert check_gradient_method(_cfg("hard_sharing"), rep) == []
    assert check_gradient_method(_cfg("cross_stitch"), METHODS.get("mgda").params()) == []


def test_check_refuses_pref_vector_of_wrong_length():
    params = METHODS.get("upgrad").params(pref_vector=[1.0, 1.0, 1.0])
    errors = check_gradient_method(_cfg("hard_sharing", n_tasks=2), params)
    assert [p for p, _ in errors] == ["weighting.params.pref_vector"]


def test_parse_config_reports_the_representation_error():
    from mtl_core.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"architecture": "cross_stitch"},
                      "weighting": {"method": "pcgrad",
                                    "params": {"gradients": "representation"}}})
    assert [e.path for e in info.value.errors] == ["weighting.params.gradients"]


def test_building_representation_method_for_model_without_representation_fails():
    model = Separate(2)
    with pytest.raises(ValueError, match="gradients"):
        build_method("mgda", {"gradients": "representation"}, model.task_names, model)


# ---------------------------------------------------------------------------------------------
# Hand-computed aggregations


@pytest.mark.parametrize("mode", MODES)
def test_pcgrad_projects_conflicting_gradients_as_computed_by_hand(mode):
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = -1 < 0
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    g2_pc = g2 - (g2 @ g1) / (g1 @ g1) * g1  # [0, 1]
    model, result = linear_step("pcgrad", [g1.tolist(), g2.tolist()], mode)
    torch.testing.assert_close(model.w.grad, g1_pc + g2_pc)
    torch.testing.assert_close(model.w.grad, torch.tensor([0.5, 1.5]))
    # g1_pc = g1 + 0.5 g2 and g2_pc = g2 + g1: the weights are (2, 1.5)
    torch.testing.assert_close(result.weights, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(result.update_norm, torch.linalg.vector_norm(g1_pc + g2_pc))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("g1, g2", [([1.0, 0.0], [-1.0, 1.0]),   # interior: gamma = 0.6
                                    ([1.0, 0.0], [2.0, 0.0]),    # clipped to gamma = 1
                                    ([3.0, 1.0], [0.5, -0.2])])  # clipped to gamma = 0
def test_mgda_returns_the_closed_form_min_norm_point(mode, g1, g2):
    a, b = torch.tensor(g1), torch.tensor(g2)
    gamma = ((b - a) @ b / ((a - b) @ (a - b))).clamp(0.0, 1.0)
    expected = gamma * a + (1 - gamma) * b
    model, result = linear_step("mgda", [g1, g2], mode)
    torch.testing.assert_close(model.w.grad, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.weights, torch.stack([gamma, 1 - gamma]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_task_parameters_get_exactly_their_own_task_gradient(name):
    # Strongly conflicting shared gradients, and task weights 3 and 0.5 on the losses: the task
    # parameter b_t must still get dL_t/db_t = scale_t * c_t, untouched by the aggregation.
    model, _ = linear_step(name, [[1.0, 0.0, 2.0], [-1.0, 0.5, -3.0]], scale=[3.0, 0.5])
    assert model.b[0].grad.item() == pytest.approx(3.0 * 2.0)
    assert model.b[1].grad.item() == pytest.approx(0.5 * 3.0)


def test_a_task_with_weight_zero_is_left_out_of_mgda():
    # Without the masking, MGDA's min-norm point over {g1, 0} is 0 and training stalls.
    model, result = linear_step("mgda", [[1.0, 2.0], [-3.0, 1.0]], scale=[1.0, 0.0])
    torch.testing.assert_close(model.w.grad, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(result.weights, torch.tensor([1.0, 0.0]))


def _reference(name: str) -> Aggregator:
    return {"mgda": MGDA(), "upgrad": UPGrad(), "dualproj": DualProj(), "imtl_g": IMTLG(),
            "aligned_mtl": AlignedMTL(), "cagrad": CAGrad(c=0.5), "nash_mtl": NashMTL(3)}[name]


@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl",
                                  "cagrad", "nash_mtl"])
def test_parameters_mode_applies_the_torchjd_aggregation_of_the_exact_jacobian(name):
    torch.manual_seed(0)
    model = TrunkHeads(3, linear_trunk=False)
    inputs, y = regression_data(3)
    losses, features = mse_losses(model, inputs, y)
    shared = model.shared_parameters()
    expected = _reference(name)(manual_jacobian(losses, shared))
    method = build_method(name, {}, model.task_names, model)
    method.backward(losses, features, model)
    torch.testing.assert_close(flat_grads(shared), expected, atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl_g"])
def test_representation_mode_is_the_chain_rule_of_the_aggregated_feature_gradient(name):
    torch.manual_seed(1)
    model = TrunkHeads(2, linear_trunk=True)  # f = x W^T, so dL/dW = d^T x
    inputs, y = regression_data(2)
    losses, features = mse_losses(model, inputs, y)
    jf = manual_jacobian(losses, features)  # (T, B*F) per-task feature gradients
    d = _reference(name)(jf).reshape(features[0].shape)
    method = build_method(name, {"gradients": "representation"}, model.task_names, model)
    result = method.backward(losses, features, model)
    expected = d.T @ inputs["x"]
    torch.testing.assert_close(model.trunk.weight.grad, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.update_norm, torch.linalg.vector_norm(expected),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_single_task_update_equals_plain_backward_with_dependent_features_and_coupling(mode):
    # With one task every method's combination is the gradient itself, so the step must equal
    # loss.backward(): checks the push-back through stacked features (no path counted twice)
    # and the coupling parameter used after the split.
    torch.manual_seed(2)
    model = TrunkHeads(1, deep=True, linear_trunk=False, coupling=True)
    inputs, y = regression_data(1)
    losses, _ = mse_losses(model, inputs, y)
    losses.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses, features = mse_losses(model, inputs, y)
    method = build_method("upgrad", {"gradients": mode}, model.task_names, model)
    result = method.backward(losses, features, model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-6, rtol=1e-4, msg=n)
    torch.testing.assert_close(result.weights, torch.ones(1), atol=1e-4, rtol=0)


def test_model_without_shared_parameters_gets_each_task_gradient():
    torch.manual_seed(3)
    model = Separate(2)
    inputs, y = regression_data(2)
    losses, _ = mse_losses(model, inputs, y)
    params = list(model.parameters())
    expected = manual_jacobian(losses, params).sum(0)  # each parameter is reached by one task
    losses, features = mse_losses(model, inputs, y)
    result = build_method("pcgrad", {}, model.task_names, model).backward(losses, features, model)
    torch.testing.assert_close(flat_grads(params), expected)
    torch.testing.assert_close(result.weights, torch.ones(2))
    assert result.update_norm.item() == 0.0


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "graddrop", "gradvac"])
def test_parameters_mode_reuses_the_diagnostic_jacobian_exactly(name):
    # On a diagnostic step the trainer hands over the per-task gradients of the raw losses on
    # the shared and task parameters; the method rescales them by the task weights instead of
    # doing its own T backward passes, and must give the same step.
    torch.manual_seed(9)
    model = TrunkHeads(3, linear_trunk=False)
    inputs, y = regression_data(3)
    task_weights = [1.0, 0.5, 2.0]
    results = []
    for reuse in (False, True):
        torch.manual_seed(1)  # GradDrop and GradVac draw random numbers
        method = build_method(name, {"gradients": "parameters"}, model.task_names, model)
        assert method.reuses_task_gradients
        model.zero_grad(set_to_none=True)
        features = model.features(inputs)
        out = model.heads(features)
        task_losses = [((out[n] - y[i]) ** 2).mean() for i, n in enumerate(model.task_names)]
        losses = torch.stack([loss * w for loss, w in zip(task_losses, task_weights,
                                                           strict=True)])
        known = None
        if reuse:
            columns = [*model.shared_parameters(),
                       *[p for t in model.task_names for p in model.task_parameters(t)]]
            known = TaskGradients(task_losses, columns,
                                  task_gradients(torch.stack(task_losses), columns), [])
        result = method.backward(losses, features, model, known)
        results.append(({n: p.grad.clone() for n, p in model.named_parameters()},
                        result.weights, result.update_norm))
    (plain, plain_weights, plain_norm), (reused, weights, norm) = results
    for key, grad in reused.items():
        torch.testing.assert_close(grad, plain[key], msg=key)
    torch.testing.assert_close(weights, plain_weights, equal_nan=True)
    torch.testing.assert_close(norm, plain_norm)


def registered_model(architecture: str, params: dict, tasks: list[str]) -> MTLModel:
    """A small registered architecture (MLP trunk, tanh) with a regression head per task."""
    from mtl_core.config import HeadConfig, ModelConfig, TrunkConfig
    from mtl_core.data.base import TaskSpec
    from mtl_core.models import ARCHITECTURES

    entry = ARCHITECTURES.get(architecture)
    cfg = ModelConfig(architecture=architecture, params=params,
                      trunk=TrunkConfig(type="mlp", layers=[6], hidden=[5], activation="tanh"),
                      heads=HeadConfig(layers=[4], activation="tanh"))
    torch.manual_seed(0)
    return entry.build(cfg, entry.params.model_validate(params),
                       [TaskSpec(name, "regression") for name in tasks], {"x": (3,)})


@pytest.mark.parametrize("architecture, params", [
    ("hard_sharing", {}), ("cross_stitch", {}), ("mmoe", {"n_experts": 2}), ("mtan", {})])
@pytest.mark.parametrize("mode", MODES)
def test_per_task_passes_from_stacked_losses_equal_the_full_jacobian(architecture, params,
                                                                     mode):
    # The trainer stacks per-task scalar losses (times the task weights), so each task's pass
    # starts at its own loss and visits only its own head (in representation mode all T rows
    # come from one pass through the heads where the graph allows); any other loss vector
    # takes the full Jacobian. Same update.
    model = registered_model(architecture, params, ["a", "b", "c"])
    if mode == "representation" and not model.supports_representation:
        pytest.skip("no shared representation")
    x, y = {"x": torch.randn(7, 3)}, torch.randn(3, 7)
    task_weights = [1.0, 0.5, 2.0]
    results = []
    for stacked in (True, False):
        model.zero_grad(set_to_none=True)
        method = build_method("upgrad", {"gradients": mode}, model.task_names, model)
        features = model.features(x)
        out = model.heads(features)
        losses = torch.stack([w * ((out[n] - y[i]) ** 2).mean()
                              for i, (n, w) in enumerate(zip("abc", task_weights, strict=True))])
        result = method.backward(losses if stacked else losses * 1.0, features, model)
        results.append(({n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}, result))
        if stacked and mode == "representation":  # one pass through the heads where possible
            assert (method._taps is not None) == (architecture in ("hard_sharing", "mmoe"))
    (grads, result), (reference, reference_result) = results
    assert grads.keys() == reference.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], atol=1e-6, rtol=1e-4, msg=name)
    torch.testing.assert_close(result.weights, reference_result.weights)
    torch.testing.assert_close(result.update_norm, reference_result.update_norm)
    assert not result.weights.is_inference()  # the solvers run in inference mode


@pytest.mark.parametrize("architecture, params", [
    ("hard_sharing", {}), ("cross_stitch", {}), ("mmoe", {"n_experts": 2}), ("mtan", {}),
    ("single_task", {})])
@pytest.mark.parametrize("mode", MODES)
def test_registered_architectures_single_task_step_equals_plain_backward(architecture, params,
                                                                         mode):
    # The real architectures (mtan's stacked features, mmoe's gates, cross-stitch coupling):
    # with one task the combined update is the task gradient itself.
    model = registered_model(architecture, params, ["y"])
    if mode == "representation" and not model.supports_representation:
        pytest.skip("no shared representation")
    x = {"x": torch.randn(5, 3)}
    (model(x)["y"] ** 2).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    features = model.features(x)
    losses = (model.heads(features)["y"] ** 2).mean().unsqueeze(0)
    build_method("mgda", {"gradients": mode}, model.task_names, model).backward(
        losses, features, model)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------
# Every method trains


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_every_method_reduces_every_task_loss(name, mode):
    torch.manual_seed(0)
    model = TrunkHeads(2, linear_trunk=False)
    inputs, y = regression_data(2, n=48)
    method = build_method(name, {"gradients": mode}, model.task_names, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    with torch.no_grad():
        before = mse_losses(model, inputs, y)[0]
    for _ in range(30):
        optimizer.zero_grad(set_to_none=True)
        losses, features = mse_losses(model, inputs, y)
        result = method.backward(losses, features, model)
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
    with torch.no_grad():
        after = mse_losses(model, inputs, y)[0]
    assert (after < 0.95 * before).all(), (before, after)
    assert result.weights.shape == (2,)
    if name == "graddrop":  # per-coordinate masks: no per-task weights
        assert torch.isnan(result.weights).all()
    else:
        assert torch.isfinite(result.weights).all()
    assert torch.isfinite(result.update_norm) and result.update_norm > 0


def test_gradvac_resumes_from_its_state_dict():
    # The running target similarities survive a checkpoint: the same step from a restored
    # method gives the original's weights, and a fresh method's differ.
    torch.manual_seed(0)
    model = TrunkHeads(2, linear_trunk=False)
    inputs, y = regression_data(2)
    method = build_method("gradvac", {}, model.task_names, model)
    for _ in range(3):
        losses, features = mse_losses(model, inputs, y)
        method.backward(losses, features, model)
    restored = build_method("gradvac", {}, model.task_names, model)
    restored.load_state_dict(method.state_dict())
    fresh = build_method("gradvac", {}, model.task_names, model)
    weights = []
    for m in (method, restored, fresh):
        torch.manual_seed(1)  # GradVac visits the tasks in a random order
        losses, features = mse_losses(model, inputs, y)
        weights.append(m.backward(losses, features, model).weights)
    torch.testing.assert_close(weights[1], weights[0])
    assert not torch.allclose(weights[2], weights[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Diagnostics


def test_task_gradients_equal_per_task_autograd_and_keep_the_graph():
    torch.manual_seed(4)
    model = TrunkHeads(3, linear_trunk=False)
    inputs, y = regression_data(3)
    losses, _ = mse_losses(model, inputs, y)
    shared = model.shared_parameters()
    grads = task_gradients(losses, shared)
    assert grads.shape == (3, sum(p.numel() for p in shared))
    torch.testing.assert_close(grads, manual_jacobian(losses, shared))
    losses.sum().backward()  # the normal backward can still follow
    assert model.trunk.weight.grad is not None


def test_gradient_stats_on_hand_made_vectors():
    grads = torch.tensor([[3.0, 4.0], [-3.0, -4.0], [4.0, -3.0], [0.0, 0.0]])
    stats = gradient_stats(grads)
    torch.testing.assert_close(stats["norms"], torch.tensor([5.0, 5.0, 5.0, 0.0]))
    expected = torch.tensor([[1.0, -1.0, 0.0, 0.0],
                             [-1.0, 1.0, 0.0, 0.0],
                             [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 0.0]])  # zero row: cosine 0, not NaN
    torch.testing.assert_close(stats["cosine"], expected)
    rows = diagnostic_rows(7, 0.5, ["a", "b", "c", "d"], stats)
    values = {(r[3], r[4]): r[5] for r in rows}
    assert values[("a", "grad_norm")] == pytest.approx(5.0)
    assert values[("a|b", "cosine")] == pytest.approx(-1.0)
    assert values[("b|c", "cosine")] == pytest.approx(0.0)
    assert len(rows) == 4 + 6 and all(r[:3] == (7, 0.5, "diag") for r in rows)


def test_gradient_stats_of_a_batch_equal_each_matrix_alone():
    # a stacked run's replicas: (K, T, P) at once, as each (T, P) alone
    torch.manual_seed(3)
    grads = torch.randn(4, 3, 50)
    grads[2, 1] = 0.0  # a zero row in one replica only
    stats = gradient_stats(grads)
    assert stats["norms"].shape == (4, 3) and stats["cosine"].shape == (4, 3, 3)
    for k in range(4):
        alone = gradient_stats(grads[k])
        torch.testing.assert_close(stats["norms"][k], alone["norms"])
        torch.testing.assert_close(stats["cosine"][k], alone["cosine"])
    assert stats["cosine"][2, 1].abs().sum() == 0 and stats["cosine"][1, 1, 1] == pytest.approx(1.0)


def test_diagnostics_without_shared_parameters():
    torch.manual_seed(5)
    model = Separate(2)
    inputs, y = regression_data(2)
    losses, _ = mse_losses(model, inputs, y)
    grads = task_gradients(losses, model.shared_parameters())
    assert grads.shape == (2, 0)
    stats = gradient_stats(grads)
    torch.testing.assert_close(stats["norms"], torch.zeros(2))
    torch.testing.assert_close(stats["cosine"], torch.zeros(2, 2))


def test_jacobian_strategy_settles_on_one_way_and_always_returns_the_jacobian():
    torch.manual_seed(6)
    model = TrunkHeads(3, linear_trunk=False)
    inputs, y = regression_data(3)
    shared = model.shared_parameters()
    strategy = JacobianStrategy(trials=2)
    for _ in range(7):
        losses, _ = mse_losses(model, inputs, y)
        rows = strategy(losses, shared, retain_graph=True)
        torch.testing.assert_close(rows, manual_jacobian(losses, shared))
    assert strategy.choice in JacobianStrategy.CANDIDATES
    heads = [p for t in model.task_names for p in model.task_parameters(t)]
    for choice in JacobianStrategy.CANDIDATES:
        strategy.choice = choice
        # A stack of per-task scalars (rows start at each task's loss), a vector that is not
        # one (rows start at outputs[t]), and inputs only some rows reach (zeros elsewhere).
        losses, _ = mse_losses(model, inputs, y)
        for outputs in (losses, losses * torch.tensor([1.0, 2.0, 3.0])):
            rows = strategy(outputs, [*shared, *heads], retain_graph=True)
            torch.testing.assert_close(rows, manual_jacobian(outputs, [*shared, *heads]))


def test_scales_read_off_the_graph_equal_autograd_or_are_left_to_it():
    from mtl_core.weighting.gradient_level import _read_scales

    x = torch.randn(3, requires_grad=True)
    raw = [(x ** 2).sum(), x.sum() * 2, (x * 3).mean()]
    readable = [torch.stack([r * w for r, w in zip(raw, [0.5, 2.0, 1.0], strict=True)]),
                torch.stack(raw), torch.stack([r * torch.tensor(3.0) for r in raw])]
    for losses in readable:
        expected = torch.stack(torch.autograd.grad(losses.sum(), raw, retain_graph=True))
        torch.testing.assert_close(_read_scales(losses, raw), expected)
    # A stacked run's raw_t are the outputs of one unbind (one node, output t).
    rows = torch.stack(raw).unsqueeze(0).repeat(2, 1)[1].unbind(0)
    losses = torch.stack([r * w for r, w in zip(rows, [0.5, 2.0, 4.0], strict=True)])
    torch.testing.assert_close(_read_scales(losses, list(rows)), torch.tensor([0.5, 2.0, 4.0]))
    assert _read_scales(losses, list(rows)[::-1]) is None
    # Anything but raw_t · constant: not read (the method then differentiates the graph).
    w = torch.tensor(2.0, requires_grad=True)
    for losses in [torch.stack([r * r for r in raw]), torch.stack([r * 0.5 + 1 for r in raw]),
                   torch.stack([r * w for r in raw]), torch.stack(raw[::-1]),
                   torch.stack(raw) * 2.0]:
        assert _read_scales(losses, raw) is None
