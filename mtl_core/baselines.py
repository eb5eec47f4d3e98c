"""Single-task baselines and the multi-task improvement Δm.

A multi-task run is judged against one single-task model per task, trained with the same data,
trunk and head sizes, optimiser, seed and budget (`baseline_configs`). Baselines are ordinary
runs in the store: `find_or_submit_baselines` reuses any finished or live run whose config
has the same `baseline_key` and queues the missing ones through `mtl_core.jobs`.

Reuse is decided by the key recomputed from each stored config, never by the run name (the
name `baseline:<task>:<key[:8]>` is only for people), so no store schema change is needed and
a single-task run someone started by hand with the same settings is reused too.

Δm (Maninis et al. 2019; sign convention of Navon et al. 2022) compares one primary metric per
task; `mtl_core.metrics.delta_m` computes it. Primary metric: accuracy for classification and
binary tasks, MSE for regression (not R², whose relative change explodes near 0 and flips sign
when R² is negative). Test-split metrics are compared by default, as in the papers.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_core.config import ConfigError, ExperimentConfig, TaskConfig, parse_config
from mtl_core.data.base import TaskSpec
from mtl_core.metrics import HIGHER_IS_BETTER, delta_m, mean_sd, t_interval
from mtl_core.owners import OPERATOR, Actor
from mtl_core.store import RunInfo, RunStore

PRIMARY_METRIC = {"classification": "accuracy", "binary": "accuracy", "regression": "mse",
                  "box": "iou", "dense_classification": "miou", "dense_regression": "abs_rel"}
BASELINE_ARCHITECTURE = "single_task"
# Top-level config keys that cannot change a run's metrics: the label, how often curves are
# logged, and the device (it changes floating-point details, not what is measured).
KEY_IGNORES = ("name", "log_every", "device")
# Statuses of runs worth reusing, best first: a finished run, else one that will finish.
REUSABLE_STATUSES = ("finished", "running", "paused", "queued")

DELTA_M_LATEX = (r"\Delta_m = \frac{100}{T}\sum_{t=1}^{T} (-1)^{\delta_t}\,"
                 r"\frac{M_t - M_t^{\mathrm{STL}}}{M_t^{\mathrm{STL}}}")
DELTA_M_EXPLANATION = (
    "For every task t, take its metric M_t in the multi-task model and the same metric "
    "M_t^STL of a single-task model trained alone with the same layers, data and budget. "
    "The fraction (M_t − M_t^STL) / M_t^STL is how much the task changed, relative to its "
    "baseline. δ_t is 1 when higher is better (accuracy, IoU, mIoU) and 0 when lower is "
    "better (MSE, abs_rel), so "
    "the factor (−1)^δ_t turns every improvement into a negative number. Δm is the average "
    "over the T tasks, in percent: **below 0 the multi-task model beats its single-task "
    "baselines on average, above 0 sharing hurt** (negative transfer). Because it averages "
    "relative changes, one task's large gain can hide another task's loss: read the table too."
)


def primary_metric(kind_or_metrics: str | Mapping[str, float]) -> str:
    """The metric Δm compares for a task, from its kind or from the metric names it logged."""
    if isinstance(kind_or_metrics, str):
        try:
            return PRIMARY_METRIC[kind_or_metrics]
        except KeyError:
            raise ValueError(f"unknown task kind {kind_or_metrics!r}; "
                             f"known: {', '.join(PRIMARY_METRIC)}") from None
    for name in ("accuracy", "iou", "miou", "abs_rel"):  # each names its kind
        if name in kind_or_metrics:
            return name
    return "mse"


# --- configs and keys ---------------------------------------------------------------------


def baseline_configs(cfg: ExperimentConfig | dict[str, Any]) -> dict[str, ExperimentConfig]:
    """One single-task config per task with a positive weight (a weight-0 task was switched
    off, so it has nothing to be compared with). Same data, seed, trunk, heads, optimiser and
    budget; architecture `single_task`, the task alone with weight 1, static weighting."""
    cfg = parse_config(cfg)
    out: dict[str, ExperimentConfig] = {}
    for task, weight in cfg.task_weights().items():
        if weight <= 0:
            continue
        base = cfg.model_copy(deep=True)
        base.tasks = [TaskConfig(name=task, weight=1.0)]
        base.model.architecture = BASELINE_ARCHITECTURE
        base.model.params = {}
        base.weighting.method = "static"
        base.weighting.params = {}
        base = parse_config(base)
        base.name = f"baseline:{task}:{baseline_key(base)[:8]}"
        out[task] = base
    return out


def baseline_key(cfg: ExperimentConfig | dict[str, Any]) -> str:
    """A stable sha256 of everything that determines a run's result (the validated config with
    defaults filled, minus KEY_IGNORES), so equal settings give equal keys whatever the name."""
    doc = parse_config(cfg).to_dict()
    for key in KEY_IGNORES:
        doc.pop(key, None)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _stored_key(run: RunInfo) -> str | None:
    """The key of a stored single-task run, None for anything else or a config that no longer
    validates (e.g. a suite that was removed)."""
    config = run.config
    if config.get("model", {}).get("architecture") != BASELINE_ARCHITECTURE \
            or len(config.get("tasks") or []) != 1:
        return None
    try:
        return baseline_key(config)
    except ConfigError:
        return None


# --- finding and submitting ---------------------------------------------------------------


def find_baselines(cfg: ExperimentConfig | dict[str, Any], runs_dir: str | Path | None = None
                   ) -> dict[str, str]:
    """Existing baseline runs for the tasks of `cfg`: {task: run id}, only tasks that have one.
    Prefers a finished run, then running, paused, queued; the newest among equals."""
    wanted = {baseline_key(c): task for task, c in baseline_configs(cfg).items()}
    store = RunStore(runs_dir)
    found: dict[str, RunInfo] = {}
    for run in store.list_runs(REUSABLE_STATUSES):  # newest first
        key = _stored_key(run)
        if key not in wanted:
            continue
        task = wanted[key]
        best = found.get(task)
        if best is None or (REUSABLE_STATUSES.index(run.status)
                            < REUSABLE_STATUSES.index(best.status)):
            found[task] = run
    return {task: run.id for task, run in found.items()}


def find_or_submit_baselines(cfg: ExperimentConfig | dict[str, Any],
                             runs_dir: str | Path | None = None,
                             owner: Actor = OPERATOR) -> dict[str, str]:
    """{task: run id} of a baseline for every positively weighted task: reused when a run with
    the same baseline key is finished or live, else queued now through mtl_core.jobs. Two
    calls at the very same moment may both queue a baseline (there is no lock); the second
    is then a duplicate, never a wrong result."""
    from mtl_core import jobs

    configs = baseline_configs(cfg)
    ids = find_baselines(cfg, runs_dir)
    for task, base in configs.items():
        if task not in ids:
            ids[task] = jobs.submit(base, Path(runs_dir) if runs_dir is not None else None,
                                    owner=owner)
    return {task: ids[task] for task in configs}


# --- the comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class TaskComparison:
    task: str
    metric: str
    higher_is_better: bool
    value: float | None  # the multi-task run's metric
    baseline: float | None  # the single-task baseline's metric (None: no finished baseline)
    relative: float | None  # 100·(value − baseline)/baseline, the plain change in percent
    term: float | None  # this task's contribution to Δm: the relative change, negative = better

    @property
    def better(self) -> bool | None:
        """Whether the multi-task model beats the baseline on this task."""
        return None if self.term is None else self.term < 0


@dataclass(frozen=True)
class SeedSpread:
    """Δm over the seeds of a stacked run (`replicas: K`), each seed against the baselines'
    replica of the same seed: mean, sd and a 95 % t-interval, and how often sharing helped."""

    seeds: list[int]
    deltas: list[float]  # Δm of each seed, in percent

    @property
    def mean(self) -> float:
        return mean_sd(self.deltas)[0]

    @property
    def sd(self) -> float:
        return mean_sd(self.deltas)[1]

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % t-interval of the mean Δm (None for a single seed)."""
        return t_interval(self.deltas) if len(self.deltas) > 1 else None

    @property
    def helped(self) -> int:
        """Seeds in which the multi-task model beat its baselines (Δm < 0)."""
        return sum(d < 0 for d in self.deltas)

    def verdict(self) -> str:
        return f"sharing helped in {self.helped} of {len(self.deltas)} seeds"

    def text(self) -> str:
        interval = self.interval
        spread = (f", 95 % interval [{interval[0]:+.2f}, {interval[1]:+.2f}] %"
                  if interval else "")
        return (f"Δm over {len(self.deltas)} seeds: {self.mean:+.2f} % ± {self.sd:.2f} (sd)"
                f"{spread}; {self.verdict()}")


