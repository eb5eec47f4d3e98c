"""Task suites: shapes, dtypes, values, determinism, and clear errors. Offline and small."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from mtl_core.config import DataConfig
from mtl_core.data import SUITES, DataError, SuiteData, load_suite
from mtl_core.data.mnist import MULTI_SIZE, overlay
from mtl_core.data.table import CsvParams, infer_kind

try:
    from tests.idx_files import write_fake_mnist
except ModuleNotFoundError:  # tests/ run as a plain folder on sys.path
    from idx_files import write_fake_mnist

ALL_SUITES = ["synthetic_mmoe", "toy_2d", "synthetic_tabular", "mnist_attributes",
              "multi_mnist", "mnist_fashion", "csv"]
MNIST_STATS = (0.1307, 0.3081)


def load(suite: str, seed: int = 0, root: Path | None = None, tasks: list[str] | None = None,
         val_fraction: float = 0.1, **params) -> SuiteData:
    cfg = DataConfig(suite=suite, params=params, val_fraction=val_fraction)
    return load_suite(cfg, seed=seed, tasks=tasks, root=root)


def build(suite: str, seed: int = 0, root: Path = Path("."), **params) -> SuiteData:
    """The builder's own output (before load_suite carves val), to see the whole pool."""
    entry = SUITES.get(suite)
    return entry.build(entry.params.model_validate(params), seed=seed, data_dir=root)


def same(a: SuiteData, b: SuiteData) -> bool:
    parts = [(a.train, b.train), (a.val, b.val), (a.test, b.test)]
    return all(
        x.inputs.keys() == y.inputs.keys() and x.targets.keys() == y.targets.keys()
        and all(torch.equal(x.inputs[k], y.inputs[k]) for k in x.inputs)
        and all(torch.equal(x.targets[k], y.targets[k]) for k in x.targets)
        for x, y in parts)


def check_targets(data: SuiteData) -> None:
    """The TaskSpec contract: dtypes, shapes and value ranges of every target."""
    for split in (data.train, data.val, data.test):
        n = len(split)
        for key, value in split.inputs.items():
            assert value.dtype == torch.float32
            assert tuple(value.shape) == (n, *data.input_shapes[key])
        for task in data.tasks:
            y = split.targets[task.name]
            assert y.shape == (n,)
            assert task.input in split.inputs
            if task.kind == "classification":
                assert y.dtype == torch.int64
                assert 0 <= y.min() and y.max() < task.num_classes
                assert len(task.class_names) == task.num_classes
            elif task.kind == "binary":
                assert y.dtype == torch.float32
                assert set(y.unique().tolist()) <= {0.0, 1.0}
            else:
                assert y.dtype == torch.float32 and task.target_scale > 0


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    write_fake_mnist(tmp_path, n_train=60, n_test=30)
    return tmp_path


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    n = 50
    a, b = torch.randn(n, generator=g) * 3 + 10, torch.randn(n, generator=g)
    frame = pd.DataFrame({
        "a": a.numpy(), "b": b.numpy(), "flag": (torch.arange(n) % 2 == 0).numpy(),
        "grade": (torch.arange(n) % 3).numpy(),  # integer, 3 values -> classification
        "colour": [["red", "green", "blue"][i % 3] for i in range(n)],
        "pet": [["dog", "cat"][i % 2] for i in range(n)],  # 2 strings -> binary
        "price": (2 * a + b).numpy(),  # float -> regression
    })
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def suite_params(suite: str, csv_file: Path) -> dict:
    """Small params per suite, for tests that go over all of them."""
    return {
        "synthetic_mmoe": {"n_samples": 200, "n_test": 50},
        "toy_2d": {"n_samples": 200, "n_test": 50},
        "synthetic_tabular": {"n_samples": 200, "n_test": 50},
        "mnist_attributes": {"n_train": 40, "n_test": 0, "download": False},
        "multi_mnist": {"n_train": 40, "n_test": 0, "download": False},
        "mnist_fashion": {"n_train": 40, "n_test": 0, "download": False},
        "csv": {"path": str(csv_file), "inputs": ["a", "b"], "targets": ["grade", "price"]},
    }[suite]


