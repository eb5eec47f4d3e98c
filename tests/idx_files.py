"""Tiny fake MNIST / Fashion-MNIST files in torchvision's raw layout, for offline tests.

    raw = write_fake_mnist(tmp_path)                 # tmp_path/MNIST/raw/*-ubyte
    raw = write_fake_mnist(tmp_path, fashion=True)   # tmp_path/FashionMNIST/raw/*-ubyte
    load_suite(DataConfig(suite="mnist_attributes"), seed=0, root=tmp_path)

Images are learnable: label k draws a bright 4x6 block at a place of its own (different
places for Fashion) over faint noise, so a small model can fit them in a few steps. Labels
are balanced (0..9 repeated) and shuffled with `seed`.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # IDX: uint8, 3 dims / 1 dim


def fake_images(labels: torch.Tensor, fashion: bool = False, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 28, 28): faint noise plus a block whose position encodes the label."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (len(labels), 28, 28), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        row, col = 4 + 12 * (k // 5), 2 + 5 * (k % 5)
        if fashion:
            row, col = col, row  # transposed layout: Fashion images differ from digits
        images[i, row:row + 6, col:col + 4] = 220
    return images


def _write(path: Path, header: bytes, payload: bytes, compressed: bool) -> None:
    if compressed:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(header + payload)
    else:
        path.write_bytes(header + payload)


def write_fake_mnist(root: Path, n_train: int = 60, n_test: int = 30, fashion: bool = False,
                     seed: int = 0, compressed: bool = False) -> Path:
    """Write the four IDX files under `root/MNIST/raw` (or `root/FashionMNIST/raw`) and
    return that raw folder. `compressed` writes only the `.gz` files, as downloads come."""
    raw = Path(root) / ("FashionMNIST" if fashion else "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)].to(torch.uint8)
        images = fake_images(labels, fashion, seed=2 * seed + (prefix == "t10k"))
        _write(raw / f"{prefix}-images-idx3-ubyte", struct.pack(">IIII", IMAGE_MAGIC, n, 28, 28),
               images.numpy().tobytes(), compressed)
        _write(raw / f"{prefix}-labels-idx1-ubyte", struct.pack(">II", LABEL_MAGIC, n),
               labels.numpy().tobytes(), compressed)
    return raw
