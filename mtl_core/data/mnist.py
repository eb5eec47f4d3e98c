"""MNIST-based suites: `mnist_attributes`, `multi_mnist`, `mnist_fashion`.

Files are read through `torchvision.datasets.MNIST` / `FashionMNIST` from `data_dir`
(torchvision's layout: `<data_dir>/MNIST/raw/train-images-idx3-ubyte`, ...). We check for
the raw files ourselves first: torchvision's `download=True` goes to the network even to
find out that it cannot, and its errors do not say where the files should go. A download
is only tried when files are missing and the `download` param allows it; any failure
becomes a `DataError` naming the folder and the files to put there.

Images are float32 (N, 1, H, W), normalised with the data set's usual mean and std.
`n_train` / `n_test` subsample each split with the seed (0 = the whole split).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from mtl_core.data import SUITES
from mtl_core.data.base import DataError, Split, SuiteData, TaskSpec, shapes_only
from mtl_core.registry import Params

RAW_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# The usual per-data-set pixel statistics (of x / 255 over the training set).
_STATS = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530)}
_SOURCES = {"MNIST": "http://yann.lecun.com/exdb/mnist/",
            "FashionMNIST": "https://github.com/zalandoresearch/fashion-mnist"}
_TITLES = {"MNIST": "MNIST", "FashionMNIST": "Fashion-MNIST"}
DIGIT_NAMES = [str(d) for d in range(10)]
# torchvision is imported only when files are read: it costs seconds of start-up in every
# worker and CLI call otherwise. These are torchvision's FashionMNIST.classes.
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
MULTI_SIZE = 36  # multi_mnist canvas side: two 28x28 digits offset by up to 8 pixels


def _missing(raw: Path) -> list[str]:
    """Raw files not yet usable; a lone `.gz` is unpacked in place (what torchvision ships)."""
    missing = []
    for name in RAW_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.is_file() and packed.is_file():
            try:
                with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except OSError:
                try:  # a half-written file would look present
                    target.unlink(missing_ok=True)
                except OSError:
                    pass
        if not target.is_file():
            missing.append(name)
    return missing


def _not_found(dataset: str, raw: Path, missing: list[str], reason: str = "") -> DataError:
    why = f" ({reason})" if reason else ""
    return DataError(
        f"{_TITLES[dataset]} not found in {raw}{why}: put {', '.join(missing)} there "
        f"(the raw IDX files from {_SOURCES[dataset]}, plain or .gz), or set MTL_DATA_DIR to a "
        f"folder that has {dataset}/raw/ with them")


def _reason(exc: Exception) -> str:
    """The gist of a download error: torchvision's spans lines ("Error downloading f:",
    "Tried <mirror>, got:", "<the error>", ...); keep the first and the last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return repr(exc)
    return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"


