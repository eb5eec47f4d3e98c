"""Torchvision backbones as trunks: shapes and parameter counts, weights really loaded,
`trainable` freezing what it says, the diagram's one box, and the refusals at submit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from idx_files import write_fake_mnist
from test_cli import run_cli, write_config

from mtl_core.config import ConfigError, ModelConfig, parse_config
from mtl_core.data import load_suite
from mtl_core.data.base import Split, SuiteData, TaskSpec
from mtl_core.models import build_model
from mtl_core.models.backbones import imagenet_file, stage_shapes
from mtl_core.sink import MemorySink
from mtl_core.trainer import train

# torchvision's parameter counts without the classifier (fc / classifier): the published
# totals (11,689,512 / 21,797,672 / 25,557,032 / 2,542,856) minus the ImageNet classifier.
TRUNK_PARAMS = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                "resnet50": 25_557_032 - 2_049_000, "mobilenet_v3_small": 2_542_856 - 1_615_848}
# Per-stage output shapes for 1×28×28 inputs (stem at stride 1 and, for ResNets, no
# max-pool: see backbones.adaptation) and for 3×64×64 inputs (torchvision's own strides).
SHAPES_28 = {"resnet18": [(64, 28, 28), (64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 4, 4)],
             "resnet50": [(64, 28, 28), (256, 28, 28), (512, 14, 14), (1024, 7, 7),
                          (2048, 4, 4)],
             "mobilenet_v3_small": [(16, 28, 28), (16, 14, 14), (24, 7, 7), (48, 4, 4),
                                    (576, 2, 2)]}
SHAPES_64 = {"resnet18": [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]}


def tasks() -> list[TaskSpec]:
    return [TaskSpec("digit", "classification", num_classes=10), TaskSpec("box", "box")]


def shapes_only(in_shape: tuple[int, ...]) -> SuiteData:
    empty = Split({}, {})
    return SuiteData("digit_boxes", tasks(), empty, empty, empty, {"x": in_shape}, "image")


def model_cfg(trunk: dict, **params) -> ModelConfig:
    return ModelConfig.model_validate({"architecture": "hard_sharing", "trunk": trunk,
                                       "heads": {"layers": [8]}, "params": params})


@pytest.mark.parametrize("name", list(TRUNK_PARAMS))
def test_parameter_counts_and_one_diagram_box(name):
    with torch.device("meta"):  # ResNet-50 included: no memory, no compute
        model = build_model(model_cfg({"type": name}), shapes_only((1, 28, 28)))
    counts = model.parameter_counts()
    assert counts["shared"] == TRUNK_PARAMS[name]
    boxes = model.diagram_blocks()
    shared = [b for b in boxes if b.owner == "shared"]
    assert len(shared) == 1 and shared[0].params == TRUNK_PARAMS[name]
    assert "5 stages" in shared[0].label
    assert len(model.blocks()) == len(boxes) + 4  # the 5 stages were 5 boxes


@pytest.mark.parametrize("name", list(SHAPES_28))
def test_stage_shapes_of_small_grey_images(name):
    assert [tuple(s) for s in stage_shapes(name, (1, 28, 28))] == SHAPES_28[name]


def test_stage_shapes_of_64px_colour_images():
    assert [tuple(s) for s in stage_shapes("resnet18", (3, 64, 64))] == SHAPES_64["resnet18"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_real_forward_shapes_on_grey_and_colour_inputs(name):
    torch.manual_seed(0)
    for in_shape in ((1, 28, 28), (3, 40, 40)):
        model = build_model(model_cfg({"type": name}), shapes_only(in_shape)).eval()
        x = torch.randn(2, *in_shape)
        features = model.features({"x": x})
        assert tuple(features[0].shape[1:]) == stage_shapes(name, in_shape)[-1]
        out = model.heads(features)
        assert out["digit"].shape == (2, 10) and out["box"].shape == (2, 4)


def test_branch_point_counts_backbone_stages():
    with torch.device("meta"):
        model = build_model(model_cfg({"type": "resnet18"}, shared_layers=2),
                            shapes_only((1, 28, 28)))
    assert len(model.shared) == 2
    boxes = model.diagram_blocks()
    shared = [b for b in boxes if b.owner == "shared"]
    assert len(shared) == 1 and "2 stages" in shared[0].label
    own = [b for b in boxes if b.owner == "digit" and b.group]
    assert len(own) == 1 and "3 stages" in own[0].label
    # stem + layer1 are shared; layer2..4 are copied per task
    assert model.parameter_counts()["shared"] == sum(
        p.numel() for p in model.shared.parameters())
    with pytest.raises(ConfigError, match="allowed 0..5"):
        parse_config({"data": {"suite": "scenes"}, "model": {"trunk": {"type": "resnet18"},
                                                             "params": {"shared_layers": 6}}})


# ---------------------------------------------------------------- weights


def saved_state(path: Path, name: str = "resnet18", seed: int = 1) -> dict[str, torch.Tensor]:
    from torchvision import models

    torch.manual_seed(seed)
    state = getattr(models, name)(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_a_local_weights_file_is_really_loaded(tmp_path):
    path = tmp_path / "r18.pt"
    state = saved_state(path)
    cfg = model_cfg({"type": "resnet18", "weights": str(path)}, shared_layers=1)
    torch.manual_seed(0)  # another init than the file's
    model = build_model(cfg, shapes_only((1, 28, 28)))
    conv1 = model.shared[0].net[0]
    assert torch.equal(conv1.weight, state["conv1.weight"])
    # every task's own copy of the later stages gets the file's weights too
    for branch in model.private:
        layer4 = branch.stages[-1].net
        assert torch.equal(layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    plain = build_model(model_cfg({"type": "resnet18"}), shapes_only((1, 28, 28)))
    assert not torch.equal(plain.shared[0].net[0].weight, state["conv1.weight"])


def test_imagenet_weights_come_from_the_local_torch_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    doc = {"data": {"suite": "scenes"}, "model": {"trunk": {"type": "mobilenet_v3_small",
                                                            "weights": "imagenet"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    [error] = info.value.for_path("model.trunk.weights")
    assert "not in the local torch cache" in error.message and "download" in error.message
    cached, url = imagenet_file("mobilenet_v3_small")
    assert str(cached).startswith(str(tmp_path / "torch")) and url.startswith("https://")
    cached.parent.mkdir(parents=True)
    state = saved_state(cached, "mobilenet_v3_small")  # stands in for torchvision's file
    cfg = parse_config(doc)
    model = build_model(cfg.model, shapes_only((3, 32, 32)))
    assert torch.equal(model.shared[0].net[0][0].weight, state["features.0.0.weight"])


class NotTensors:
    pass


@pytest.mark.parametrize("case, expected", [
    ("missing", "no weights file at"),
    ("text", "is not a state dict file torch.load can read with weights_only=True"),
    ("pickle", "weights_only=True"),
    ("list", "holds a list, not a state dict"),
    ("other_architecture", "is not a ResNet-18 state dict"),
    ("wrong_shape", "of another shape (e.g. conv1.weight"),
    ("empty", "empty path"),
])
def test_bad_weights_are_refused_at_submit_naming_the_field(tmp_path, case, expected):
    path = tmp_path / f"{case}.pt"
    if case == "text":
        path.write_text("not weights")
    elif case == "pickle":  # arbitrary objects are refused by weights_only=True
        torch.save({"conv1.weight": NotTensors()}, path)
    elif case == "list":
        torch.save([torch.zeros(1)], path)
    elif case == "other_architecture":
        saved_state(path, "mobilenet_v3_small")
    elif case == "wrong_shape":
        state = saved_state(path)
        state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
        torch.save(state, path)
    weights = " " if case == "empty" else str(path)
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"suite": "scenes"},
                      "model": {"trunk": {"type": "resnet18", "weights": weights}}})
    [error] = info.value.errors
    assert error.path == "model.trunk.weights" and expected in error.message, error.message


def test_cli_refuses_bad_input_with_exit_status_2(tmp_path, capsys):
    cases = [
        ({"data": {"suite": "toy_2d"}, "model": {"trunk": {"type": "resnet18"}}},
         "model.trunk.type: a resnet18 backbone needs an image suite"),
        ({"data": {"suite": "scenes"}, "model": {"trunk": {
            "type": "resnet18", "weights": str(tmp_path / "nope.pt")}}},
         "model.trunk.weights: no weights file at"),
        ({"data": {"suite": "digit_boxes", "params": {"canvas": 24, "max_size": 32}}},
         "data.params.canvas: the canvas must be at least as large as the largest digit "
         "(max_size 32 px); got 24"),
    ]
    for document, expected in cases:
        config = write_config(tmp_path, document)
        code, out, err = run_cli(capsys, "train", str(config), "--runs-dir", str(tmp_path / "r"))
        assert code == 2 and expected in err, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- trainable


@pytest.mark.parametrize("trainable, trained_stages", [("all", 5), ("last_block", 1),
                                                       ("none", 0)])
def test_trainable_freezes_what_it_says(isolated_dirs, trainable, trained_stages):
    root = isolated_dirs.parent / "data"  # MTL_DATA_DIR
    write_fake_mnist(root, n_train=40, n_test=10)
    doc = {"device": "cpu", "seed": 0,
           "data": {"suite": "digit_boxes", "params": {"n_train": 0, "n_test": 0,
                    "download": False, "canvas": 28, "min_size": 12, "max_size": 20}},
           "model": {"trunk": {"type": "mobilenet_v3_small", "trainable": trainable},
                     "heads": {"layers": [8]}},
           "optim": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "log_every": 1}
    cfg = parse_config(doc)
    data = load_suite(cfg.data, 0, ["digit", "box"], root=root)
    torch.manual_seed(0)
    before = build_model(cfg.model, data)
    trains = [any(p.requires_grad for p in stage.parameters()) for stage in before.shared]
    assert sum(trains) == trained_stages
    if trainable == "last_block":
        assert trains[-1]
    sink = MemorySink()
    result = train(cfg, sink)
    assert result.status == "finished", result.message
    after = sink.checkpoints["final"]["model"]
    for name, value in before.state_dict().items():
        stage = int(name.split(".")[1]) if name.startswith("shared.") else None
        changed = not torch.equal(value, after[name])
        if stage is not None and not trains[stage]:
            # frozen: weights and batch-norm statistics stay as built
            assert not changed, name
    heads = [k for k in after if k.startswith("private.") and k.endswith("weight")]
    assert any(not torch.equal(before.state_dict()[k], after[k]) for k in heads)
    trained = [k for k in after if k.startswith("shared.") and k.endswith("weight")
               and trains[int(k.split(".")[1])]]
    assert bool(trained) == (trained_stages > 0)
    if trained:
        assert any(not torch.equal(before.state_dict()[k], after[k]) for k in trained)