# --- registry and load_suite over every suite -----------------------------------------------


def test_every_suite_is_registered_with_described_params():
    assert set(ALL_SUITES) <= set(SUITES.names())
    for name in ALL_SUITES:
        entry = SUITES.get(name)
        assert entry.extra["input_kind"] in ("vector", "image")
        assert entry.description.endswith(".")
        for field_name, info in entry.params.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
        entry.params()  # defaults alone must be valid


def test_every_suite_but_csv_says_its_shapes_without_its_data():
    """mtl_core.limits sizes the model at submit from `describe` (the CLI, the pages): a
    suite without it is refused there ("cannot say its shapes without its data"). Only a
    csv table's shapes depend on the file (mtl_core.preflight reads it)."""
    missing = [n for n in SUITES.names() if n != "csv" and "describe" not in SUITES.get(n).extra]
    assert missing == []


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_load_suite_end_to_end_is_deterministic(suite, mnist_root, csv_path):
    write_fake_mnist(mnist_root, n_train=50, n_test=20, fashion=True)
    params = suite_params(suite, csv_path)
    entry = SUITES.get(suite)
    first = load(suite, seed=3, root=mnist_root, val_fraction=0.25, **params)
    check_targets(first)
    assert [t.name for t in first.tasks] == entry.extra["task_names"](entry.params(**params))
    assert first.input_kind == entry.extra["input_kind"]
    n_pool = len(first.train) + len(first.val)
    assert len(first.val) == round(0.25 * n_pool)
    assert same(first, load(suite, seed=3, root=mnist_root, val_fraction=0.25, **params))
    assert not same(first, load(suite, seed=4, root=mnist_root, val_fraction=0.25, **params))


# --- synthetic_mmoe -------------------------------------------------------------------------


def linear_correlation(p: float, seed: int = 0) -> float:
    """Empirical Pearson correlation of w1'x and w2'x over the training pool."""
    data = build("synthetic_mmoe", seed=seed, correlation=p)
    weights = torch.tensor(data.meta["weights"])
    linear = data.train.inputs["x"] @ weights.T
    return torch.corrcoef(linear.T)[0, 1].item()


def test_mmoe_shapes_and_standardised_targets():
    data = load("synthetic_mmoe", n_samples=500, n_test=100, n_features=8)
    assert len(data.train) + len(data.val) == 500 and len(data.test) == 100
    assert data.input_shapes == {"x": (8,)}
    pool = build("synthetic_mmoe", n_samples=500, n_test=100, n_features=8)
    for name in ("task1", "task2"):
        y = pool.train.targets[name]
        assert abs(y.mean().item()) < 1e-4 and abs(y.std().item() - 1) < 1e-4


def test_mmoe_labels_are_the_papers_formula():
    data = build("synthetic_mmoe", noise=0.0, n_samples=300, n_sin_terms=5)
    w = torch.tensor(data.meta["weights"])
    alpha, beta = torch.tensor(data.meta["alpha"]), torch.tensor(data.meta["beta"])
    assert alpha.shape == beta.shape == (5,)
    linear = data.train.inputs["x"] @ w.T  # (N, 2)
    clean = linear + torch.sin(linear.unsqueeze(-1) * alpha + beta).sum(-1)
    for k, name in enumerate(["task1", "task2"]):
        restored = data.train.targets[name] * data.task(name).target_scale
        restored = restored + data.meta["target_mean"][name]
        assert torch.allclose(restored, clean[:, k], atol=1e-4)
        assert data.task(name).target_scale == pytest.approx(clean[:, k].std().item(), rel=1e-4)


