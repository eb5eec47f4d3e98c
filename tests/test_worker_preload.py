"""A worker pays the first run's lazy imports before it claims a run (bench/ui_latency.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, sys
from mtl_core.store import RunStore
from mtl_core.worker import Worker
before = "torch._dynamo" in sys.modules
Worker(RunStore(sys.argv[1]))
print(before, "torch._dynamo" in sys.modules, gc.get_freeze_count() > 100_000)
"""


def test_a_real_worker_imports_what_the_first_optimizer_needs_before_claiming(tmp_path):
    # Building the first optimizer imports torch._dynamo (about 1 s on 2 cores); a worker
    # started ahead of time must have paid that before Start, not between Start and the
    # first point on the chart.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "runs")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    # ... and its imports are frozen out of the garbage collector's full collections.
    assert done.stdout.split() == ["False", "True", "True"]