@dataclass
class Comparison:
    rows: list[TaskComparison]
    delta_m: float | None  # None unless every task has a baseline (a partial Δm misleads)
    split: str = "test"
    missing: list[str] = field(default_factory=list)  # tasks without a (finished) baseline
    note: str | None = None  # why Δm is None, in words
    seeds: SeedSpread | None = None  # a stacked run: Δm per seed (None for one seed)

    def frame(self) -> Any:
        """The rows as a pandas DataFrame (one row per task)."""
        import pandas as pd

        return pd.DataFrame([{**r.__dict__, "better": r.better} for r in self.rows])


def comparison(run_summary: Mapping[str, Any], baseline_summaries: Mapping[str, Mapping[str, Any]],
               specs: Sequence[TaskSpec] | Mapping[str, str] | None = None,
               split: str = "test") -> Comparison:
    """Compare a multi-task run's metrics with its baselines' and compute Δm.

    `run_summary` and each of `baseline_summaries[task]` are TrainResult summaries
    ({"test": {task: {metric: value}}, ...}). `specs` says which tasks to compare and their
    kinds (TaskSpecs, or {task: kind}); without it every task of the run's summary is
    compared and its primary metric is read off the metric names it logged.
    """
    metrics = run_summary.get(split) or {}
    if specs is None:
        metric_of = {task: primary_metric(m) for task, m in metrics.items()}
    elif isinstance(specs, Mapping):
        metric_of = {task: primary_metric(kind) for task, kind in specs.items()}
    else:
        metric_of = {s.name: primary_metric(s.kind) for s in specs}

    rows, missing = [], []
    for task, name in metric_of.items():
        value = _metric(metrics, task, name)
        base = _metric((baseline_summaries.get(task) or {}).get(split) or {}, task, name)
        relative = term = None
        if base is None:
            missing.append(task)
        elif value is not None and base != 0:
            relative = 100.0 * (value - base) / base
            term = -relative if HIGHER_IS_BETTER[name] else relative
        rows.append(TaskComparison(task, name, HIGHER_IS_BETTER[name], value, base, relative,
                                   term))

    note = None
    if not rows:
        note = f"the run has no {split} metrics yet"
    elif missing:
        note = f"no finished baseline for: {', '.join(missing)}"
    elif any(r.value is None for r in rows):
        note = "the run lacks a metric for: " + ", ".join(r.task for r in rows if r.value is None)
    value = None
    if note is None:
        try:
            value = delta_m({r.task: {r.metric: r.value} for r in rows},  # type: ignore[misc]
                            {r.task: {r.metric: r.baseline} for r in rows},  # type: ignore[misc]
                            metric_of)
        except ValueError as exc:  # a baseline metric of exactly 0
            note = str(exc)
    return Comparison(rows, value, split, missing, note,
                      seed_spread(run_summary, baseline_summaries, metric_of, split))