def test_mmoe_weights_follow_the_generator():
    data = build("synthetic_mmoe", correlation=0.3, n_features=12)
    w = torch.tensor(data.meta["weights"])
    assert w.shape == (2, 12)
    assert torch.allclose(w.norm(dim=1), torch.ones(2), atol=1e-5)  # c = 1
    assert torch.dot(w[0], w[1]).item() == pytest.approx(0.3, abs=1e-5)


def test_mmoe_linear_parts_follow_the_correlation_param():
    assert linear_correlation(0.9) > 0.8
    assert abs(linear_correlation(0.0)) < 0.1
    assert linear_correlation(-0.5) < -0.35
    assert linear_correlation(1.0) > 0.999
    # and the labels themselves move with it
    labels = {p: build("synthetic_mmoe", correlation=p).train.targets for p in (0.0, 0.9)}
    corr = {p: torch.corrcoef(torch.stack([t["task1"], t["task2"]]))[0, 1].item()
            for p, t in labels.items()}
    assert corr[0.9] > 0.7 and abs(corr[0.0]) < 0.1


def test_mmoe_without_sines_or_noise_is_exactly_linear():
    data = build("synthetic_mmoe", n_sin_terms=0, noise=0.0, n_samples=300)
    w = torch.tensor(data.meta["weights"])
    linear = data.train.inputs["x"] @ w[0]
    y = data.train.targets["task1"] * data.task("task1").target_scale
    y = y + data.meta["target_mean"]["task1"]
    assert torch.allclose(y, linear, atol=1e-4)


# --- toy_2d ---------------------------------------------------------------------------------


def test_toy_2d_labels_match_their_definitions_without_noise():
    data = build("toy_2d", noise=0.0, n_samples=400, n_test=100)
    x, y = data.train.inputs["x"], data.train.targets
    radius = x.norm(dim=1)
    assert torch.equal(y["circle"], (radius < math.sqrt(2 / math.pi)).float())
    assert torch.equal(y["xor"], (x[:, 0] * x[:, 1] > 0).float())
    distance = y["distance"] * data.task("distance").target_scale
    assert torch.allclose(distance + data.meta["target_mean"]["distance"], radius, atol=1e-5)
    for task in ("circle", "xor", "spiral"):  # roughly balanced classes
        assert 0.35 < y[task].mean().item() < 0.65
    xmin, xmax, ymin, ymax = data.plane
    assert xmin < x[:, 0].min() and x[:, 0].max() < xmax
    assert ymin < x[:, 1].min() and x[:, 1].max() < ymax


def test_toy_2d_noise_moves_points_off_their_labels():
    clean = build("toy_2d", noise=0.0, seed=1)
    noisy = build("toy_2d", noise=0.2, seed=1)
    assert torch.equal(clean.train.targets["xor"], noisy.train.targets["xor"])
    moved = (noisy.train.inputs["x"] - clean.train.inputs["x"]).norm(dim=1)
    assert 0.15 < moved.mean().item() < 0.35  # mean of a 2-D normal's norm: 0.2*sqrt(pi/2)
    assert noisy.plane[1] > clean.plane[1]


# --- synthetic_tabular ----------------------------------------------------------------------


def test_tabular_default_is_ten_features_two_balanced_classification_tasks():
    data = build("synthetic_tabular", n_samples=900, n_test=300)
    assert data.input_shapes == {"x": (10,)}
    assert [t.name for t in data.tasks] == ["task1", "task2"]
    for task in data.tasks:
        assert task.kind == "classification" and task.num_classes == 3
        counts = torch.bincount(data.train.targets[task.name], minlength=3)
        assert counts.tolist() == [300, 300, 300]  # cut at pool quantiles
    x = data.train.inputs["x"]
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(10), atol=1e-4)


