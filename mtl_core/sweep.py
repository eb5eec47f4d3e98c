"""Loss-weight sweeps: how to choose the weights w_i with the validation set.

A sweep trains the same config once per point of a weight grid (static weighting, weights on
the simplex: all ≥ 0, summing to 1), optionally plus adaptive methods with uniform weights as
extra points. Its runs go through the jobs queue, so they run in parallel up to
`MTL_MAX_JOBS`. The result is the Pareto front of the tasks' validation metrics and the grid
point chosen by validation.

Stacking (mtl_core.stacked_sweep): the grid points share everything but their weights, so the
first worker to claim one of them also claims the other queued ones and trains them all as one
stacked model (slot = (point, seed), each with its own weights: Σ_s Σ_i w_{s,i} L_{s,i}),
writing each slot's rows, snapshots, checkpoints, status and summary into its point's own run
through RunStore's public API. The store contract does not change: one run folder per point,
its owner, its status, tagged as below; the carried points count as one active run (the
carrier's) in the fair queue. Points that cannot stack (adaptive extra methods; a point a
second worker claimed first) train as separate runs, as before; the table, the front, the
pages and the CLI read the runs and cannot tell the difference.

Tagging: a sweep has a short id (6 hex digits) and each of its runs is named
"<label> #<sweep id>", e.g. "sweep w=0.25/0.75 #3fa2c1" or "sweep method=pcgrad #3fa2c1". The
store needs no new column; `sweep_runs` finds the runs by that suffix, and the weights and
method shown are read from each run's stored config, never parsed from the name.

Metrics: each task's primary metric (`mtl_core.baselines.primary_metric`: accuracy for
classification/binary, MSE for regression). Validation values are those of the model the
test metrics belong to: the last evaluation, or the best one when early stopping restored it.
"""
from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtl_core.baselines import primary_metric
from mtl_core.config import ExperimentConfig, TaskConfig, parse_config
from mtl_core.metrics import HIGHER_IS_BETTER, mean_sd
from mtl_core.owners import OPERATOR, Actor
from mtl_core.pareto import dominates, pareto_front
from mtl_core.stacked_sweep import sweep_id_of, sweep_runs  # noqa: F401 - re-exported
from mtl_core.store import LIVE_STATUSES, RunInfo, RunStore

MAX_SWEEP_RUNS = 200  # a guard against a grid nobody meant to train (3 tasks, N=20 is 210)


# --- the grid and the configs --------------------------------------------------------------


def weight_grid(n_tasks: int, n: int) -> list[tuple[float, ...]]:
    """Weights on the simplex with step 1/(n−1): for 2 tasks (w1, 1 − w1) with w1 going
    0 → 1 in n points; for more, every (k_1, ..., k_T)/(n−1) with k_i ≥ 0 integers summing to
    n − 1 (C(n+T−2, T−1) points), in lexicographic order of (k_1, ..., k_T). Each weight is an
    exact fraction k/(n−1), so (0.25, 0.75) is exactly that; vertices like (1, 0) are included
    (one positive weight is enough to train)."""
    if n_tasks < 2:
        raise ValueError(f"a weight sweep needs at least 2 tasks (got {n_tasks})")
    if n < 2:
        raise ValueError(f"a weight sweep needs at least 2 points per task (got N={n})")
    steps = n - 1
    points: list[tuple[float, ...]] = []

    def fill(prefix: tuple[int, ...], left: int) -> None:
        if len(prefix) == n_tasks - 1:
            points.append(tuple(k / steps for k in (*prefix, left)))
            return
        for k in range(left + 1):
            fill((*prefix, k), left - k)

    fill((), steps)
    return points


def grid_size(n_tasks: int, n: int) -> int:
    """len(weight_grid(n_tasks, n)), without building it."""
    return math.comb(n - 1 + n_tasks - 1, n_tasks - 1)


def weights_label(weights: Iterable[float]) -> str:
    return "w=" + "/".join(f"{w:.3g}" for w in weights)


