"""Architectures: output shapes, who owns which parameter, where gradients flow, the diagram.

Models are built directly from hand-made TaskSpecs and input shapes (no data suite). Trunks use
tanh so that no unit is dead and "receives a gradient" means the same for every parameter.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from mtl_core.config import HeadConfig, ModelConfig, TrunkConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models import ARCHITECTURES, MTLModel

B = 4
TASKS = [
    TaskSpec("digit", "classification", num_classes=3),
    TaskSpec("ink", "regression"),
    TaskSpec("odd", "binary"),
]
TRUNKS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "mlp": ({"type": "mlp", "layers": [8], "hidden": [6]}, (5,)),
    "cnn": ({"type": "cnn", "layers": [3, 4], "hidden": [6]}, (1, 8, 8)),
}
# Parameters of each trunk stage, worked out by hand:
# mlp 5→8: 5·8+8 = 48, 8→6: 54; cnn conv 1→3: 3·9+3 = 30, conv 3→4: 4·27+4 = 112,
# flatten 4·2·2 = 16 → 6: 102.
STAGE_PARAMS = {"mlp": [48, 54], "cnn": [30, 112, 102]}
HEADS = {"layers": [5], "activation": "tanh"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "hard_sharing": ("hard_sharing", {}),
    "hard_sharing_k1": ("hard_sharing", {"shared_layers": 1}),
    "hard_sharing_k0": ("hard_sharing", {"shared_layers": 0}),
    "single_task": ("single_task", {}),
    "cross_stitch": ("cross_stitch", {}),
    "mmoe": ("mmoe", {"n_experts": 2}),
    "mtan": ("mtan", {}),
}
# Variants in which every task's loss reaches every shared parameter.
FULLY_SHARED = ["hard_sharing", "hard_sharing_k1", "cross_stitch", "mmoe", "mtan"]


def model_cfg(name: str, params: dict[str, Any], trunk: str = "mlp",
              **trunk_changes: Any) -> ModelConfig:
    trunk_doc = {**TRUNKS[trunk][0], "activation": "tanh", **trunk_changes}
    return ModelConfig(architecture=name, trunk=TrunkConfig(**trunk_doc),
                       heads=HeadConfig(**HEADS), params=params)


def build(variant: str, trunk: str = "mlp", tasks: list[TaskSpec] = TASKS,
          input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0,
          params: dict[str, Any] | None = None, **trunk_changes: Any) -> MTLModel:
    name, default_params = VARIANTS[variant]
    params = default_params if params is None else params
    cfg = model_cfg(name, params, trunk, **trunk_changes)
    entry = ARCHITECTURES.get(name)
    torch.manual_seed(seed)
    shapes = input_shapes or {"x": TRUNKS[trunk][1]}
    return entry.build(cfg, entry.params.model_validate(params), tasks, shapes)


def batch(trunk: str = "mlp", seed: int = 1) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, *TRUNKS[trunk][1], generator=gen)}


def task_loss(output: Tensor) -> Tensor:
    return (output ** 2).mean()


def total_loss(outputs: dict[str, Tensor], weights: dict[str, float] | None = None) -> Tensor:
    weights = weights or {}
    return sum(weights.get(t, 1.0) * task_loss(o) for t, o in outputs.items())


def ids(params: list[torch.nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


def numel(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def strictly_private(model: MTLModel, task: str) -> list[torch.nn.Parameter]:
    """Parameters no other task's loss may reach. Cross-stitch columns are listed under their
    task but are coupled to the other columns by the mixing weights; their heads are not."""
    if model.__class__.__name__ == "CrossStitch":
        return list(model.private[model.task_names.index(task)]["head"].parameters())
    return model.task_parameters(task)


ALL = pytest.mark.parametrize("variant", list(VARIANTS))
BOTH = pytest.mark.parametrize("trunk", ["mlp", "cnn"])


@ALL
@BOTH
def test_output_shapes_per_task(variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    outputs = model(batch(trunk))
    assert list(outputs) == ["digit", "ink", "odd"]
    assert outputs["digit"].shape == (B, 3)  # logits
    assert outputs["ink"].shape == (B,)  # output_dim 1 comes back squeezed
    assert outputs["odd"].shape == (B,)
    assert all(torch.isfinite(o).all() for o in outputs.values())


@ALL
@BOTH
def test_parameters_split_into_shared_and_each_task(variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    groups = [model.shared_parameters()] + [model.task_parameters(t) for t in model.task_names]
    every = ids(list(model.parameters()))
    assert sum(len(ids(g)) for g in groups) == len(every)  # disjoint ...
    assert set().union(*(ids(g) for g in groups)) == every  # ... and covering
    counts = model.parameter_counts()
    assert counts["shared"] == numel(model.shared_parameters())
    assert sum(counts.values()) == numel(list(model.parameters()))
    assert all(counts[t] > 0 for t in model.task_names)


@ALL
@BOTH
def test_blocks_cover_every_parameter_in_data_flow_order(variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    blocks = model.blocks()
    names = [b.name for b in blocks]
    assert len(set(names)) == len(names)
    seen: set[str] = set()
    for block in blocks:  # every block reads the input or a block drawn before it
        assert block.inputs and all(i == "input:x" or i in seen for i in block.inputs), block
        assert block.owner in ("shared", *model.task_names)
        assert block.label
        seen.add(block.name)
    assert sum(b.params for b in blocks) == numel(list(model.parameters()))
    by_owner = {o: sum(b.params for b in blocks if b.owner == o)
                for o in ("shared", *model.task_names)}
    counts = model.parameter_counts()
    if variant == "cross_stitch":  # the diagram draws each column under its task
        columns = {t: by_owner[t] - counts[t] for t in model.task_names}
        assert counts["shared"] == by_owner["shared"] + sum(columns.values())
        assert all(c > 0 for c in columns.values())
    else:
        assert by_owner == counts


@ALL
@BOTH
def test_a_task_loss_sends_no_gradient_into_other_tasks(variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    x = batch(trunk)
    for task in model.task_names:
        model.zero_grad(set_to_none=True)
        task_loss(model(x)[task]).backward()
        own = strictly_private(model, task)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
        for other in model.task_names:
            if other != task:
                assert all(p.grad is None for p in strictly_private(model, other)), other


@pytest.mark.parametrize("variant", FULLY_SHARED)
@BOTH
def test_every_shared_parameter_gets_gradient_from_every_weighted_task(
        variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    weights = {"digit": 1.0, "ink": 0.5, "odd": 0.0}
    outputs = model(batch(trunk))
    shared = model.shared_parameters()
    assert shared
    for task in ("digit", "ink"):
        grads = torch.autograd.grad(weights[task] * task_loss(outputs[task]), shared,
                                    retain_graph=True, allow_unused=True)
        for p, g in zip(shared, grads, strict=True):
            assert g is not None and g.abs().sum() > 0, (task, tuple(p.shape))
    total_loss(outputs, weights).backward()
    # A weight of 0 leaves the task's own parameters without any update.
    assert all(p.grad is None or not p.grad.any() for p in strictly_private(model, "odd"))
    assert any(p.grad is not None and p.grad.any() for p in strictly_private(model, "ink"))


@pytest.mark.parametrize("variant", ["hard_sharing", "hard_sharing_k1", "mmoe", "mtan"])
@BOTH
def test_heads_use_no_shared_parameter_and_the_split_gives_the_true_gradient(
        variant: str, trunk: str) -> None:
    model = build(variant, trunk)
    x = batch(trunk)
    total_loss(model(x)).backward()
    direct = {id(p): p.grad.clone() for p in model.parameters()}

    model.zero_grad(set_to_none=True)
    features = model.features(x)
    assert all(f.requires_grad for f in features)
    leaves = [f.detach().requires_grad_() for f in features]
    split = model.heads(leaves)
    assert all(torch.equal(split[t], o) for t, o in model(x).items())  # split == forward
    model.features(x)  # mmoe: heads must follow a features() call of the same batch
    total_loss(model.heads(leaves)).backward()
    assert all(p.grad is None for p in model.shared_parameters())
    torch.autograd.backward(features, [leaf.grad for leaf in leaves])
    for p in model.parameters():
        assert torch.allclose(p.grad, direct[id(p)], atol=1e-6)


@BOTH
def test_single_task_shares_nothing_and_each_task_has_a_whole_network(trunk: str) -> None:
    alone, shared = build("single_task", trunk), build("hard_sharing", trunk)
    assert alone.shared_parameters() == []
    assert alone.supports_representation is False
    assert all(b.owner != "shared" for b in alone.blocks())
    counts, hard = alone.parameter_counts(), shared.parameter_counts()
    assert counts["shared"] == 0
    for task in alone.task_names:  # its own trunk + the same head
        assert counts[task] == sum(STAGE_PARAMS[trunk]) + hard[task]


@BOTH
def test_shared_layers_shares_exactly_the_first_k_layers(trunk: str) -> None:
    sizes = STAGE_PARAMS[trunk]
    depth = len(sizes)
    heads_only = build("hard_sharing", trunk).parameter_counts()
    for k in range(depth + 1):
        model = build("hard_sharing", trunk, params={"shared_layers": k})
        counts = model.parameter_counts()
        assert counts["shared"] == sum(sizes[:k])
        for task in model.task_names:  # the rest of the trunk, copied per task
            assert counts[task] == heads_only[task] + sum(sizes[k:])
        blocks = {b.name: b for b in model.blocks()}
        assert [n for n, b in blocks.items() if b.owner == "shared"] == \
            [f"trunk.{i}" for i in range(k)]
        for task in model.task_names:
            own = [f"trunk.{i}.{task}" for i in range(k, depth)]
            assert [blocks[n].params for n in own] == sizes[k:]
            first = blocks[own[0]] if own else blocks[f"head.{task}.0"]
            assert first.inputs == ([f"trunk.{k - 1}"] if k else ["input:x"])  # branch point
        assert all(f.requires_grad == (k > 0) for f in model.features(batch(trunk)))


def test_shared_layers_deeper_than_the_trunk_is_refused() -> None:
    entry = ARCHITECTURES.get("hard_sharing")
    check = entry.extra["check"]
    cfg = model_cfg("hard_sharing", {})
    assert check(cfg, entry.params(shared_layers=2)) == []
    assert check(cfg, entry.params()) == []
    assert check(cfg, entry.params(shared_layers=5)) == [(
        "model.params.shared_layers",
        "shared_layers is 5 but the trunk has 2 layers; allowed 0..2")]
    with pytest.raises(ValueError, match="allowed 0..2"):
        build("hard_sharing", params={"shared_layers": 5})
    with pytest.raises(ValidationError):
        entry.params(shared_layers=-1)
    with pytest.raises(ValidationError):
        entry.params(shared=1)  # unknown keys are refused


@pytest.mark.parametrize("name", ["cross_stitch", "mmoe", "mtan"])
def test_designs_that_need_a_trunk_refuse_an_empty_one(name: str) -> None:
    entry = ARCHITECTURES.get(name)
    cfg = model_cfg(name, {}, layers=[], hidden=[])
    errors = entry.extra["check"](cfg, entry.params())
    assert [path for path, _ in errors] == ["model.trunk.layers"]
    assert name in errors[0][1]
    with pytest.raises(ValueError, match="at least one trunk layer"):
        entry.build(cfg, entry.params(), TASKS, {"x": (5,)})


@ALL
def test_init_is_deterministic_under_a_seed(variant: str) -> None:
    a, b, c = build(variant, seed=3), build(variant, seed=3), build(variant, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()
               and sa[k].numel() > 1)


TWO_INPUTS = [
    TaskSpec("digit", "classification", num_classes=3, input="digits"),
    TaskSpec("item", "classification", num_classes=4, input="fashion"),
]
SAME_SHAPES = {"digits": (1, 8, 8), "fashion": (1, 8, 8)}


@ALL
@BOTH
def test_each_task_reads_its_own_input(variant: str, trunk: str) -> None:
    model = build(variant, trunk, tasks=TWO_INPUTS, input_shapes=SAME_SHAPES)
    gen = torch.Generator().manual_seed(0)
    x = {k: torch.randn(B, *s, generator=gen) for k, s in SAME_SHAPES.items()}
    before = model(x)
    assert before["digit"].shape == (B, 3) and before["item"].shape == (B, 4)
    after = model({"digits": x["digits"], "fashion": x["fashion"] + 1.0})
    assert not torch.allclose(after["item"], before["item"])
    if variant == "cross_stitch":  # the mixing couples the two columns, inputs included
        assert not torch.allclose(after["digit"], before["digit"])
    else:
        assert torch.equal(after["digit"], before["digit"])
    blocks = model.blocks()
    assert {i for b in blocks for i in b.inputs if i.startswith("input:")} == \
        {"input:digits", "input:fashion"}


def test_features_come_one_per_input_key_in_sorted_order() -> None:
    model = build("hard_sharing", "cnn", tasks=TWO_INPUTS[::-1], input_shapes=SAME_SHAPES)
    x = {"digits": torch.zeros(B, 1, 8, 8), "fashion": torch.ones(B, 1, 8, 8)}
    features = model.features(x)
    assert len(features) == 2 and features[0].shape == (B, 6)
    only = model.features({"digits": torch.zeros(B, 1, 8, 8),
                           "fashion": torch.zeros(B, 1, 8, 8)})
    assert torch.equal(features[0], only[0])  # index 0 is "digits" ...
    assert not torch.equal(features[1], only[1])  # ... index 1 is "fashion"


@pytest.mark.parametrize("variant", ["hard_sharing", "cross_stitch", "mmoe", "mtan"])
def test_sharing_layers_across_inputs_of_different_shapes_is_refused(variant: str) -> None:
    shapes = {"digits": (1, 8, 8), "fashion": (3, 8, 8)}
    with pytest.raises(ValueError, match="same shape"):
        build(variant, "cnn", tasks=TWO_INPUTS, input_shapes=shapes)


@pytest.mark.parametrize("variant", ["single_task", "hard_sharing_k0"])
def test_no_sharing_accepts_inputs_of_different_shapes(variant: str) -> None:
    shapes = {"digits": (1, 8, 8), "fashion": (3, 8, 8)}
    model = build(variant, "cnn", tasks=TWO_INPUTS, input_shapes=shapes)
    out = model({"digits": torch.randn(B, 1, 8, 8), "fashion": torch.randn(B, 3, 8, 8)})
    assert out["item"].shape == (B, 4)


def test_mlp_trunk_flattens_images() -> None:
    model = build("hard_sharing", "mlp", input_shapes={"x": (1, 8, 8)})
    assert model.blocks()[0].label == "Flatten · Linear 64→8 · Tanh"
    assert model(batch("cnn"))["digit"].shape == (B, 3)


def test_labels_show_each_layer() -> None:
    model = build("hard_sharing", "mlp", batch_norm=True, dropout=0.1)
    labels = [b.label for b in model.blocks()]
    assert labels[:2] == ["Linear 5→8 · BN · Tanh · Dropout 0.1",
                          "Linear 8→6 · BN · Tanh · Dropout 0.1"]
    assert "Linear 5→3 · logits" in labels and "Linear 5→1" in labels
    # batch-norm's scale and shift count as parameters of their stage
    assert model.parameter_counts()["shared"] == sum(STAGE_PARAMS["mlp"]) + 2 * (8 + 6)
    cnn = build("hard_sharing", "cnn")
    assert cnn.blocks()[0].label == "Conv 1→3 3×3 · Tanh · MaxPool"
    assert cnn.blocks()[2].label == "Flatten · Linear 16→6 · Tanh"


@ALL
def test_batch_norm_and_dropout_train_and_evaluate(variant: str) -> None:
    model = build(variant, "cnn", batch_norm=True, dropout=0.5)
    x = batch("cnn")
    model.train()
    assert model(x)["digit"].shape == (B, 3)
    model.eval()  # dropout off, batch-norm running statistics: repeatable outputs
    first, second = model(x), model(x)
    assert all(torch.equal(first[t], second[t]) for t in first)
    counts = model.parameter_counts()
    assert sum(counts.values()) == numel(list(model.parameters()))
    assert sum(b.params for b in model.blocks()) == sum(counts.values())


def test_too_many_conv_layers_for_the_image_size_is_refused() -> None:
    with pytest.raises(ValueError, match="too many conv layers"):
        build("hard_sharing", "cnn", layers=[4, 4, 4, 4], hidden=[])  # 8→4→2→1→?


@BOTH
def test_cross_stitch_mixing_is_shared_starts_near_identity_and_is_inspectable(
        trunk: str) -> None:
    model = build("cross_stitch", trunk)
    depth = len(STAGE_PARAMS[trunk])
    assert model.supports_representation is False
    mixing_params = sum(p.numel() for p in model.shared.parameters())
    assert mixing_params == depth * 3 * 3
    # the columns count as shared too: other tasks' losses reach them through the mixing
    columns = sum(p.numel() for own in model.private for p in own["column"].parameters())
    assert model.parameter_counts()["shared"] == mixing_params + columns
    mixing = model.inspect(batch(trunk))["mixing"]
    assert len(mixing) == depth
    expected = [[0.9 if i == j else 0.05 for j in range(3)] for i in range(3)]
    for matrix in mixing:
        assert torch.allclose(torch.tensor(matrix), torch.tensor(expected))
    names = [b.name for b in model.blocks() if b.owner == "shared"]
    assert names == [f"stitch.{i}" for i in range(depth)]


def test_cross_stitch_columns_are_coupled_only_through_the_mixing() -> None:
    x = batch()
    for init_self, coupled in ((1.0, False), (0.9, True)):
        model = build("cross_stitch", params={"init_self": init_self})
        task_loss(model(x)["digit"]).backward()
        column = list(model.private[model.task_names.index("ink")]["column"].parameters())
        reached = any(p.grad is not None and p.grad.any() for p in column)
        assert reached == coupled
        # even from the identity, the mixing weights learn: they get a gradient
        assert all(p.grad is not None and p.grad.any() for p in model.shared.parameters())


@BOTH
def test_mmoe_experts_are_shared_and_gates_are_inspectable(trunk: str) -> None:
    model = build("mmoe", trunk, params={"n_experts": 3})
    x = batch(trunk)
    assert model.parameter_counts()["shared"] == 3 * sum(STAGE_PARAMS[trunk])
    features = model.features(x)
    assert [f.shape for f in features] == [(B, 3, 6)]  # (batch, experts, expert width)
    gates = model.inspect(x)["gates"]
    assert list(gates) == model.task_names
    for weights in gates.values():
        assert len(weights) == 3 and abs(sum(weights) - 1.0) < 1e-5
        assert all(0 < w < 1 for w in weights)


def test_mmoe_heads_follow_the_latest_features_call() -> None:
    model = build("mmoe")
    x = batch()
    features = model.features(x)
    model.inspect({"x": torch.randn(2 * B, 5)})  # must not disturb the pending step
    assert all(torch.equal(model.heads(features)[t], o) for t, o in model(x).items())
    model.features({"x": torch.randn(2 * B, 5)})
    with pytest.raises(RuntimeError, match="another batch"):
        model.heads(features)


@BOTH
def test_mtan_masks_have_the_shape_of_each_shared_feature(trunk: str) -> None:
    model = build("mtan", trunk)
    x = batch(trunk)
    features = model.features(x)
    assert len(features) == len(STAGE_PARAMS[trunk])  # every shared stage's output
    attended = model.attend(features)
    for _, masks in attended.values():
        assert [m.shape for m in masks] == [f.shape for f in features]
        assert all(((m > 0) & (m < 1)).all() for m in masks)
    means = model.inspect(x)["masks"]
    assert list(means) == model.task_names
    assert all(len(v) == len(features) and all(0 < m < 1 for m in v) for v in means.values())


def test_every_architecture_explains_itself() -> None:
    assert set(ARCHITECTURES.names()) >= {"hard_sharing", "single_task", "cross_stitch",
                                          "mmoe", "mtan"}
    for entry in ARCHITECTURES.entries():
        assert len(entry.description) > 20
        for name, field in entry.params.model_fields.items():
            assert field.description, f"{entry.name}.{name} needs a description for the UI"
