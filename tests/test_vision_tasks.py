"""The vision task kinds and suites: box loss and IoU, mIoU / pixel accuracy / abs_rel on
hand-made masks, Δm's direction for the new metrics, digit_boxes and scenes (deterministic,
what they promise), a short run of each lowering every task's loss on every architecture,
and mnist_fashion on generated IDX files for both data sets."""
from __future__ import annotations

import math

import pytest
import torch
from idx_files import fake_images, write_fake_mnist

from mtl_core.baselines import comparison, primary_metric
from mtl_core.config import ConfigError, DataConfig, parse_config
from mtl_core.data import SUITES, load_suite
from mtl_core.data.base import TaskSpec
from mtl_core.data.vision import BACKGROUND_DEPTH, FAR, NEAR
from mtl_core.metrics import HIGHER_IS_BETTER, predict, task_loss, task_metrics
from mtl_core.sink import MemorySink
from mtl_core.task_kinds import box_iou, decode_box, mean_iou
from mtl_core.trainer import train

BOX = TaskSpec("box", "box")
SEG = TaskSpec("seg", "dense_classification", num_classes=3, out_size=(2, 2))
DEPTH = TaskSpec("depth", "dense_regression", out_size=(2, 2))


def logits_for(boxes: torch.Tensor) -> torch.Tensor:
    """Raw head outputs that decode to `boxes` (centre and size through the logit)."""
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    return torch.logit(torch.cat([centre, size], 1))


# ---------------------------------------------------------------- boxes


def test_iou_and_giou_of_hand_made_boxes():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.4, 0.6]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.4, 0.6]])
    iou, giou = box_iou(a, b)
    # overlap 0.25² = 0.0625 of a union 0.25 + 0.25 − 0.0625
    assert iou[0].item() == pytest.approx(0.0625 / 0.4375, abs=1e-6)
    assert iou[1].item() == 0.0 and iou[2].item() == pytest.approx(1.0, abs=1e-6)
    # disjoint: GIoU = −(hull − union)/hull, hull 0.8², union 0.08
    assert giou[1].item() == pytest.approx(-(0.64 - 0.08) / 0.64, abs=1e-6)
    assert giou[0].item() == pytest.approx(0.0625 / 0.4375 - (0.5625 - 0.4375) / 0.5625,
                                           abs=1e-6)


def test_box_loss_is_zero_on_the_truth_and_grows_with_the_error():
    target = torch.tensor([[0.2, 0.3, 0.6, 0.9], [0.1, 0.1, 0.3, 0.2]])
    exact = logits_for(target)
    assert torch.allclose(decode_box(exact), target, atol=1e-6)
    assert task_loss(BOX, exact, target).item() == pytest.approx(0.0, abs=1e-5)
    near = logits_for(target + 0.02)
    far = logits_for(torch.tensor([[0.6, 0.6, 0.9, 0.95], [0.7, 0.7, 0.9, 0.9]]))
    assert 0 < task_loss(BOX, near, target) < task_loss(BOX, far, target)
    # the loss has a gradient even when the boxes do not overlap (GIoU)
    far.requires_grad_(True)
    task_loss(BOX, far, target).backward()
    assert far.grad is not None and far.grad.abs().sum() > 0


def test_box_metrics_iou_and_acc50():
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]])
    m = task_metrics(BOX, logits_for(pred), target)
    assert m["iou"].item() == pytest.approx((1 + 0.0625 / 0.4375) / 2, abs=1e-4)
    assert m["acc50"].item() == pytest.approx(0.5)
    assert torch.allclose(predict(BOX, logits_for(pred)), pred, atol=1e-5)


# ---------------------------------------------------------------- masks