def sweep_configs(cfg: ExperimentConfig | dict[str, Any], n: int,
                  extra_methods: Sequence[str] = ()) -> list[ExperimentConfig]:
    """One validated config per grid point (static weighting, named "sweep w=0.25/0.75"),
    then one per extra method with uniform weights 1/T, the centre of the simplex, so its
    points sit on the same scale as the grid's (named "sweep method=pcgrad")."""
    cfg = parse_config(cfg)
    tasks = list(cfg.task_weights())
    size = grid_size(len(tasks), n) if len(tasks) >= 2 and n >= 2 else 0
    if size + len(extra_methods) > MAX_SWEEP_RUNS:
        raise ValueError(f"this sweep would train {size + len(extra_methods)} runs; "
                         f"at most {MAX_SWEEP_RUNS}: lower N")
    for method in extra_methods:
        if method == "static":
            raise ValueError("static is what the grid already trains; extra methods are "
                             "adaptive ones such as uncertainty, pcgrad or mgda")
    out = [_variant(cfg, tasks, weights, "static", f"sweep {weights_label(weights)}")
           for weights in weight_grid(len(tasks), n)]
    uniform = tuple(1.0 / len(tasks) for _ in tasks)
    out += [_variant(cfg, tasks, uniform, method, f"sweep method={method}")
            for method in dict.fromkeys(extra_methods)]
    return out


def _variant(cfg: ExperimentConfig, tasks: list[str], weights: Sequence[float], method: str,
             name: str) -> ExperimentConfig:
    variant = cfg.model_copy(deep=True)
    variant.name = name
    variant.tasks = [TaskConfig(name=t, weight=w) for t, w in zip(tasks, weights, strict=True)]
    if method != cfg.weighting.method:
        variant.weighting.params = {}  # the base method's params would not fit another one
    variant.weighting.method = method
    return parse_config(variant)


# --- submitting and finding ---------------------------------------------------------------


@dataclass(frozen=True)
class SweepSubmission:
    sweep_id: str
    run_ids: list[str]


def submit_sweep(cfg: ExperimentConfig | dict[str, Any], n: int,
                 runs_dir: str | Path | None = None,
                 extra_methods: Sequence[str] = (), owner: Actor = OPERATOR) -> SweepSubmission:
    """Validate every config first (nothing is queued if one fails, or if they do not fit in
    the owner's queue quota), then queue them all through mtl_core.jobs, tagged with a fresh
    sweep id."""
    configs = sweep_configs(cfg, n, extra_methods)
    store = RunStore(runs_dir)
    store.check_queue_room(owner, len(configs))
    taken = set(list_sweeps(store))
    sweep_id = secrets.token_hex(3)
    while sweep_id in taken:
        sweep_id = secrets.token_hex(3)
    return SweepSubmission(sweep_id, _queue_tagged(configs, sweep_id, store.runs_dir, owner))


def add_methods(store: RunStore, sweep_id: str, methods: Sequence[str],
                owner: Actor = OPERATOR) -> list[str]:
    """Queue adaptive methods as extra points of an existing sweep (the sweep's config with
    equal weights, tagged like its other runs so `sweep_table` counts them). Methods the
    sweep already has are skipped. Returns the new run ids."""
    runs = sweep_runs(store, sweep_id)
    have = {r.method for r in runs}
    wanted = [m for m in dict.fromkeys(methods) if m not in have]
    if not runs or not wanted:
        return []
    variants = sweep_configs(runs[0].config, 2, wanted)[-len(wanted):]  # validated first
    store.check_queue_room(owner, len(variants))
    return _queue_tagged(variants, sweep_id, store.runs_dir, owner)


def _queue_tagged(configs: list[ExperimentConfig], sweep_id: str, runs_dir: Path,
                  owner: Actor = OPERATOR) -> list[str]:
    """Name each config with the sweep's tag (" #id"), queue them all at once (one index
    transaction: the first worker to claim a point finds every other one to stack,
    mtl_core.stacked_sweep), then dispatch workers (mtl_core.jobs). With a Ray executor each
    point goes through jobs.submit, which checks the cluster and launches its task."""
    from mtl_core import jobs

    for variant in configs:  # validated by sweep_configs
        variant.name = f"{variant.name} #{sweep_id}"
    if jobs.ray_address() is not None:  # on Ray each point is a task of its own (no stacking)
        return [jobs.submit(variant, runs_dir, owner=owner) for variant in configs]
    run_ids = RunStore(runs_dir).create_runs(configs, owner=owner)
    jobs.dispatch(runs_dir)
    return run_ids


def list_sweeps(store: RunStore) -> list[str]:
    """Sweep ids, newest first."""
    return list(dict.fromkeys(i for run in store.list_runs()
                              if (i := sweep_id_of(run.name)) is not None))