def test_tabular_relatedness_sets_the_task_correlation():
    def corr(r: float) -> float:
        y = build("synthetic_tabular", relatedness=r, task_kind="regression").train.targets
        return torch.corrcoef(torch.stack([y["task1"], y["task2"]]))[0, 1].item()

    assert abs(corr(0.0)) < 0.1
    assert 0.7 < corr(0.8) < 0.9
    assert corr(1.0) > 0.999


def test_tabular_kinds_and_task_count():
    binary = build("synthetic_tabular", task_kind="binary", n_tasks=4, n_features=6)
    assert [t.name for t in binary.tasks] == ["task1", "task2", "task3", "task4"]
    assert binary.input_shapes == {"x": (6,)}
    for task in binary.tasks:
        assert task.kind == "binary"
        assert binary.train.targets[task.name].mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValidationError):
        SUITES.get("synthetic_tabular").params(n_tasks=1)


# --- MNIST suites ---------------------------------------------------------------------------


def test_fake_idx_files_read_back_through_torchvision(tmp_path):
    raw = write_fake_mnist(tmp_path, n_train=20, n_test=10)
    assert raw == tmp_path / "MNIST" / "raw"
    labels = read_label_file(str(raw / "train-labels-idx1-ubyte"))
    assert read_image_file(str(raw / "train-images-idx3-ubyte")).shape == (20, 28, 28)
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 2)
    assert len(datasets.MNIST(str(tmp_path), train=False)) == 10


def test_mnist_attributes_targets_follow_the_digit(mnist_root):
    data = load("mnist_attributes", root=mnist_root, n_train=0, n_test=0, download=False)
    assert len(data.train) + len(data.val) == 60 and len(data.test) == 30
    assert data.input_shapes == {"x": (1, 28, 28)}
    check_targets(data)
    for split in (data.train, data.test):
        digit = split.targets["digit"]
        assert torch.equal(split.targets["parity"], (digit % 2).float())
        assert torch.equal(split.targets["greater_than_4"], (digit >= 5).float())
        pixels = split.inputs["x"] * MNIST_STATS[1] + MNIST_STATS[0]  # back to [0, 1]
        assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
        ink = pixels.mean(dim=(1, 2, 3))
        restored = split.targets["ink"] * data.task("ink").target_scale
        assert torch.allclose(restored + data.meta["target_mean"]["ink"], ink, atol=1e-4)
    # the test set is the whole t10k file
    written = read_label_file(str(mnist_root / "MNIST/raw/t10k-labels-idx1-ubyte"))
    assert sorted(data.test.targets["digit"].tolist()) == sorted(written.tolist())


def test_mnist_subsample_sizes(mnist_root):
    data = build("mnist_attributes", root=mnist_root, n_train=25, n_test=7, download=False)
    assert len(data.train) == 25 and len(data.test) == 7
    other = build("mnist_attributes", root=mnist_root, n_train=25, n_test=7, download=False,
                  seed=1)
    assert not torch.equal(data.train.targets["digit"], other.train.targets["digit"])


def test_multi_mnist_overlays_two_digits(mnist_root):
    data = build("multi_mnist", root=mnist_root, n_train=0, n_test=0, download=False)
    assert data.input_shapes == {"x": (1, MULTI_SIZE, MULTI_SIZE)}
    assert data.train.inputs["x"].shape == (60, 1, 36, 36)
    left, right = data.train.targets["left"], data.train.targets["right"]
    # every image is the left digit once and the right digit once
    assert sorted(left.tolist()) == sorted(right.tolist())
    assert (left != right).any()