def test_miou_and_pixel_accuracy_on_hand_made_masks():
    target = torch.tensor([[[0, 0], [1, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    # class 0: 1 / 2, class 1: 1 / 3, class 2: 0 / 1
    assert mean_iou(pred, target, 3).item() == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5
    m = task_metrics(SEG, logits, target)
    assert m["pixel_acc"].item() == pytest.approx(0.5)
    assert m["miou"].item() == pytest.approx((0.5 + 1 / 3) / 3)
    # a class absent from both truth and prediction is not averaged in
    assert mean_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 3).item() == 1.0


def test_abs_rel_and_rmse_on_hand_made_depth_maps():
    target = torch.tensor([[[1.0, 2.0], [4.0, 5.0]]])
    pred = torch.tensor([[[1.5, 2.0], [3.0, 5.0]]])
    m = task_metrics(DEPTH, pred, target)
    assert m["abs_rel"].item() == pytest.approx((0.5 / 1 + 0 + 1 / 4 + 0) / 4)
    assert m["rmse"].item() == pytest.approx(math.sqrt((0.25 + 1) / 4))
    assert m["loss"].item() == pytest.approx((0.5 + 1) / 4)  # L1


def test_delta_m_direction_of_the_new_metrics():
    assert {k: HIGHER_IS_BETTER[k] for k in ("iou", "acc50", "miou", "pixel_acc", "abs_rel",
                                              "rmse")} == {"iou": True, "acc50": True,
                                                           "miou": True, "pixel_acc": True,
                                                           "abs_rel": False, "rmse": False}
    kinds = {"box": "box", "seg": "dense_classification", "depth": "dense_regression"}
    assert [primary_metric(k) for k in kinds.values()] == ["iou", "miou", "abs_rel"]
    run = {"test": {"box": {"iou": 0.66}, "seg": {"miou": 0.5}, "depth": {"abs_rel": 0.12}}}
    base = {"box": {"test": {"box": {"iou": 0.6}}}, "seg": {"test": {"seg": {"miou": 0.5}}},
            "depth": {"test": {"depth": {"abs_rel": 0.1}}}}
    comp = comparison(run, base, kinds)
    # box better by 10 % (a −10 term), seg equal, depth worse by 20 % (a +20 term)
    assert comp.delta_m == pytest.approx((-10 + 0 + 20) / 3)
    # read back from the logged metric names alone, the same
    assert comparison(run, base).delta_m == pytest.approx(comp.delta_m)


# ---------------------------------------------------------------- digit_boxes


def boxes_suite(tmp_path, seed=0, **params):
    write_fake_mnist(tmp_path, n_train=60, n_test=20)
    entry = SUITES.get("digit_boxes")
    p = entry.params(n_train=0, n_test=0, download=False, **params)
    return entry.build(p, seed=seed, data_dir=tmp_path)


def test_digit_boxes_deterministic_and_boxes_hold_the_digit(tmp_path):
    a, b = boxes_suite(tmp_path), boxes_suite(tmp_path)
    other = boxes_suite(tmp_path, seed=1)
    assert torch.equal(a.train.inputs["x"], b.train.inputs["x"])
    assert torch.equal(a.train.targets["box"], b.train.targets["box"])
    assert not torch.equal(a.train.inputs["x"], other.train.inputs["x"])
    x, boxes = a.train.inputs["x"], a.train.targets["box"]
    assert x.shape == (60, 1, 64, 64) and boxes.shape == (60, 4)
    assert a.task("box").kind == "box"
    background = x.min()
    for image, box in zip(x[:, 0], boxes, strict=True):
        x0, y0, x1, y1 = (box * 64).round().long().tolist()
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        # the one digit's ink lies inside its box (faint noise of the fake files aside)
        outside = image.clone()
        outside[y0:y1, x0:x1] = background
        assert (outside > background + 2.5).sum() == 0
        assert (image[y0:y1, x0:x1] > background + 2.5).any()
        assert (box[2:] - box[:2]).max().item() <= 32 / 64  # at most max_size


def test_digit_boxes_several_digits_keep_the_first_on_top(tmp_path):
    data = boxes_suite(tmp_path, n_digits=3)
    one = boxes_suite(tmp_path)
    assert torch.equal(data.train.targets["digit"], one.train.targets["digit"])
    ink = (data.train.inputs["x"] > data.train.inputs["x"].min() + 2.5).flatten(1).sum(1)
    single = (one.train.inputs["x"] > one.train.inputs["x"].min() + 2.5).flatten(1).sum(1)
    assert (ink > single).float().mean() > 0.8  # distractors add ink


def test_canvas_smaller_than_a_digit_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"suite": "digit_boxes", "params": {"canvas": 20}}})
    [error] = info.value.errors
    assert error.path == "data.params.canvas" and "max_size 32" in error.message
    assert "got 20" in error.message
    with pytest.raises(ConfigError, match="max_size must be at least min_size"):
        parse_config({"data": {"suite": "digit_boxes",
                               "params": {"min_size": 20, "max_size": 10}}})