def sweep_progress(store: RunStore, sweep_id: str) -> dict[str, int]:
    """{status: number of runs} for the sweep."""
    counts: dict[str, int] = {}
    for run in sweep_runs(store, sweep_id):
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts


def wait_for_sweep(sweep_id: str, runs_dir: str | Path | None = None,
                   timeout: float | None = None, poll_s: float = 0.5,
                   on_progress: Callable[[dict[str, int]], None] | None = None
                   ) -> dict[str, int]:
    """Block until no run of the sweep is live (or `timeout` s passed); returns the final
    counts. Re-dispatches while waiting, so a queue outliving its idle workers still drains."""
    from mtl_core import jobs

    store = RunStore(runs_dir)
    start, last = time.monotonic(), None
    while True:
        counts = sweep_progress(store, sweep_id)
        if counts != last and on_progress is not None:
            on_progress(counts)
        last = counts
        if not any(counts.get(s) for s in LIVE_STATUSES):
            return counts
        if timeout is not None and time.monotonic() - start > timeout:
            return counts
        if counts.get("queued"):
            jobs.dispatch(store.runs_dir)
        time.sleep(poll_s)


# --- the front and the choice -------------------------------------------------------------


def chosen_by_validation(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]
                         ) -> int | None:
    """The index of the best point by its mean normalised validation metric: each task's
    metric is min-max scaled over the points to [0, 1] with 1 = best (a task where all points
    tie scores 1), then averaged. Scaling makes an accuracy and an MSE comparable, and the
    chosen point is always on the Pareto front. Points with a NaN are skipped; the first
    wins a tie; None when no point is usable. (A total validation loss would depend on the
    very weights being chosen, so it is not used.)"""
    usable = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    if not usable:
        return None
    scores = {i: 0.0 for i in usable}
    for k, higher in enumerate(higher_is_better):
        values = [points[i][k] for i in usable]
        lo, hi = min(values), max(values)
        for i in usable:
            v = points[i][k]
            if hi == lo:
                scores[i] += 1.0
            else:
                scores[i] += (v - lo) / (hi - lo) if higher else (hi - v) / (hi - lo)
    return max(usable, key=lambda i: (scores[i], -i))


@dataclass
class HeldOutVerdict:
    """What the test set says about the point validation chose."""

    agrees: bool
    text: str
    beaten_by: list[str]  # run ids of grid points that dominate the chosen one on test


def check_on_test(table: pd.DataFrame) -> HeldOutVerdict | None:
    """Compare the validation choice with the test set: is the chosen grid point dominated on
    test by another grid point, and would the same rule applied to test pick it again? None
    until the chosen run has test metrics."""
    tasks = table.attrs.get("tasks") or []
    chosen = table[table["chosen"]] if "chosen" in table else table.iloc[0:0]
    if chosen.empty or not tasks:
        return None
    directions = [table.attrs["higher_is_better"][t] for t in tasks]
    cols = [f"test_{t}" for t in tasks]
    me = chosen.iloc[0]
    if any(math.isnan(me[c]) for c in cols):
        return None
    grid = table[(table["method"] == "static") & table[cols].notna().all(axis=1)]

    def label(row: pd.Series) -> str:
        return "/".join(f"{row[f'w_{t}']:.3g}" for t in tasks)

    beaten_by = [r for _, r in grid.iterrows() if r["run_id"] != me["run_id"]
                 and dominates([r[c] for c in cols], [me[c] for c in cols], directions)]
    pick = chosen_by_validation(grid[cols].to_numpy(dtype=float).tolist(), directions)
    test_pick = grid.iloc[pick] if pick is not None else me
    if beaten_by:
        text = (f"Test disagrees with validation: on the test set the chosen weights "
                f"({label(me)}) are beaten by {', '.join(label(r) for r in beaten_by)} "
                "(at least as good on every task and strictly better on one).")
        return HeldOutVerdict(False, text, [str(r["run_id"]) for r in beaten_by])
    if test_pick["run_id"] != me["run_id"]:
        text = (f"Test partly disagrees: the chosen weights ({label(me)}) are still on the "
                f"test front, but the same rule applied to the test set would pick "
                f"{label(test_pick)}.")
        return HeldOutVerdict(False, text, [])
    return HeldOutVerdict(True, f"Test agrees with validation: on the test set the chosen "
                             f"weights ({label(me)}) are on the front and the same rule "
                             "would pick them again.", [])


