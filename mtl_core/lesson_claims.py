"""Each lesson's claim as a check over seeds, evaluated on finished runs.

A claim is a function of one seed's runs (`SeedRuns`: {"A": summary, "B": summary,
"baseline:A:<task>": summary, ...}, a summary being {"test": ..., "val": ..., "cosine": [the
logged gradient cosines]}), giving one figure per seed; it holds when the figure passes its
test in at least 80 % of the seeds (4 of 5). The lesson presets train with `replicas: K`, so the
per-seed summaries come from each run's `summary.replicas` (`per_seed_runs`), and the baselines
train with the same replicas (mtl_core.baselines). `lesson_runs` submits a lesson's presets and
baselines through mtl_core.jobs; `evaluate` reads them back from the store. bench/lesson_claims.py
and the Lessons page both use this module. Lessons whose text makes no claim about results
(branch_point and soft_vs_hard ask questions; choosing_weights is checked by the sweep's own
test verdict; one_backbone needs MNIST) have no entry.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Summary = dict[str, Any]  # {"test": {task: {metric: v}}, "val": ..., "cosine": [values]}
SeedRuns = dict[str, Summary]  # "A", "B", "baseline:<variant>:<task>" -> one seed's summary
HOLD_SHARE = 0.8  # a claim holds in at least this share of the seeds (4 of 5)
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Claim:
    text: str  # what the lesson claims, in its words
    figure: str  # what the number per seed is
    rule: str  # the test on each seed's figure, in words ("< 0")
    needs_baselines: bool
    measure: Callable[[SeedRuns], float]
    holds: Callable[[float], bool]
    preset_figure: str  # the per-preset number the lesson's table shows
    preset_measure: Callable[[SeedRuns, str], float]


def _mse(s: Summary, task: str) -> float:
    return s["test"][task]["mse"]


def baseline_label(variant: str, task: str) -> str:
    return f"baseline:{variant}:{task}"


def _delta_m(runs: SeedRuns, variant: str) -> float:
    """Δm of one preset against its own baselines (same data, seed and budget)."""
    from mtl_core.baselines import primary_metric
    from mtl_core.metrics import delta_m

    test = runs[variant]["test"]
    baselines = {t: runs[baseline_label(variant, t)]["test"][t] for t in test}
    return delta_m(test, baselines, {t: primary_metric(m) for t, m in test.items()})


def _mean_cosine(s: Summary) -> float:
    return statistics.mean(s["cosine"]) if s.get("cosine") else math.nan


CLAIMS: dict[str, Claim] = {
    "data_efficiency": Claim(
        "with little data, hard sharing (A) beats its single-task baselines",
        "Δm of A (%)", "< 0", True,
        lambda r: _delta_m(r, "A"), lambda v: v < 0,
        "Δm against its baselines (%)", _delta_m),
    "relatedness": Claim(
        "related tasks (A) gain more from sharing than unrelated ones (B)",
        "Δm(A) − Δm(B) (%)", "< 0", True,
        lambda r: _delta_m(r, "A") - _delta_m(r, "B"), lambda v: v < 0,
        "Δm against its baselines (%)", _delta_m),
    "loss_scales": Claim(
        "uncertainty weighting (B) fixes the large-scale distance task",
        "distance test MSE, A − B", "> 0", False,
        lambda r: _mse(r["A"], "distance") - _mse(r["B"], "distance"), lambda v: v > 0,
        "distance test MSE", lambda r, v: _mse(r[v], "distance")),
    "gradient_conflict": Claim(
        "the xor/spiral gradient cosine is noise around 0, not conflict",
        "mean logged cosine in A", "|·| < 0.1", False,
        lambda r: _mean_cosine(r["A"]), lambda v: abs(v) < 0.1,
        "mean gradient cosine", lambda r, v: _mean_cosine(r[v])),
}


# --- per-seed runs from stacked replicas -----------------------------------------------------


def seed_entries(summary: Mapping[str, Any]) -> list[Summary]:
    """One summary per seed: the entries of `summary.replicas`, or the summary itself for a
    run of one seed."""
    entries = summary.get("replicas") or []
    if entries:
        return [dict(e) for e in entries]
    return [{"seed": summary.get("seed"), "test": summary.get("test") or {},
             "val": summary.get("val") or {}}]


def per_seed_runs(summaries: Mapping[str, Mapping[str, Any]],
                  cosines: Mapping[str, Mapping[int, list[float]]] | None = None
                  ) -> list[SeedRuns]:
    """Split stacked runs into one SeedRuns per replica: entry i of every run's
    `summary.replicas` (the presets and their baselines train the same seeds, so entry i is
    seed `seed + i` everywhere), with that replica's logged cosines from `cosines`
    ({label: {replica: [values]}}). Only as many seeds as every run has."""
    split = {label: seed_entries(s) for label, s in summaries.items()}
    k = min((len(e) for e in split.values()), default=0)
    out: list[SeedRuns] = []
    for i in range(k):
        runs: SeedRuns = {}
        for label, entries in split.items():
            runs[label] = {**entries[i],
                           "cosine": list(((cosines or {}).get(label) or {}).get(i, []))}
        out.append(runs)
    return out


# --- the check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimCheck:
    lesson_id: str
    claim: Claim
    seeds: list[Any]  # the seed of each figure (A's replica seeds)
    figures: list[float]  # the claim's figure per seed (NaN: a diverged seed)

    @property
    def held(self) -> int:
        return sum(bool(math.isfinite(v) and self.claim.holds(v)) for v in self.figures)

    @property
    def needed(self) -> int:
        return math.ceil(HOLD_SHARE * len(self.figures))

    @property
    def passed(self) -> bool:
        return bool(self.figures) and self.held >= self.needed

    def verdict(self) -> str:
        word = "holds" if self.passed else "does not hold"
        return f"{word} ({self.held} of {len(self.figures)} seeds)"

    def text(self) -> str:
        figures = ", ".join(f"{v:+.4g}" for v in self.figures)
        return (f"{self.claim.text}: {self.claim.figure} {self.claim.rule} in at least "
                f"{self.needed} of {len(self.figures)} seeds; per seed {figures}; "
                f"{self.verdict()}")


def check_claim(lesson_id: str, per_seed: Sequence[SeedRuns]) -> ClaimCheck:
    """The claim's figure per seed and whether it holds in at least 80 % of them."""
    claim = CLAIMS[lesson_id]
    figures = [_safe(claim.measure, r) for r in per_seed]
    seeds = [r.get("A", {}).get("seed") for r in per_seed]
    return ClaimCheck(lesson_id, claim, seeds, figures)