# ---------------------------------------------------------------- scenes


def scenes(seed=0, **params):
    entry = SUITES.get("scenes")
    return entry.build(entry.params(n_samples=50, n_test=10, size=24, **params), seed=seed,
                       data_dir=".")


def test_scenes_deterministic_with_occlusion_and_depth_order():
    a, b, other = scenes(), scenes(), scenes(seed=1)
    for key in ("segmentation", "depth"):
        assert torch.equal(a.train.targets[key], b.train.targets[key])
    assert torch.equal(a.train.inputs["x"], b.train.inputs["x"])
    assert not torch.equal(a.train.targets["segmentation"], other.train.targets["segmentation"])
    seg, depth = a.train.targets["segmentation"], a.train.targets["depth"]
    assert seg.shape == (50, 24, 24) and seg.dtype == torch.long
    assert set(seg.unique().tolist()) <= {0, 1, 2, 3} and len(seg.unique()) == 4
    assert torch.all(depth[seg == 0] == BACKGROUND_DEPTH)
    shapes = depth[seg > 0]
    assert shapes.min() >= NEAR and shapes.max() <= FAR
    # where shapes overlap the nearer one is seen: the visible depths of a scene are the
    # smallest of the shapes covering each pixel, so no pixel is deeper than the background
    assert a.task("segmentation").out_size == (24, 24)
    assert a.input_shapes["x"] == (3, 24, 24)


def test_scenes_painters_order_shows_the_nearest_shape():
    from mtl_core.data.vision import make_scenes

    entry = SUITES.get("scenes")
    p = entry.params(n_samples=10, n_test=10, size=32, max_shapes=6)
    g = torch.Generator().manual_seed(0)
    image, seg, depth, counts = make_scenes(400, p, g)
    # with up to six shapes there is occlusion: some scenes show fewer shapes than they have
    visible = torch.tensor([len(d[s > 0].unique()) for d, s in zip(depth, seg, strict=True)])
    assert (visible < counts).any() and (visible <= counts).all()
    # nearer (smaller depth) shapes are drawn larger on average (perspective)
    areas = [((d == v).sum().item(), v.item()) for d, s in zip(depth, seg, strict=True)
             for v in d[s > 0].unique()]
    near = [a for a, v in areas if v < 2.0]
    far = [a for a, v in areas if v > 3.0]
    assert sum(near) / len(near) > sum(far) / len(far)


def test_scenes_count_task_is_optional():
    assert SUITES.get("scenes").extra["task_names"](SUITES.get("scenes").params()) == [
        "segmentation", "depth"]
    data = scenes(count=True)
    assert [t.name for t in data.tasks] == ["segmentation", "depth", "count"]
    assert data.train.targets["count"].min() >= 1


# ---------------------------------------------------------------- short runs


