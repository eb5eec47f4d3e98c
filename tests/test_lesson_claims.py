"""bench/lesson_claims.py: the claim checks on hand-made per-seed summaries (no training)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "lesson_claims.py"
_spec = importlib.util.spec_from_file_location("lesson_claims", _PATH)
claims = importlib.util.module_from_spec(_spec)
sys.modules["lesson_claims"] = claims  # dataclasses look their module up
_spec.loader.exec_module(claims)


def _reg(**mse):
    return {"test": {t: {"mse": v} for t, v in mse.items()}, "cosine": []}


def test_loss_scales_claim_per_seed_and_four_of_five_rule():
    seeds = [{"A": _reg(xor=0.3, distance=a), "B": _reg(xor=0.3, distance=b)}
             for a, b in [(96, 20), (95, 30), (97, 25), (96, 99), (90, 10)]]
    figures, verdict = claims.check("loss_scales", seeds)
    assert figures == [76, 65, 72, -3, 80]
    assert verdict == "holds (4 of 5 seeds)"
    seeds[0]["B"] = _reg(xor=0.3, distance=100)
    assert claims.check("loss_scales", seeds)[1] == "does not hold (3 of 5 seeds)"


def test_data_efficiency_uses_delta_m_against_the_baselines():
    runs = {"A": _reg(task1=0.5, task2=0.5), "B": _reg(task1=0.7, task2=0.7),
            "baseline:task1": _reg(task1=1.0), "baseline:task2": _reg(task2=0.5)}
    # Δm = 100/2 · ((0.5 − 1)/1 + (0.5 − 0.5)/0.5) = −25 %: sharing helped.
    figures, verdict = claims.check("data_efficiency", [runs])
    assert figures == [pytest.approx(-25.0)] and verdict.startswith("holds")


def test_gradient_conflict_claim_reads_the_logged_cosines():
    runs = {"A": {"test": {}, "cosine": [0.2, -0.2, 0.05, -0.01]},
            "B": {"test": {}, "cosine": []}}
    figures, verdict = claims.check("gradient_conflict", [runs])
    assert figures == [pytest.approx(0.01)] and verdict.startswith("holds")
    runs["A"]["cosine"] = [-0.5, -0.4]
    assert claims.check("gradient_conflict", [runs])[1].startswith("does not hold")
