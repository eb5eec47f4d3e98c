"""Torchvision backbones (ResNet-18/34/50, MobileNetV3-small) as the shared trunk.

A backbone is cut into *stages* (`n_stages`), the units `hard_sharing.shared_layers` counts:
ResNet: the stem (conv 7×7, BN, ReLU, max-pool), layer1, layer2, layer3, layer4; MobileNetV3-
small: its `features` grouped at each downsampling (0 | 1 | 2-3 | 4-8 | 9-12). The classifier
(`fc` / `classifier`) is never used: the task heads read the last stage's feature maps.

Inputs: 1-channel images are repeated to 3 channels in front of the first stage (so the
first conv keeps torchvision's shape and pretrained weights load unchanged). Small images:
below 64 pixels a side the stem keeps the resolution (stride 1), below 32 a ResNet also
skips its max-pool, so a 28×28 digit still ends as a 4×4 map rather than 1×1 (only strides
change: the weights fit either way).

Weights (`model.trunk.weights`): none (random init), `imagenet` (torchvision's ImageNet file,
only when already in the local torch cache: nothing is ever downloaded), or the path of a
state dict saved with `torch.save(model.state_dict(), path)`. Files are read with
`weights_only=True`; every path from a config goes through `resolve_weights_path`.
`model.trunk.trainable`: `all`, `last_block` (only the last stage trains) or `none` (frozen:
only the heads train); frozen stages also keep their batch-norm statistics (eval mode).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mtl_core.config import TrunkConfig

TITLES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
          "mobilenet_v3_small": "MobileNetV3-small"}
# torchvision's weights enum of each model (its IMAGENET1K_V1 member names the cached file).
WEIGHT_ENUMS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                "resnet50": "ResNet50_Weights", "mobilenet_v3_small": "MobileNet_V3_Small_Weights"}
_MOBILENET_GROUPS = ((0, 1), (1, 2), (2, 4), (4, 9), (9, 13))
_STAGE_NAMES = {"resnet": ("stem", "layer1", "layer2", "layer3", "layer4"),
                "mobilenet": ("stem", "block 1", "blocks 2–3", "blocks 4–8", "blocks 9–12")}
CheckErrors = list[tuple[str, str]]


class WeightsError(ValueError):
    """A weights setting that cannot be used; the message says why and what is allowed."""


def n_stages(name: str) -> int:
    from mtl_core.config import BACKBONE_STAGES

    return BACKBONE_STAGES[name]


def _family(name: str) -> str:
    return "mobilenet" if name.startswith("mobilenet") else "resnet"


def _dropped(name: str) -> tuple[str, ...]:
    """State-dict prefixes of the classifier, which the trunk does not use."""
    return ("classifier.",) if _family(name) == "mobilenet" else ("fc.",)


def adaptation(in_shape: tuple[int, ...]) -> int:
    """How much of the stem's downsampling to drop: 0 (none) for images of 64 px a side or
    more, 1 (stem stride 1) from 32, 2 (and, for ResNets, no max-pool) below."""
    side = min(in_shape[-2:])
    return 0 if side >= 64 else 1 if side >= 32 else 2


def _torchvision_model(name: str) -> nn.Module:
    from torchvision import models

    return getattr(models, name)(weights=None)


def _split(name: str, model: nn.Module, adapt: int) -> list[nn.Module]:
    """The model's stages, with the small-input stride changes applied."""
    if _family(name) == "mobilenet":
        features = model.features  # type: ignore[attr-defined]
        if adapt >= 1:
            features[0][0].stride = (1, 1)
        return [nn.Sequential(*features[a:b]) for a, b in _MOBILENET_GROUPS]
    m = model
    if adapt >= 1:
        m.conv1.stride = (1, 1)  # type: ignore[union-attr]
    pool = nn.Identity() if adapt >= 2 else m.maxpool
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, pool)  # type: ignore[arg-type]
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4]  # type: ignore[list-item]


@lru_cache(maxsize=32)
def stage_shapes(name: str, in_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Per-sample output shape of every stage for inputs of `in_shape` (worked out on the
    meta device: no memory, no compute)."""
    with torch.device("meta"):
        stages = _split(name, _torchvision_model(name).eval(), adaptation(in_shape))
        x = torch.empty(2, 3, *in_shape[-2:])
        shapes = []
        for stage in stages:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    return tuple(shapes)


@lru_cache(maxsize=8)
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The trunk's state-dict keys and shapes (classifier left out), from a meta model."""
    with torch.device("meta"):
        model = _torchvision_model(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith(_dropped(name))}


# --- weights --------------------------------------------------------------------------------


def resolve_weights_path(value: str) -> Path:
    """The file a `model.trunk.weights` path names. Every weights path from a config goes
    through here, the place to refuse paths outside the allowed roots (the trust boundary)."""
    return Path(os.path.expanduser(value))


def imagenet_file(name: str) -> tuple[Path, str]:
    """(where torchvision caches the ImageNet weights of `name`, where they come from)."""
    from torchvision import models

    url = getattr(models, WEIGHT_ENUMS[name]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def _weights_file(name: str, weights: str) -> Path:
    if weights == "imagenet":
        path, url = imagenet_file(name)
        if not path.is_file():
            raise WeightsError(
                f"the ImageNet weights of {name} are not in the local torch cache (no {path}); "
                f"nothing is downloaded here: put the file from {url} there, or give the path "
                "of a local state dict file, or leave weights empty (random init)")
        return path
    path = resolve_weights_path(weights)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}: give the path of a state dict file "
                           "(torch.save(model.state_dict(), path)), imagenet, or leave it empty")
    return path


