"""Does each lesson's claim hold over seeds? Trains every lesson's presets (and each preset's
single-task baselines where the claim needs them) once, as stacked runs of N replicas (seeds
seed..seed+N-1, `replicas: N`), and prints the claim's figure per seed, the per-preset figure
as mean ± sd, and the verdict (holds in at least 4 of 5 seeds, or the same share for another N).

    python bench/lesson_claims.py [--replicas 5] [--lessons loss_scales,relatedness] [--epochs E]

The claim checks themselves live in mtl_core.lesson_claims (the Lessons page evaluates the
same functions on the runs its "Run this lesson" button trains). torch on one thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_core.lesson_claims import (  # noqa: E402
    CLAIMS,
    SeedRuns,
    baseline_label,
    check_claim,
    lesson_configs,
    per_seed_runs,
    preset_figures,
)


def run_stacked(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[int, list[float]], float]:
    """(summary, {replica: logged cosines}, training seconds) of one stacked run."""
    from mtl_core.config import parse_config
    from mtl_core.sink import MemorySink
    from mtl_core.trainer import train

    sink = MemorySink()
    t0 = time.perf_counter()
    result = train(parse_config(doc), sink)
    seconds = time.perf_counter() - t0
    cosines: dict[int, list[float]] = {}
    for r in sink.rows:
        if r[2] == "diag" and r[4] == "cosine":
            cosines.setdefault(int(r[6]) if len(r) > 6 else 0, []).append(r[5])
    return result.summary, cosines, seconds


def lesson_seed_runs(lesson_id: str, replicas: int, epochs: int | None
                     ) -> tuple[list[SeedRuns], dict[str, float]]:
    from mtl_core.baselines import baseline_configs

    summaries, cosines, seconds = {}, {}, {}
    for label, cfg in lesson_configs(lesson_id).items():
        doc = cfg.to_dict()
        doc.update(replicas=replicas, device="cpu")
        if epochs:
            doc["optim"]["epochs"] = epochs
        summaries[label], cosines[label], seconds[label] = run_stacked(doc)
        if CLAIMS[lesson_id].needs_baselines:
            for task, base in baseline_configs(doc).items():
                key = baseline_label(label, task)
                summaries[key], _, seconds[key] = run_stacked(base.to_dict())
    return per_seed_runs(summaries, cosines), seconds


def main() -> None:
    import torch

    from mtl_core.metrics import mean_sd

    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--lessons", default=",".join(CLAIMS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the presets' epochs (a quicker, weaker check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for lesson_id in args.lessons.split(","):
        if lesson_id not in CLAIMS:
            sys.exit(f"--lessons: unknown {lesson_id!r}; allowed: {', '.join(CLAIMS)}")
        per_seed, seconds = lesson_seed_runs(lesson_id, args.replicas, args.epochs)
        result = check_claim(lesson_id, per_seed)
        variants = [k for k in seconds if not k.startswith("baseline:")]
        table = preset_figures(lesson_id, per_seed, variants)
        print(f"{lesson_id}: {result.claim.text}\n  {result.claim.figure} per seed: "
              + ", ".join(f"{v:+.4g}" for v in result.figures)
              + f"\n  verdict: {result.verdict()}", flush=True)
        for v in variants:
            mean, sd = mean_sd(table[v])
            print(f"  preset {v}: {result.claim.preset_figure} {mean:+.4g} ± {sd:.3g}"
                  f"  (training {seconds[v]:.1f} s)")
        for k, s in seconds.items():
            if k.startswith("baseline:"):
                print(f"  {k}: training {s:.1f} s")


if __name__ == "__main__":
    main()