# --- the table ----------------------------------------------------------------------------


def _val_metrics(run: RunInfo) -> dict[str, dict[str, float]]:
    """Validation metrics of the model whose test metrics are reported."""
    patience = run.config.get("optim", {}).get("early_stopping", {}).get("patience", 0)
    if patience and run.summary.get("best_val"):
        return run.summary["best_val"]
    return run.summary.get("val") or {}


def _seed_sd(run: RunInfo, task: str, metric: str) -> float:
    """The sd over a stacked run's seeds of `task`'s val metric (NaN for one seed): the
    Pareto front uses the means, drawn with these as error bars."""
    patience = run.config.get("optim", {}).get("early_stopping", {}).get("patience", 0)
    key = "best_val" if patience else "val"
    values = [float(v) for e in run.summary.get("replicas") or [] if not e.get("diverged")
              for v in [((e.get(key) or {}).get(task) or {}).get(metric)] if v is not None]
    return mean_sd(values)[1] if len(values) > 1 else float("nan")


def sweep_table(store: RunStore, sweep_id: str) -> pd.DataFrame:
    """One row per run of the sweep, in submission order. Columns: run_id, name, method,
    status, w_<task> (configured weights), val_<task> and test_<task> (primary metric, NaN
    until finished), on_front (on the Pareto front of the finished runs' val metrics, extra
    methods included), chosen (the grid point chosen by validation; extra methods are not
    candidates, they are not a weight one could set; so an extra method that beats every
    grid point can leave the chosen one off the front). `df.attrs` holds "tasks", "metrics"
    ({task: metric}), "higher_is_better" ({task: bool}) and "sweep_id". valsd_<task>: the sd
    of val_<task> over a stacked run's seeds (NaN for one seed)."""
    runs = sweep_runs(store, sweep_id)
    tasks = [t["name"] for t in runs[0].config.get("tasks") or []] if runs else []
    metrics: dict[str, str] = {}
    for run in runs:  # metric names come from whichever run has logged some
        for task, values in (run.summary.get("test") or _val_metrics(run)).items():
            metrics.setdefault(task, primary_metric(values))

    rows = []
    for run in runs:
        weights = {t["name"]: t["weight"] for t in run.config.get("tasks") or []}
        val, test = _val_metrics(run), run.summary.get("test") or {}
        row: dict[str, Any] = {"run_id": run.id, "name": run.name, "method": run.method,
                               "status": run.status}
        for task in tasks:
            row[f"w_{task}"] = weights.get(task, float("nan"))
        finished = run.status == "finished"
        for split, values in (("val", val), ("test", test)):
            for task in tasks:
                value = (values.get(task) or {}).get(metrics.get(task, ""))
                row[f"{split}_{task}"] = float(value) if finished and value is not None \
                    else float("nan")
        for task in tasks:  # a stacked run: the spread of the val metric over its seeds
            row[f"valsd_{task}"] = _seed_sd(run, task, metrics.get(task, "")) if finished \
                else float("nan")
        rows.append(row)

    frame = pd.DataFrame(rows, columns=["run_id", "name", "method", "status",
                                        *(f"w_{t}" for t in tasks),
                                        *(f"val_{t}" for t in tasks),
                                        *(f"test_{t}" for t in tasks),
                                        *(f"valsd_{t}" for t in tasks)])
    directions = [HIGHER_IS_BETTER[metrics[t]] if t in metrics else True for t in tasks]
    points = frame[[f"val_{t}" for t in tasks]].to_numpy(dtype=float).tolist()
    front = set(pareto_front(points, directions)) if tasks else set()
    frame["on_front"] = [i in front for i in range(len(frame))]
    test_points = frame[[f"test_{t}" for t in tasks]].to_numpy(dtype=float).tolist()
    test_front = set(pareto_front(test_points, directions)) if tasks else set()
    frame["on_test_front"] = [i in test_front for i in range(len(frame))]
    grid = [i for i in range(len(frame)) if frame["method"].iat[i] == "static"]
    pick = chosen_by_validation([points[i] for i in grid], directions) if grid else None
    frame["chosen"] = [pick is not None and i == grid[pick] for i in range(len(frame))]
    frame.attrs.update(tasks=tasks, metrics=metrics, sweep_id=sweep_id,
                       higher_is_better=dict(zip(tasks, directions, strict=True)))
    return frame
