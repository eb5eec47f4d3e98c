"""The core budget: how many runs train at once and how many torch threads each one uses.

Workers, the Streamlit server and the browser share one machine. torch's default (one intra-op
thread per core in every process, OpenMP threads that spin while they wait) lets a few
processes starve one another: a 1 s run took 40 s while its page was open. So:

- `default_max_jobs()`: the concurrency limit when `MTL_MAX_JOBS` is unset, from the cores (at
  most one run per core, at most `MAX_DEFAULT_JOBS`), the memory (a worker holds about 1 GB) and
  the GPUs (at least one run per GPU).
- `worker_env()`: the environment a worker starts with: OpenMP threads that sleep instead of
  spin (`OMP_WAIT_POLICY=PASSIVE`) and a thread count that already fits the budget, so torch
  never starts more threads than its share.
- `threads_for_run()`: the intra-op threads of one run, from the cores, the concurrency limit,
  how many runs are active now and how much arithmetic a step does. A small model (the MLPs of
  the vector suites) is bound by Python overhead and gains nothing from more threads, so it
  always gets one; a larger one takes the cores the other active runs leave. The sum over the
  active runs never exceeds the cores, and a run alone may use them all. Workers re-apply it
  while they train (`ThreadBudget`), so a run that started alone gives cores back as soon as
  others start.

Nothing here imports torch except `ThreadBudget.apply`, so the app can show the budget cheaply.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_DEFAULT_JOBS = 8
WORKER_MEMORY_BYTES = 1 << 30  # a worker's resident size with torch imported, rounded up
SMALL_STEP_MACS = 20_000_000  # multiply-adds per step below which one thread is as fast
REFRESH_EVERY_S = 2.0  # how often a training worker re-reads how many runs are active
FIXED_THREADS_VAR = "MTL_FIXED_THREADS"  # the operator's OMP_NUM_THREADS: no budget then


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_max_jobs(cores: int | None = None, memory: int | None = None,
                     gpus: int = 0) -> int:
    """One run per core, at most MAX_DEFAULT_JOBS and what the memory holds; at least one per
    GPU."""
    cores = available_cores() if cores is None else cores
    jobs = min(cores, MAX_DEFAULT_JOBS)
    memory = total_memory() if memory is None else memory
    if memory:
        jobs = min(jobs, max(1, memory // (2 * WORKER_MEMORY_BYTES)))
    return max(1, jobs, gpus)


def cores_per_job(cores: int, max_jobs: int) -> int:
    """The share of one run when every slot is busy."""
    return max(1, cores // max(1, max_jobs))


def threads_for_run(cores: int, max_jobs: int, active: int, step_macs: float | None) -> int:
    """Intra-op threads for one run while `active` runs (itself included) train."""
    if step_macs is not None and step_macs < SMALL_STEP_MACS:
        return 1
    sharing = max(1, min(active, max_jobs))
    return max(1, cores // sharing)


def worker_env(base: dict[str, str], cores: int, max_jobs: int) -> dict[str, str]:
    """The environment of a worker process: passive OpenMP waits and its share of threads
    (the operator's own OMP_NUM_THREADS, if set, wins)."""
    env = dict(base)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "OMP_NUM_THREADS" in base:
        env[FIXED_THREADS_VAR] = base["OMP_NUM_THREADS"]
    else:
        env["OMP_NUM_THREADS"] = str(cores_per_job(cores, max_jobs))
    env["MTL_CORES"] = str(cores)
    return env


def describe(cores: int, max_jobs: int) -> str:
    """One line for the sidebar and the CLI."""
    share = cores_per_job(cores, max_jobs)
    return (f"{cores} core{'s' * (cores != 1)}, up to {max_jobs} run{'s' * (max_jobs != 1)} "
            f"at once, {share} thread{'s' * (share != 1)} each when all are busy "
            "(small models: 1)")


def estimate_step_macs(cfg: Any) -> float | None:
    """Multiply-adds of one training step of an MLP-trunk config, roughly (3 for forward and
    backward × batch × the dense layers' weights, the input taken as wide as the first layer);
    None for convolutional trunks, whose cost depends on the image size: they count as large."""
    trunk = cfg.model.trunk
    if trunk.type != "mlp":
        return None
    widths = list(trunk.layers) + list(trunk.hidden)
    width = widths[-1] if widths else 1
    macs = sum(a * b for a, b in zip([widths[0] if widths else 1, *widths], widths,
                                     strict=False))
    tasks = max(1, len(cfg.tasks or []))
    head = list(cfg.model.heads.layers)
    macs += tasks * sum(a * b for a, b in zip([width, *head], [*head, 1], strict=True))
    return 3.0 * cfg.optim.batch_size * macs


@dataclass
class ThreadBudget:
    """Keeps one run's torch threads at its share while it trains.

    `active` says how many runs are active now (a store query); `apply` is called often (the
    trainer's control polls) and re-reads it at most every REFRESH_EVERY_S.
    """

    cores: int
    max_jobs: int
    active: Callable[[], int]
    step_macs: float | None = None
    threads: int = 0
    _checked_at: float = -math.inf

    def apply(self, force: bool = False) -> int:
        if os.environ.get(FIXED_THREADS_VAR):
            return self.threads  # the operator chose the threads; torch already uses them
        now = time.monotonic()
        if not force and now - self._checked_at < REFRESH_EVERY_S:
            return self.threads
        self._checked_at = now
        wanted = threads_for_run(self.cores, self.max_jobs, max(1, self.active()),
                                 self.step_macs)
        if wanted != self.threads:
            import torch

            torch.set_num_threads(wanted)
            self.threads = wanted
        return self.threads


def cores_from_env() -> int:
    """The cores a worker was started with (MTL_CORES), else this machine's."""
    text = os.environ.get("MTL_CORES", "")
    return int(text) if text.isdigit() and int(text) > 0 else available_cores()
