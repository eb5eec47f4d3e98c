"""Per-task losses and metrics, computed on the device (callers decide when to sync)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_core import task_kinds
from mtl_core.data.base import TaskSpec

# Which direction is better for each metric (used for early stopping, Δm and the pages).
HIGHER_IS_BETTER = {"accuracy": True, "r2": True, "loss": False, "mse": False, "mae": False,
                    **task_kinds.HIGHER_IS_BETTER}


def task_loss(spec: TaskSpec, output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for classification (per pixel for dense classification),
    BCE-with-logits for binary, MSE for regression, smooth L1 + GIoU for boxes, L1 per pixel
    for dense regression."""
    if spec.kind in ("classification", "dense_classification"):
        return F.cross_entropy(output, target)
    if spec.kind == "binary":
        return F.binary_cross_entropy_with_logits(output, target)
    if spec.kind == "box":
        return task_kinds.box_loss(output, target)
    if spec.kind == "dense_regression":
        return F.l1_loss(output, target)
    return F.mse_loss(output, target)


def predict(spec: TaskSpec, output: Tensor) -> Tensor:
    """Class id for classification and binary tasks, the value for regression, the box
    [x0, y0, x1, y1] for boxes, the class map / value map for dense tasks."""
    if spec.kind == "classification":
        return output.argmax(dim=-1)
    if spec.kind == "dense_classification":
        return output.argmax(dim=1)
    if spec.kind == "binary":
        return (output > 0).long()
    if spec.kind == "box":
        return task_kinds.decode_box(output)
    return output


def task_metrics(spec: TaskSpec, output: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Scalar tensors: loss plus accuracy (classification/binary), mse, mae, r2
    (regression), iou, acc50 (box), miou, pixel_acc (dense classification) or abs_rel, rmse
    (dense regression)."""
    out = {"loss": task_loss(spec, output, target)}
    if spec.kind == "box":
        out.update(task_kinds.box_metrics(output, target))
    elif spec.kind == "dense_classification":
        out.update(task_kinds.dense_classification_metrics(output, target))
    elif spec.kind == "dense_regression":
        out.update(task_kinds.dense_regression_metrics(output, target))
    elif spec.kind in ("classification", "binary"):
        out["accuracy"] = (predict(spec, output) == target.long()).float().mean()
    else:
        err = output - target
        out["mse"] = (err**2).mean()
        out["mae"] = err.abs().mean()
        var = ((target - target.mean()) ** 2).mean()
        out["r2"] = 1 - out["mse"] / var.clamp_min(1e-12)
    return out


def display_output(spec: TaskSpec, output: Tensor) -> Tensor:
    """What the Predictions page shows: class id, P(class 1) for binary, the value for
    regression, the box for boxes, the class map / value map (2 decimals) for dense tasks."""
    if spec.kind == "binary":
        return torch.sigmoid(output)
    if spec.kind in ("box", "dense_regression"):
        return torch.round(predict(spec, output) * 1000) / 1000
    return predict(spec, output)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) counts; rows are true classes, columns predicted classes."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def delta_m(metrics: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]],
            metric_of: dict[str, str]) -> float:
    """Multi-task improvement Δm (Maninis et al. 2019), in percent.

    Δm = (100/T) Σ_t (−1)^{δ_t} (M_t − M_t^STL) / M_t^STL, δ_t = 1 when higher is better
    (the convention of Navon et al., Nash-MTL): lower is better, so a negative Δm means the
    multi-task model beats its single-task baselines on average. `metric_of` names the metric
    compared for each task (e.g. accuracy, mse).
    """
    terms = []
    for task, name in metric_of.items():
        m, base = metrics[task][name], baselines[task][name]
        if base == 0:
            raise ValueError(f"baseline {name} of task {task!r} is 0: Δm is undefined")
        sign = -1.0 if HIGHER_IS_BETTER[name] else 1.0
        terms.append(sign * (m - base) / base)
    return 100.0 * sum(terms) / len(terms)


# --- spread over seeds (stacked runs, `replicas: K`) ----------------------------------------

# Two-sided 95 % quantiles t_{0.975, df} of Student's t for df = 1..30 (beyond: 1.96 + 2.4/df,
# within 0.002 of the exact value), so no statistics package is needed for one interval.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df ≥ 1); got df = {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value)."""
    if not values:
        raise ValueError("mean_sd needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: list[float]) -> tuple[float, float]:
    """The 95 % t-interval of the mean: mean ± t_{0.975, n−1} · sd / √n (n ≥ 2)."""
    mean, sd = mean_sd(values)
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half