def check(lesson_id: str, per_seed: Sequence[SeedRuns]) -> tuple[list[float], str]:
    """(figures, verdict text): the short form bench/lesson_claims.py prints."""
    result = check_claim(lesson_id, per_seed)
    return result.figures, result.verdict()


def preset_figures(lesson_id: str, per_seed: Sequence[SeedRuns],
                   variants: Sequence[str]) -> dict[str, list[float]]:
    """Per preset ("A", "B") the lesson's table figure in every seed."""
    claim = CLAIMS[lesson_id]
    return {v: [_safe(lambda r, v=v: claim.preset_measure(r, v), r) for r in per_seed]
            for v in variants}


def _safe(fn: Callable[[SeedRuns], float], runs: SeedRuns) -> float:
    """A seed without the metric (diverged, or no finite value) gives NaN, not an error."""
    try:
        value = float(fn(runs))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return math.nan
    return value


# --- runs in the store -----------------------------------------------------------------------


def lesson_configs(lesson_id: str) -> dict[str, Any]:
    """{label: ExperimentConfig} of a lesson's presets, "A", "B", ..."""
    from mtl_core.lessons import get_lesson, load_preset

    lesson = get_lesson(lesson_id)
    return {LETTERS[i]: load_preset(lesson, i) for i in range(len(lesson.presets))}


def lesson_runs(lesson_id: str, runs_dir: str | Path | None = None, owner: Any = None
                ) -> dict[str, str]:
    """Queue a lesson's presets (and, where the claim needs them, each preset's single-task
    baselines, reused when they exist) through mtl_core.jobs: {label: run id}, labels as in
    SeedRuns. Raises ConfigError/QuotaError/ValueError before queueing anything it can check."""
    from mtl_core import jobs
    from mtl_core.baselines import baseline_key, find_or_submit_baselines
    from mtl_core.owners import OPERATOR
    from mtl_core.preflight import check_submit
    from mtl_core.store import RunStore

    owner = owner or OPERATOR
    needs = lesson_id in CLAIMS and CLAIMS[lesson_id].needs_baselines
    configs = lesson_configs(lesson_id)
    for cfg in configs.values():
        check_submit(cfg)
    path = Path(runs_dir) if runs_dir is not None else None
    if needs:  # the baselines not found yet are queued too
        from mtl_core.baselines import baseline_configs, find_baselines

        missing = {baseline_key(b) for cfg in configs.values()
                   for task, b in baseline_configs(cfg).items()
                   if task not in find_baselines(cfg, path)}
    else:
        missing = set()
    # the whole lesson or nothing: not half of it queued when the owner's quota runs out
    RunStore(path).check_queue_room(owner, adding=len(configs) + len(missing))
    ids: dict[str, str] = {}
    for label, cfg in configs.items():
        ids[label] = jobs.submit(cfg, path, owner=owner)
        if needs:
            for task, run_id in find_or_submit_baselines(cfg, path, owner=owner).items():
                ids[baseline_label(label, task)] = run_id
    return ids


@dataclass
class LessonResult:
    """Where a lesson's runs stand, and once all finished, the claim's check."""

    statuses: dict[str, str]  # label -> run status
    check: ClaimCheck | None = None
    figures: dict[str, list[float]] = field(default_factory=dict)  # preset -> per seed

    @property
    def done(self) -> bool:
        return all(s not in ("queued", "running", "paused") for s in self.statuses.values())

    @property
    def failed(self) -> list[str]:
        return [label for label, s in self.statuses.items() if s != "finished" and self.done]


def _cosines(store: Any, run_id: str) -> dict[int, list[float]]:
    frame = store.metrics(run_id)
    frame = frame[(frame.split == "diag") & (frame.name == "cosine")]
    return {int(r): list(g.value.astype(float)) for r, g in frame.groupby("replica")}


def evaluate(lesson_id: str, run_ids: Mapping[str, str],
             runs_dir: str | Path | None = None) -> LessonResult:
    """The statuses of a lesson's runs and, when every one has finished, the claim's check
    over the replicas' seeds and the per-preset figures."""
    from mtl_core.store import RunStore

    store = RunStore(runs_dir)
    runs = {label: store.get_run(run_id) for label, run_id in run_ids.items()}
    result = LessonResult({label: run.status for label, run in runs.items()})
    if lesson_id not in CLAIMS or not result.done or result.failed:
        return result
    cosines = ({label: _cosines(store, run.id) for label, run in runs.items()
                if not label.startswith("baseline:")}
               if lesson_id == "gradient_conflict" else None)
    per_seed = per_seed_runs({label: run.summary for label, run in runs.items()}, cosines)
    result.check = check_claim(lesson_id, per_seed)
    variants = [label for label in run_ids if not label.startswith("baseline:")]
    result.figures = preset_figures(lesson_id, per_seed, variants)
    return result