def first_and_last(sink: MemorySink, task: str) -> tuple[float, float]:
    series = sink.series("train", task, "loss")
    k = max(1, len(series) // 4)
    return (sum(v for _, v in series[:k]) / k, sum(v for _, v in series[-k:]) / k)


@pytest.mark.parametrize("architecture", ["hard_sharing", "single_task", "cross_stitch",
                                          "mmoe", "mtan"])
def test_a_short_scenes_run_lowers_every_tasks_loss(architecture):
    doc = {"device": "cpu", "seed": 0,
           "data": {"suite": "scenes", "params": {"n_samples": 160, "n_test": 20, "size": 16,
                                                  "count": True}},
           "model": {"architecture": architecture,
                     "trunk": {"type": "cnn", "layers": [8, 16], "hidden": []},
                     "heads": {"layers": [16]}, "params": {"n_experts": 2}
                     if architecture == "mmoe" else {}},
           "optim": {"epochs": 4, "batch_size": 16, "lr": 0.005}, "log_every": 3}
    sink = MemorySink()
    result = train(parse_config(doc), sink)
    assert result.status == "finished", result.message
    for task in ("segmentation", "depth", "count"):
        first, last = first_and_last(sink, task)
        assert last < first, (task, first, last)
    test = result.summary["test"]
    assert set(test["segmentation"]) == {"loss", "miou", "pixel_acc"}
    assert set(test["depth"]) == {"loss", "abs_rel", "rmse"}
    masks = [p for _, kind, p in sink.snapshots if kind == "predictions"][-1]["outputs"]
    assert torch.tensor(masks["segmentation"]).shape == (8, 16, 16)  # a small dense probe


def test_a_short_digit_boxes_run_lowers_both_losses(isolated_dirs):
    write_fake_mnist(isolated_dirs.parent / "data", n_train=200, n_test=40)
    doc = {"device": "cpu", "seed": 0,
           "data": {"suite": "digit_boxes", "params": {"n_train": 0, "n_test": 0,
                    "download": False, "canvas": 32, "min_size": 16, "max_size": 28}},
           "model": {"trunk": {"type": "cnn", "layers": [8, 16], "hidden": []},
                     "heads": {"layers": [32]}},
           "weighting": {"method": "pcgrad", "params": {"gradients": "representation"}},
           "optim": {"epochs": 6, "batch_size": 20, "lr": 0.005}, "log_every": 3}
    sink = MemorySink()
    result = train(parse_config(doc), sink)
    assert result.status == "finished", result.message
    for task in ("digit", "box"):
        first, last = first_and_last(sink, task)
        assert last < first, (task, first, last)
    assert set(result.summary["test"]["box"]) == {"loss", "iou", "acc50"}
    probe = next(p for _, kind, p in sink.snapshots if kind == "probe")
    assert len(probe["targets"]["box"][0]) == 4 and probe["tasks"]["box"]["kind"] == "box"
    # the confusion snapshot holds the digit, not the box
    confusion = [p for _, kind, p in sink.snapshots if kind == "confusion"][-1]
    assert set(confusion) == {"digit"}


# ---------------------------------------------------------------- mnist_fashion


def block_label(image: torch.Tensor, fashion: bool) -> int:
    """The label tests/idx_files drew into a fake image (a bright 6×4 block's place)."""
    bright = (image > image.min() + 2.0).nonzero()
    row, col = bright[:, 0].min().item(), bright[:, 1].min().item()
    if fashion:
        row, col = col, row
    return (row - 4) // 12 * 5 + (col - 2) // 5


def test_mnist_fashion_reads_both_data_sets_from_generated_idx_files(tmp_path):
    write_fake_mnist(tmp_path, n_train=60, n_test=20)
    write_fake_mnist(tmp_path, n_train=50, n_test=20, fashion=True, compressed=True)
    data = load_suite(DataConfig(suite="mnist_fashion",
                                 params={"n_train": 0, "n_test": 0, "download": False}),
                      seed=0, root=tmp_path)
    assert set(data.input_shapes) == {"digits", "fashion"}
    assert [t.input for t in data.tasks] == ["digits", "fashion"]
    assert data.task("fashion").class_names[0] == "T-shirt/top"
    train_n = len(data.train) + len(data.val)
    assert train_n == 50  # the smaller of the two data sets
    for split in (data.train, data.test):
        for i in range(len(split)):
            assert block_label(split.inputs["digits"][i, 0], False) == split.targets["digit"][i]
            assert block_label(split.inputs["fashion"][i, 0], True) == split.targets["fashion"][i]
    # the fake Fashion images differ from the digits (transposed blocks)
    assert not torch.equal(fake_images(torch.tensor([3])), fake_images(torch.tensor([3]), True))


def test_mnist_fashion_without_fashion_files_says_where_they_go(tmp_path):
    write_fake_mnist(tmp_path)
    with pytest.raises(Exception, match="FashionMNIST/raw"):
        load_suite(DataConfig(suite="mnist_fashion", params={"download": False}), seed=0,
                   root=tmp_path)


def test_a_short_mnist_fashion_run_trains_both_tasks(isolated_dirs):
    root = isolated_dirs.parent / "data"
    write_fake_mnist(root, n_train=100, n_test=20)
    write_fake_mnist(root, n_train=100, n_test=20, fashion=True)
    doc = {"device": "cpu", "data": {"suite": "mnist_fashion", "params": {
               "n_train": 0, "n_test": 0, "download": False}},
           "model": {"architecture": "single_task", "trunk": {"type": "cnn", "layers": [8],
                                                               "hidden": [16]}},
           "optim": {"epochs": 8, "batch_size": 30, "lr": 0.01}, "log_every": 3}
    sink = MemorySink()
    result = train(parse_config(doc), sink)
    assert result.status == "finished"
    for task in ("digit", "fashion"):
        first, last = first_and_last(sink, task)
        assert last < first, (task, first, last)


def test_a_scenes_run_in_the_store_exports_and_compares_with_its_metrics(isolated_dirs, capsys):
    """The new metrics go through the store, the CLI export and Δm like the old ones."""
    import json as _json

    from mtl_core import cli
    from mtl_core.baselines import compare_run
    from mtl_core.store import RunStore

    store = RunStore(isolated_dirs)
    doc = {"device": "cpu", "data": {"suite": "scenes", "params": {
               "n_samples": 40, "n_test": 10, "size": 16}},
           "model": {"trunk": {"type": "cnn", "layers": [4], "hidden": []},
                     "heads": {"layers": [8]}},
           "optim": {"epochs": 1, "batch_size": 16}, "log_every": 1}
    cfg = parse_config(doc)
    run_id = store.create_run(cfg, status="running")
    result = train(cfg, store.sink(run_id))
    store.set_status(run_id, result.status, summary=result.summary)
    code = cli.main(["export", run_id, "--format", "json", "--runs-dir", str(isolated_dirs)])
    assert code == 0
    rows = _json.loads(capsys.readouterr().out)
    rows = rows.get("metrics", rows) if isinstance(rows, dict) else rows
    names = {(r["split"], r["task"], r["name"]) for r in rows}
    assert {("test", "segmentation", "miou"), ("val", "depth", "abs_rel"),
            ("test", "depth", "rmse")} <= names
    comp = compare_run(run_id, isolated_dirs)  # no baselines yet: says so, picks the metrics
    assert [r.metric for r in comp.rows] == ["miou", "abs_rel"]
    assert comp.delta_m is None and "no finished baseline" in (comp.note or "")


# ---------------------------------------------------------------- describe (no data)


@pytest.mark.parametrize("suite, params", [
    ("digit_boxes", {"canvas": 40, "max_size": 24}),
    ("scenes", {"size": 24, "count": True, "max_shapes": 4}),
    ("scenes", {"size": 20}),
])
def test_describe_says_what_the_builder_builds(suite, params, tmp_path):
    """The shapes mtl_core.limits sizes a model from at submit (no MNIST read, no scene
    generated) are those of the data the run will train on."""
    entry = SUITES.get(suite)
    if suite == "digit_boxes":
        write_fake_mnist(tmp_path, n_train=30, n_test=10)
        params = {**params, "n_train": 0, "n_test": 0, "download": False}
    else:
        params = {**params, "n_samples": 10, "n_test": 10}
    p = entry.params(**params)
    tasks, shapes = entry.extra["describe"](p)
    built = entry.build(p, seed=0, data_dir=tmp_path)
    assert tasks == built.tasks and shapes == built.input_shapes
    assert [t.name for t in tasks] == entry.extra["task_names"](p)