def test_overlay_places_digits_and_takes_the_max():
    left = torch.zeros(1, 28, 28, dtype=torch.uint8)
    right = torch.zeros_like(left)
    left[0, 0, 0], left[0, 27, 27] = 100, 50
    right[0, 0, 0], right[0, 19, 19] = 200, 30
    canvas = overlay(left, right, shift=0, g=torch.Generator().manual_seed(0))
    assert canvas.shape == (1, 36, 36)
    assert canvas[0, 0, 0] == 100 and canvas[0, 8, 8] == 200
    assert canvas[0, 27, 27] == 50  # max(50 from the left digit, 30 from the right one)
    assert int((canvas > 0).sum()) == 3
    jittered = overlay(left.repeat(50, 1, 1), right.repeat(50, 1, 1), shift=2,
                       g=torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(jittered == 100)[:, 1], torch.nonzero(jittered == 100)[:, 2]
    assert rows.max() == 2 and cols.max() == 2 and rows.min() == 0  # left corner in 0..2
    right_at = torch.nonzero(jittered == 200)
    assert right_at[:, 1].min() == 6 and right_at[:, 1].max() == 8  # right corner in 8-2..8


def test_mnist_fashion_pairs_two_inputs(mnist_root):
    write_fake_mnist(mnist_root, n_train=45, n_test=30, fashion=True)
    data = load("mnist_fashion", root=mnist_root, n_train=0, n_test=0, download=False)
    check_targets(data)
    assert len(data.train) + len(data.val) == 45  # min(60 digits, 45 fashion items)
    assert {t.name: t.input for t in data.tasks} == {"digit": "digits", "fashion": "fashion"}
    assert data.task("fashion").class_names[0] == "T-shirt/top"
    only = load("mnist_fashion", root=mnist_root, tasks=["fashion"], download=False)
    assert set(only.train.inputs) == {"fashion"} and set(only.train.targets) == {"fashion"}


def test_missing_fashion_mnist_says_where_to_put_it(mnist_root):
    with pytest.raises(DataError) as err:
        load("mnist_fashion", root=mnist_root, download=False)
    message = str(err.value)
    assert message.startswith("Fashion-MNIST not found in")
    assert str(mnist_root / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "MTL_DATA_DIR" in message


def test_failed_download_becomes_a_clear_error(tmp_path, monkeypatch):
    def offline(self):
        Path(self.raw_folder).mkdir(parents=True)  # like torchvision, before it fails
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match=r"MNIST not found in .*download failed: .*no network"):
        load("mnist_attributes", root=tmp_path)
    assert not (tmp_path / "MNIST").exists()  # the failed try left no empty folders


def test_gzipped_files_are_unpacked(tmp_path):
    raw = write_fake_mnist(tmp_path, n_train=20, n_test=10, compressed=True)
    assert not (raw / "train-images-idx3-ubyte").exists()
    data = build("mnist_attributes", root=tmp_path, n_train=0, n_test=0, download=False)
    assert len(data.train) == 20 and len(data.test) == 10


def test_corrupt_file_is_reported(mnist_root):
    (mnist_root / "MNIST/raw/train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="cannot be read"):
        build("mnist_attributes", root=mnist_root, download=False)


# --- csv ------------------------------------------------------------------------------------


def test_csv_infers_kinds_and_encodes_labels(csv_path):
    data = build("csv", path=str(csv_path), inputs=["a", "b"],
                 targets=["grade", "pet", "colour", "flag", "price"])
    kinds = {t.name: t.kind for t in data.tasks}
    assert kinds == {"grade": "classification", "pet": "binary", "colour": "classification",
                     "flag": "binary", "price": "regression"}
    assert data.task("colour").class_names == ["blue", "green", "red"]  # sorted labels
    assert data.task("pet").class_names == ["cat", "dog"]
    assert data.task("grade").num_classes == 3
    check_targets(load("csv", path=str(csv_path), inputs=["a", "b"],
                       targets=["grade", "pet", "price"]))
    frame = pd.read_csv(csv_path)
    assert infer_kind(frame["a"]) == "regression"
    assert infer_kind(pd.Series([1.0, 2.0, 3.0, 2.0])) == "classification"


def test_csv_split_and_standardisation(csv_path):
    data = build("csv", path=str(csv_path), inputs=["a", "b", "flag"], targets=["price"],
                 test_fraction=0.2)
    assert len(data.test) == 10 and len(data.train) == 40
    x = data.train.inputs["x"]
    assert torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(0), torch.ones(3), atol=1e-5)
    scale, mean = data.task("price").target_scale, data.meta["target_mean"]["price"]
    restored = torch.cat([data.train.targets["price"], data.test.targets["price"]]) * scale
    expected = sorted(pd.read_csv(csv_path)["price"].tolist())
    assert sorted((restored + mean).tolist()) == pytest.approx(expected, abs=1e-3)


def test_csv_empty_inputs_means_every_other_column(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("u,v,w,y\n" + "".join(f"{i},{i * i},{i % 4},{i % 2}\n" for i in range(20)))
    data = build("csv", path=str(path), targets=["y"])
    assert data.meta["inputs"] == ["u", "v", "w"] and data.input_shapes == {"x": (3,)}
    other = build("csv", path=str(path), targets=["y"], seed=1)
    assert not torch.equal(data.test.inputs["x"], other.test.inputs["x"])  # other rows


def test_csv_kind_override(csv_path):
    data = build("csv", path=str(csv_path), inputs=["a"], targets=["grade"],
                 kinds={"grade": "regression"})
    assert data.task("grade").kind == "regression"
    with pytest.raises(DataError, match="'grade' has 3 distinct values; binary needs exactly 2"):
        build("csv", path=str(csv_path), inputs=["a"], targets=["grade"],
              kinds={"grade": "binary"})
    with pytest.raises(DataError, match="cannot be a regression target"):
        build("csv", path=str(csv_path), inputs=["a"], targets=["pet"], kinds={"pet": "regression"})
    with pytest.raises(DataError, match="kinds given for non-target column"):
        build("csv", path=str(csv_path), inputs=["a"], targets=["pet"], kinds={"b": "binary"})
    with pytest.raises(ValidationError):
        CsvParams(kinds={"pet": "ordinal"})


def test_csv_relative_path_is_found_in_the_data_folder(csv_path):
    data = build("csv", root=csv_path.parent, path=csv_path.name, inputs=["a"], targets=["pet"])
    assert data.meta["path"] == str(csv_path) and len(data.train) == 40


def test_csv_task_names_come_from_params_without_reading():
    entry = SUITES.get("csv")
    assert entry.extra["task_names"](CsvParams(path="/nowhere.csv", targets=["y", "z"])) == [
        "y", "z"]


@pytest.mark.parametrize("params, message", [
    ({"path": "/no/such/file.csv", "targets": ["a"]}, "file not found: /no/such/file.csv"),
    ({"targets": ["price", "height"]}, "not in the file: height; the columns are: a, b, flag"),
    ({"inputs": ["a", "zz"], "targets": ["price"]}, "input column.* not in the file: zz"),
    ({"inputs": ["a", "colour"], "targets": ["price"]}, "input column 'colour' is not numeric"),
    ({"inputs": ["a", "price"], "targets": ["price"]}, "both input and target: price"),
    ({"targets": []}, "no target columns; set data.params.targets to one or more of: a, b"),
    ({"path": ""}, "no file given"),
])
def test_csv_errors_name_the_problem(csv_path, params, message):
    params = {"path": str(csv_path), **params}
    with pytest.raises(DataError, match=message):
        build("csv", **params)


def test_csv_nans_and_single_class_targets(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("a,b,y,same\n1,2,0,5\n2,,1,5\n3,4,0,5\n4,,1,5\n5,6,1,5\n6,7,0,5\n")
    with pytest.raises(DataError, match=r"column 'b' has 2 missing .*file lines 3, 5"):
        build("csv", path=str(path), targets=["y"])
    with pytest.raises(DataError, match="'same' has the single value 5 in every row"):
        build("csv", path=str(path), inputs=["a"], targets=["same"])
    data = build("csv", path=str(path), inputs=["a"], targets=["y"], test_fraction=0.2)
    assert data.task("y").kind == "binary" and len(data.test) == 1
