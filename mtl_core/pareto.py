"""The one definition of the Pareto front used everywhere (weight sweeps, the geometry page,
the lessons' text: `DEFINITION`).

A point is on the front when no other point is at least as good on every objective and
strictly better on at least one. Equal points therefore do not dominate each other: ties are
all on the front. A point with a NaN is never on the front and never dominates.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFINITION = ("a run is on the Pareto front when no other run is at least as good on both "
              "tasks and strictly better on at least one")


def dominates(a: Sequence[float], b: Sequence[float], higher_is_better: Sequence[bool]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and strictly better on one
    (False when either has a NaN)."""
    pairs = [(x, y) if h else (-x, -y) for x, y, h in zip(a, b, higher_is_better, strict=True)]
    if any(np.isnan(x) or np.isnan(y) for x, y in pairs):
        return False
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_mask(values: np.ndarray | Sequence[Sequence[float]],
                higher_is_better: Sequence[bool] | None = None) -> np.ndarray:
    """Boolean mask (n,) of the non-dominated rows of `values` (n, k). Objectives are
    minimised unless `higher_is_better[k]` says otherwise. Two objectives take a sort
    (n log n, for the 10⁵ grid points of the geometry page); more take the n² comparison."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be a 2-D array (points × objectives), got shape {v.shape}")
    n, k = v.shape
    if higher_is_better is not None:
        if len(higher_is_better) != k:
            raise ValueError(f"higher_is_better needs one entry per objective ({k}), "
                             f"got {len(higher_is_better)}")
        v = v * np.where(np.asarray(higher_is_better, dtype=bool), -1.0, 1.0)
    usable = ~np.isnan(v).any(axis=1)
    mask = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(usable)
    if idx.size == 0:
        return mask
    u = v[idx]
    if k == 2:
        mask[idx] = _front_2d(u)
    else:
        le = (u[:, None, :] <= u[None, :, :]).all(axis=2)  # le[j, i]: j at least as good as i
        lt = (u[:, None, :] < u[None, :, :]).any(axis=2)
        mask[idx] = ~(le & lt).any(axis=0)
    return mask


def _front_2d(u: np.ndarray) -> np.ndarray:
    order = np.lexsort((u[:, 1], u[:, 0]))  # by f1, then f2
    f1, f2 = u[order, 0], u[order, 1]
    # Start of each run of equal f1 and the best f2 among all strictly smaller f1.
    new_group = np.r_[True, f1[1:] != f1[:-1]]
    group_id = np.cumsum(new_group) - 1
    group_first = np.flatnonzero(new_group)
    group_min = f2[group_first]  # sorted by f2 inside a group: its first is its minimum
    prefix = np.minimum.accumulate(group_min)
    before = np.r_[np.inf, prefix[:-1]]  # min f2 over groups with a strictly smaller f1
    dominated = (before[group_id] <= f2) | (group_min[group_id] < f2)
    out = np.empty(len(u), dtype=bool)
    out[order] = ~dominated
    return out


def pareto_front(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]
                 ) -> list[int]:
    """Indices (ascending) of the points on the front (see the module docstring)."""
    if len(points) == 0:
        return []
    return [int(i) for i in np.flatnonzero(pareto_mask(points, higher_is_better))]