def seed_spread(run_summary: Mapping[str, Any],
                baseline_summaries: Mapping[str, Mapping[str, Any]],
                metric_of: Mapping[str, str], split: str = "test") -> SeedSpread | None:
    """Δm per seed of a stacked run: each of its `summary.replicas` against the entry of the
    same seed in every baseline's summary (baselines train with the same replicas). None
    unless the run has several seeds and every baseline has each of them."""
    entries = run_summary.get("replicas") or []
    if len(entries) < 2:
        return None
    by_seed = {}
    for task in metric_of:
        base_entries = (baseline_summaries.get(task) or {}).get("replicas") or []
        by_seed[task] = {e["seed"]: e for e in base_entries}
    seeds, deltas = [], []
    for entry in entries:
        seed = entry["seed"]
        if any(seed not in by_seed[task] for task in metric_of):
            return None
        metrics = entry.get(split) or {}
        values = {t: _metric(metrics, t, n) for t, n in metric_of.items()}
        bases = {t: _metric(by_seed[t][seed].get(split) or {}, t, n)
                 for t, n in metric_of.items()}
        if any(v is None for v in values.values()) or any(
                b is None or b == 0 for b in bases.values()):
            continue  # a diverged seed (no test metrics) has no Δm
        seeds.append(seed)
        deltas.append(delta_m({t: {n: values[t]} for t, n in metric_of.items()},
                              {t: {n: bases[t]} for t, n in metric_of.items()},
                              dict(metric_of)))
    return SeedSpread(seeds, deltas) if deltas else None


def _metric(metrics: Mapping[str, Any], task: str, name: str) -> float | None:
    value = (metrics.get(task) or {}).get(name)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def compare_run(run_id: str, runs_dir: str | Path | None = None,
                split: str = "test") -> Comparison:
    """The comparison for a stored run against the finished baselines that already exist
    (nothing is submitted; see find_or_submit_baselines). Tasks: those with a positive weight."""
    store = RunStore(runs_dir)
    run = store.get_run(run_id)
    cfg = parse_config(run.config)
    tasks = [t for t, w in cfg.task_weights().items() if w > 0]
    summaries = {}
    for task, base_id in find_baselines(cfg, runs_dir).items():
        base = store.get_run(base_id)
        if base.status == "finished":
            summaries[task] = base.summary
    metrics = run.summary.get(split) or {}
    kinds = {t: _kind_of(metrics.get(t) or {}) for t in tasks}
    return comparison(run.summary, summaries, kinds, split)


def _kind_of(metrics: Mapping[str, float]) -> str:
    """A task's kind as its logged metrics tell it (the inverse of PRIMARY_METRIC)."""
    name = primary_metric(metrics)
    return next(kind for kind, metric in PRIMARY_METRIC.items() if metric == name)
