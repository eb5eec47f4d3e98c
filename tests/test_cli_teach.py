"""The teaching commands of the CLI: `train --with-baselines` (Δm) and `sweep` (Pareto front)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtl_core.baselines import compare_run
from mtl_core.store import RunStore
from mtl_core.sweep import sweep_table

ROOT = Path(__file__).resolve().parent.parent
TINY = {"name": "teach", "device": "cpu",
        "data": {"suite": "toy_2d", "params": {"n_samples": 200}},
        "tasks": [{"name": "circle"}, {"name": "distance"}],
        "model": {"trunk": {"layers": [8]}, "heads": {"layers": []}},
        "optim": {"epochs": 1, "batch_size": 64}, "log_every": 2}


def cli(tmp_path: Path, runs_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MTL_MAX_JOBS": "2"}
    return subprocess.run([sys.executable, "-m", "mtl_core", argv[0], str(config),
                           "--runs-dir", str(runs_dir), *argv[1:]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_train_with_baselines_prints_delta_m_and_reuses_baselines(tmp_path, runs_dir):
    first = cli(tmp_path, runs_dir, "train", "--with-baselines")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip().splitlines()[-1]
    assert first.stderr.count("queued run") >= 2  # one baseline per task
    expected = compare_run(run_id, runs_dir)
    assert expected.delta_m is not None
    assert f"Δm = {expected.delta_m:+.2f}%" in first.stdout
    for row in expected.rows:
        assert row.task in first.stdout

    store = RunStore(runs_dir)
    before = len(store.list_runs())
    second = cli(tmp_path, runs_dir, "train", "--with-baselines", "--set", "seed=0")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("reused run") == 2
    assert len(store.list_runs()) == before + 1  # only the new multi-task run


@pytest.mark.slow
def test_sweep_runs_the_grid_and_marks_front_and_choice(tmp_path, runs_dir):
    proc = cli(tmp_path, runs_dir, "sweep", "--grid", "3", "--methods", "uncertainty")
    assert proc.returncode == 0, proc.stderr
    sweep_id = proc.stdout.strip().splitlines()[-1]
    table = sweep_table(RunStore(runs_dir), sweep_id)
    assert len(table) == 4 and set(table["status"]) == {"finished"}
    grid = table[table["method"] == "static"]
    assert sorted(grid["w_circle"].round(2)) == [0.0, 0.5, 1.0]
    assert list(table[table["method"] != "static"]["method"]) == ["uncertainty"]
    assert int(table["chosen"].sum()) == 1
    printed = [line for line in proc.stdout.splitlines() if "chosen" in line]
    assert len(printed) == 1 and "front" in printed[0]


def test_sweep_refuses_a_bad_grid(tmp_path, runs_dir):
    proc = cli(tmp_path, runs_dir, "sweep", "--grid", "1")
    assert proc.returncode == 2
    assert "error:" in proc.stderr
    assert not (runs_dir / "runs.db").exists() or not RunStore(runs_dir).list_runs()
