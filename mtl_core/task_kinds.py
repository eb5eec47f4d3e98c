"""Losses and metrics of the vision task kinds: `box`, `dense_classification`,
`dense_regression` (`mtl_core.metrics` dispatches here; everything stays on the device).

box: the head's 4 raw outputs are decoded to a box that is always well formed: centre
(sigmoid, in [0, 1]) and size (sigmoid, in [0, 1]), then [x0, y0, x1, y1] = centre ∓ size/2.
Loss: smooth L1 on the corners plus (1 − GIoU) (Rezatofighi et al. 2019: unlike IoU it
still has a gradient when the boxes do not overlap). Metrics: `iou` (mean IoU) and `acc50`
(the share of boxes with IoU ≥ 0.5, the PASCAL VOC criterion).
dense_classification: per-pixel cross-entropy; `pixel_acc` and `miou` (IoU per class over
all pixels of the set, averaged over the classes present in the targets or predictions).
dense_regression: per-pixel L1 loss; `abs_rel` (mean |pred − true| / true, the depth
benchmarks' measure: targets must be positive) and `rmse`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HIGHER_IS_BETTER = {"iou": True, "acc50": True, "miou": True, "pixel_acc": True,
                    "abs_rel": False, "rmse": False}
EPS = 1e-7


def decode_box(output: Tensor) -> Tensor:
    """(B, 4) raw head outputs -> (B, 4) boxes [x0, y0, x1, y1] with x0 ≤ x1, y0 ≤ y1."""
    centre, size = torch.sigmoid(output[:, :2]), torch.sigmoid(output[:, 2:])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row IoU and GIoU of two (B, 4) box tensors [x0, y0, x1, y1]."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp_min(0).prod(dim=1)
    union = area_a + area_b - inter
    iou = inter / (union + EPS)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    giou = iou - (hull - union) / (hull + EPS)
    return iou, giou


def box_loss(output: Tensor, target: Tensor) -> Tensor:
    pred = decode_box(output)
    _, giou = box_iou(pred, target)
    return F.smooth_l1_loss(pred, target, beta=0.05) + (1 - giou).mean()


def box_metrics(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    iou, _ = box_iou(decode_box(output), target)
    return {"iou": iou.mean(), "acc50": (iou >= 0.5).float().mean()}


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """IoU per class over all pixels, averaged over the classes that occur in `target` or
    `pred` (a class absent from both says nothing)."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    confusion = torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes,
                                                                           num_classes)
    inter = confusion.diagonal().float()
    union = confusion.sum(0).float() + confusion.sum(1).float() - inter
    present = union > 0
    return (inter[present] / union[present]).mean()


def dense_classification_metrics(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    pred = output.argmax(dim=1)
    return {"miou": mean_iou(pred, target, output.shape[1]),
            "pixel_acc": (pred == target).float().mean()}


def dense_regression_metrics(output: Tensor, target: Tensor) -> dict[str, Tensor]:
    err = output - target
    return {"abs_rel": (err.abs() / target.abs().clamp_min(EPS)).mean(),
            "rmse": (err ** 2).mean().sqrt()}