def read_split(data_dir: Path, *, train: bool, fashion: bool = False, download: bool = True
               ) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of one MNIST / Fashion-MNIST split."""
    from torchvision import datasets

    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    name = cls.__name__
    raw = Path(data_dir) / name / "raw"
    missing = _missing(raw)
    if missing and not download:
        raise _not_found(name, raw, missing, "download is off")
    if missing:
        created = [d for d in (raw.parent, raw) if not d.exists()]
        try:
            cls(root=str(data_dir), train=train, download=True)
        except Exception as exc:  # network, disk or checksum trouble: all mean "not here"
            for folder in reversed(created):  # leave no empty folders behind a failed try
                try:
                    folder.rmdir()
                except OSError:
                    pass
            raise _not_found(name, raw, missing, f"download failed: {_reason(exc)}") from exc
        missing = _missing(raw)
        if missing:
            raise _not_found(name, raw, missing, "download left files missing")
    try:
        ds = cls(root=str(data_dir), train=train, download=False)
    except (AssertionError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise DataError(f"{_TITLES[name]} files in {raw} cannot be read ({exc!r}): replace "
                        f"them with the original IDX files from {_SOURCES[name]}") from exc
    images, labels = ds.data, ds.targets.long()
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{_TITLES[name]} files in {raw} hold images of shape "
                        f"{tuple(images.shape)} and {len(labels)} labels; expected (N, 28, 28) "
                        "images with one label each")
    return images, labels


def _subsample(n: int, limit: int, g: torch.Generator) -> Tensor:
    """A seeded random subset of size `limit` (all of them, shuffled, when 0 or too many)."""
    order = torch.randperm(n, generator=g)
    return order[:limit] if 0 < limit < n else order


def _normalize(images: Tensor, dataset: str) -> Tensor:
    mean, std = _STATS[dataset]
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


class MnistParams(Params):
    n_train: int = Field(10_000, ge=0, le=60_000, description=(
        "Training images to use, picked at random; 0 uses all 60,000."))
    n_test: int = Field(2_000, ge=0, le=10_000, description=(
        "Test images to use, picked at random; 0 uses all 10,000."))
    download: bool = Field(True, description=(
        "Download the files if they are missing (needs a network)."))


def _load(params: MnistParams, data_dir: Path, seed: int, fashion: bool = False
          ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Seeded subsamples of the train and test splits: ((images, labels), (images, labels))."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for train, limit in ((True, params.n_train), (False, params.n_test)):
        images, labels = read_split(data_dir, train=train, fashion=fashion,
                                    download=params.download)
        index = _subsample(len(labels), limit, g)
        out.append((images[index], labels[index]))
    return out[0], out[1]


# --- mnist_attributes ---------------------------------------------------------------------

ATTRIBUTE_TASKS = ["digit", "parity", "greater_than_4", "ink"]


@SUITES.register(
    "mnist_attributes",
    "Handwritten digits with four tasks: the digit, odd or even, above 4, and how much ink.",
    params=MnistParams, task_names=lambda p: list(ATTRIBUTE_TASKS), input_kind="image",
    reads_files=True, describe=lambda p: shapes_only(
        {"digit": ("classification", 10, "x"), "parity": ("binary", None, "x"),
         "greater_than_4": ("binary", None, "x"), "ink": ("regression", None, "x")},
        {"x": (1, 28, 28)}),
)
def build_mnist_attributes(params: MnistParams, *, seed: int, data_dir: Path) -> SuiteData:
    """digit: 10 classes; parity: 1 = odd; greater_than_4: 1 = digit 5..9; ink: mean pixel
    intensity in [0, 1], standardised with the training pool (target_scale = its std)."""
    (train_x, train_y), (test_x, test_y) = _load(params, data_dir, seed)
    ink_train = train_x.float().mean(dim=(1, 2)) / 255.0
    ink_test = test_x.float().mean(dim=(1, 2)) / 255.0
    mean, std = ink_train.mean().item(), ink_train.std().item()
    std = std if std > 0 else 1.0

    def split(images: Tensor, labels: Tensor, ink: Tensor) -> Split:
        return Split({"x": _normalize(images, "MNIST")}, {
            "digit": labels,
            "parity": (labels % 2).float(),
            "greater_than_4": (labels > 4).float(),
            "ink": (ink - mean) / std,
        })

    tasks = [
        TaskSpec("digit", "classification", num_classes=10, class_names=DIGIT_NAMES,
                 description="which digit"),
        TaskSpec("parity", "binary", class_names=["even", "odd"], description="is it odd?"),
        TaskSpec("greater_than_4", "binary", class_names=["0-4", "5-9"],
                 description="is it 5 or more?"),
        TaskSpec("ink", "regression", target_scale=std,
                 description="mean pixel intensity (how much ink)"),
    ]
    train = split(train_x, train_y, ink_train)
    return SuiteData(
        suite="mnist_attributes", tasks=tasks, train=train, val=train,
        test=split(test_x, test_y, ink_test), input_shapes={"x": (1, 28, 28)},
        input_kind="image", meta={"target_mean": {"ink": mean}},
    )


# --- multi_mnist --------------------------------------------------------------------------


class MultiMnistParams(MnistParams):
    shift: int = Field(2, ge=0, le=4, description=(
        "Random jitter in pixels of each digit's position; 0 puts them at fixed places."))


def overlay(left: Tensor, right: Tensor, shift: int, g: torch.Generator) -> Tensor:
    """Two uint8 digit batches (N, 28, 28) on a 36x36 canvas, pixel-wise max.

    The left digit's corner sits at (a, b), the right's at (8 - c, 8 - d), with a..d drawn
    from 0..shift: left digit up-left, right digit down-right, always overlapping.
    """
    n, room = len(left), MULTI_SIZE - 28
    offsets = torch.randint(0, shift + 1, (n, 4), generator=g)
    span, batch = torch.arange(28), torch.arange(n)[:, None, None]

    def place(digits: Tensor, row: Tensor, col: Tensor) -> Tensor:
        # One scatter for the whole batch: pixel (i, j) of image b goes to (row_b+i, col_b+j).
        canvas = torch.zeros(n, MULTI_SIZE, MULTI_SIZE, dtype=torch.uint8)
        canvas[batch, (row[:, None] + span)[:, :, None], (col[:, None] + span)[:, None, :]] = digits
        return canvas

    canvas_l = place(left, offsets[:, 0], offsets[:, 1])
    canvas_r = place(right, room - offsets[:, 2], room - offsets[:, 3])
    return torch.maximum(canvas_l, canvas_r)


@SUITES.register(
    "multi_mnist",
    "Two overlapping handwritten digits per image: read the left one and the right one.",
    params=MultiMnistParams, task_names=lambda p: ["left", "right"], input_kind="image",
    reads_files=True,
    describe=lambda p: shapes_only({s: ("classification", 10, "x") for s in ("left", "right")},
                                   {"x": (1, MULTI_SIZE, MULTI_SIZE)}),
)
def build_multi_mnist(params: MultiMnistParams, *, seed: int, data_dir: Path) -> SuiteData:
    """Sabour et al. style pairs on a 36x36 canvas (kept at 36x36, not resized, so strokes
    stay sharp). Each sampled image is a left digit once; its partner is another image of
    the same split picked by a seeded permutation."""
    (train_x, train_y), (test_x, test_y) = _load(params, data_dir, seed)
    g = torch.Generator().manual_seed(seed + 1)  # independent of the subsampling stream

    def split(images: Tensor, labels: Tensor) -> Split:
        partner = torch.randperm(len(labels), generator=g)
        pixels = overlay(images, images[partner], params.shift, g)
        return Split({"x": _normalize(pixels, "MNIST")},
                     {"left": labels, "right": labels[partner]})

    tasks = [TaskSpec(side, "classification", num_classes=10, class_names=DIGIT_NAMES,
                      description=f"the {side} digit") for side in ("left", "right")]
    train = split(train_x, train_y)
    return SuiteData(
        suite="multi_mnist", tasks=tasks, train=train, val=train, test=split(test_x, test_y),
        input_shapes={"x": (1, MULTI_SIZE, MULTI_SIZE)}, input_kind="image",
    )


# --- mnist_fashion ------------------------------------------------------------------------


@SUITES.register(
    "mnist_fashion",
    "Two tasks with two inputs: recognise a handwritten digit and a clothing item.",
    params=MnistParams, task_names=lambda p: ["digit", "fashion"], input_kind="image",
    reads_files=True,
    describe=lambda p: shapes_only({"digit": ("classification", 10, "digits"),
                                    "fashion": ("classification", 10, "fashion")},
                                   {"digits": (1, 28, 28), "fashion": (1, 28, 28)}),
)
def build_mnist_fashion(params: MnistParams, *, seed: int, data_dir: Path) -> SuiteData:
    """Input `digits` (MNIST) feeds task `digit`, input `fashion` (Fashion-MNIST) feeds task
    `fashion`; sample i pairs the i-th drawn image of each, N = the smaller of the two."""
    (dig_x, dig_y), (dig_tx, dig_ty) = _load(params, data_dir, seed)
    (fas_x, fas_y), (fas_tx, fas_ty) = _load(params, data_dir, seed + 1, fashion=True)

    def split(dx: Tensor, dy: Tensor, fx: Tensor, fy: Tensor) -> Split:
        n = min(len(dy), len(fy))
        return Split({"digits": _normalize(dx[:n], "MNIST"),
                      "fashion": _normalize(fx[:n], "FashionMNIST")},
                     {"digit": dy[:n], "fashion": fy[:n]})

    tasks = [
        TaskSpec("digit", "classification", num_classes=10, class_names=DIGIT_NAMES,
                 input="digits", description="which digit"),
        TaskSpec("fashion", "classification", num_classes=10, class_names=FASHION_NAMES,
                 input="fashion", description="which clothing item"),
    ]
    train = split(dig_x, dig_y, fas_x, fas_y)
    return SuiteData(
        suite="mnist_fashion", tasks=tasks, train=train, val=train,
        test=split(dig_tx, dig_ty, fas_tx, fas_ty),
        input_shapes={"digits": (1, 28, 28), "fashion": (1, 28, 28)}, input_kind="image",
    )
