"""Does each lesson's claim hold over seeds? Runs every lesson's presets (and the single-task
baselines where the claim needs them) for seeds 0..N-1 as separate runs through the trainer,
prints the claim's figure per seed and the verdict (holds in at least 4 of 5 seeds, or the
same share for another N).

    python bench/lesson_claims.py [--seeds 5] [--lessons loss_scales,relatedness] [--epochs E]

The claim checks are functions over per-seed summaries ({variant: summary}, a summary being
the trainer's {"test": ..., "val": ...} plus "cosine": the logged gradient cosines), so they can
later be fed from stacked replicas (issue 12) instead of separate runs. torch on one thread.
Lessons whose text makes no claim about results (branch_point and soft_vs_hard ask questions;
choosing_weights is checked by the sweep's own test verdict) have no entry.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Summary = dict[str, Any]  # {"test": {task: {metric: v}}, "val": ..., "cosine": [values]}
SeedRuns = dict[str, Summary]  # variant label ("A", "B", "baseline:<task>") -> summary


@dataclass(frozen=True)
class Claim:
    text: str  # what the lesson claims, in its words
    figure: str  # what the number per seed is
    needs_baselines: bool
    measure: Callable[[SeedRuns], float]
    holds: Callable[[float], bool]


def _mse(s: Summary, task: str) -> float:
    return s["test"][task]["mse"]


def _delta_m(runs: SeedRuns, variant: str) -> float:
    from mtl_core.baselines import primary_metric
    from mtl_core.metrics import delta_m

    test = runs[variant]["test"]
    baselines = {t: runs[f"baseline:{t}"]["test"][t] for t in test}
    return delta_m(test, baselines, {t: primary_metric(m) for t, m in test.items()})


CLAIMS: dict[str, Claim] = {
    "data_efficiency": Claim(
        "with little data, hard sharing beats its single-task baselines", "Δm of A (%)", True,
        lambda r: _delta_m(r, "A"), lambda v: v < 0),
    "relatedness": Claim(
        "related tasks gain more from sharing than unrelated ones", "Δm(A) − Δm(B) (%)", True,
        lambda r: _delta_m(r, "A") - _delta_m(r, "B"), lambda v: v < 0),
    "loss_scales": Claim(
        "uncertainty weighting fixes the large-scale distance task",
        "distance test MSE, A − B", False,
        lambda r: _mse(r["A"], "distance") - _mse(r["B"], "distance"), lambda v: v > 0),
    "gradient_conflict": Claim(
        "the xor/spiral gradient cosine is noise around 0, not conflict",
        "mean logged cosine in A", False,
        lambda r: statistics.mean(r["A"]["cosine"]) if r["A"]["cosine"] else math.nan,
        lambda v: abs(v) < 0.1),
}


def run_preset(doc: dict[str, Any]) -> Summary:
    from mtl_core.config import parse_config
    from mtl_core.sink import MemorySink
    from mtl_core.trainer import train

    sink = MemorySink()
    result = train(parse_config(doc), sink)
    cosine = [r[5] for r in sink.rows if r[2] == "diag" and r[4] == "cosine"]
    return {**result.summary, "cosine": cosine}


def seed_runs(lesson_id: str, seed: int, needs_baselines: bool, epochs: int | None) -> SeedRuns:
    from mtl_core.baselines import baseline_configs
    from mtl_core.lessons import get_lesson, load_preset

    lesson = get_lesson(lesson_id)
    runs: SeedRuns = {}
    for i in range(len(lesson.presets)):
        doc = load_preset(lesson, i).to_dict()
        doc.update(seed=seed, device="cpu")
        if epochs:
            doc["optim"]["epochs"] = epochs
        label = "AB"[i]
        runs[label] = run_preset(doc)
        if needs_baselines and label == "A":
            for task, base in baseline_configs(doc).items():
                runs[f"baseline:{task}"] = run_preset(base.to_dict())
    return runs


def check(lesson_id: str, per_seed: list[SeedRuns]) -> tuple[list[float], str]:
    """The claim's figure per seed and the verdict: holds in at least 80 % of the seeds."""
    claim = CLAIMS[lesson_id]
    figures = [claim.measure(r) for r in per_seed]
    n_hold = sum(bool(claim.holds(v)) for v in figures)
    verdict = "holds" if n_hold >= math.ceil(0.8 * len(figures)) else "does not hold"
    return figures, f"{verdict} ({n_hold} of {len(figures)} seeds)"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lessons", default=",".join(CLAIMS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the presets' epochs (a quicker, weaker check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for lesson_id in args.lessons.split(","):
        if lesson_id not in CLAIMS:
            sys.exit(f"--lessons: unknown {lesson_id!r}; allowed: {', '.join(CLAIMS)}")
        claim = CLAIMS[lesson_id]
        t0 = time.perf_counter()
        per_seed = [seed_runs(lesson_id, s, claim.needs_baselines, args.epochs)
                    for s in range(args.seeds)]
        figures, verdict = check(lesson_id, per_seed)
        print(f"{lesson_id}: {claim.text}\n  {claim.figure} per seed: "
              + ", ".join(f"{v:+.4g}" for v in figures)
              + f"\n  verdict: {verdict}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