def _read(path: Path) -> dict[str, Tensor]:
    obj = None
    for mmap in (True, False):  # mmap: checking a 100 MB file reads only its index
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # noqa: BLE001 (pickle, zip and format errors alike)
            error = exc
    else:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
        raise WeightsError(f"{path} is not a state dict file torch.load can read with "
                           f"weights_only=True ({reason})")
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
                           "of parameter names to tensors, as model.state_dict() returns)")
    return dict(obj)


def _check_state(name: str, state: Mapping[str, Tensor], path: Path) -> None:
    expected = expected_shapes(name)
    got = {k: v for k, v in state.items() if not k.startswith(_dropped(name))}
    # Older checkpoints have no BN step counters; they are not weights.
    missing = sorted(k for k in set(expected) - set(got)
                     if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(got[k].shape)} in the "
                     f"file, {expected[k]} in {name})")
    raise WeightsError(f"{path} is not a {TITLES[name]} state dict: {'; '.join(parts)}; "
                       f"use a file saved from torchvision's {name}")


def load_weights(name: str, weights: str) -> dict[str, Tensor]:
    """The checked state dict (classifier keys dropped) of a weights setting."""
    path = _weights_file(name, weights)
    state = _read(path)
    _check_state(name, state, path)
    return {k: v for k, v in state.items() if not k.startswith(_dropped(name))}


@lru_cache(maxsize=32)
def _cached_check(name: str, weights: str, path: str, mtime_ns: int, size: int) -> str | None:
    try:
        load_weights(name, weights)
    except WeightsError as exc:
        return str(exc)
    return None


def weights_problem(name: str, weights: str) -> str | None:
    """Why `weights` cannot be used for backbone `name` (None when it can). Cached per file
    version: the Train page validates on every widget change."""
    try:
        path = _weights_file(name, weights)
        stat = path.stat()
    except (WeightsError, OSError) as exc:
        return str(exc)
    return _cached_check(name, weights, str(path), stat.st_mtime_ns, stat.st_size)


def check_trunk(trunk: TrunkConfig, suite: str, input_kind: str | None) -> CheckErrors:
    """parse_config's checks of a backbone trunk: an image suite, usable weights."""
    errors: CheckErrors = []
    if input_kind != "image":
        errors.append(("model.trunk.type", f"a {trunk.type} backbone needs an image suite; "
                       f"{suite!r} has vector inputs: use mlp"))
    if trunk.weights is not None:
        if not trunk.weights.strip():
            errors.append(("model.trunk.weights", "empty path: give imagenet, the path of a "
                           "state dict file, or no weights (random init)"))
        else:
            problem = weights_problem(trunk.type, trunk.weights)
            if problem:
                errors.append(("model.trunk.weights", problem))
    return errors


# --- stages -------------------------------------------------------------------------------


class BackboneStage(nn.Module):
    """One stage of a torchvision backbone; `group`/`index` let the diagram draw a run of
    stages as one box."""

    def __init__(self, name: str, index: int, net: nn.Module, frozen: bool, grey: bool,
                 out_shape: tuple[int, ...], weights: str | None) -> None:
        super().__init__()
        self.net, self.frozen, self.grey, self.index = net, frozen, grey, index
        self.group = TITLES[name]
        if frozen:
            for p in self.net.parameters():
                p.requires_grad_(False)
        what = _STAGE_NAMES[_family(name)][index]
        self.note = ("ImageNet weights" if weights == "imagenet" else
                     "weights from file" if weights else "random init")
        self.label = (f"{self.group} {what} → {'×'.join(map(str, out_shape))}"
                      + (" · frozen" if frozen else ""))

    def forward(self, x: Tensor) -> Tensor:
        if self.grey:
            x = x.expand(-1, 3, -1, -1)  # grey → the 3 channels the first conv expects
        return self.net(x)

    def train(self, mode: bool = True) -> BackboneStage:
        super().train(mode)
        if self.frozen:
            self.net.eval()  # a frozen stage keeps its batch-norm statistics too
        return self


def build_stages(name: str, indices: list[int], in_shape: tuple[int, ...],
                 weights: str | None, trainable: str) -> list[BackboneStage]:
    """Stages `indices` of one freshly built backbone for inputs of shape `in_shape` (the
    backbone's input), with the weights loaded and `trainable` applied."""
    if len(in_shape) != 3 or in_shape[0] not in (1, 3):
        raise ValueError(f"a {name} trunk needs 1- or 3-channel images (channels, height, "
                         f"width); got inputs of shape {in_shape}")
    model = _torchvision_model(name)
    meta = next(model.parameters()).is_meta  # the diagram builds on meta: nothing to load
    if weights and not meta:
        try:
            model.load_state_dict(load_weights(name, weights), strict=False)
        except WeightsError as exc:
            raise ValueError(f"model.trunk.weights: {exc}") from None
    parts = _split(name, model, adaptation(in_shape))
    shapes = stage_shapes(name, tuple(in_shape))
    last = n_stages(name) - 1
    out = []
    for i in indices:
        frozen = trainable == "none" or (trainable == "last_block" and i != last)
        out.append(BackboneStage(name, i, parts[i], frozen, grey=i == 0 and in_shape[0] == 1,
                                 out_shape=shapes[i], weights=weights))
    return out
