"""A worker process: claims queued runs from the store and trains them, one at a time.

    python -m mtl_core.worker --runs-dir DIR [--run RUN_ID] [--idle-timeout S] [--max-jobs N]

torch and the trainer are imported (and the first optimizer's lazy imports paid, `preload`)
before the first claim, so a worker started ahead of time (`mtl_core.jobs.warm_up`) turns
Start into a first logged point without the import delay.
Without --run the worker takes the oldest queued run whenever fewer than --max-jobs runs are
active, trains it, sets its terminal status, and looks for the next one until it has been idle
for --idle-timeout seconds. With --run it trains just that run (if still queued) and exits.

SIGTERM asks the current run to stop (the trainer ends it at its next control poll, keeping
what it logged, and the run is marked stopped); a second SIGTERM ends the worker at once, still
marking the run stopped. Started by mtl_core.jobs with start_new_session=True, so a Ctrl-C in
the terminal or a Streamlit restart does not reach it.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from mtl_core import budget, stacked_sweep
from mtl_core.jobs import active_count, max_concurrent, warm_until
from mtl_core.store import ACTIVE_STATUSES, RunStore, StatusUpdate, StoreSink

POLL_S = 0.25  # how often an idle worker looks for a queued run in the index
WAKE_S = 0.02  # how often it looks at the store's queue stamp (a stat) in between
SEEN_EVERY_S = 5.0  # how often it refreshes its row (jobs.IDLE_WORKER_STALE_S is 60 s)
TrainFn = Callable[..., Any]  # trainer.train(cfg, sink) -> TrainResult


class Terminated(Exception):
    """A second SIGTERM (or one while idle): leave now."""


class BudgetedSink:
    """The run's sink, keeping its torch threads at their share of the core budget: the
    trainer polls `control()` about twice a second, and each poll may re-apply the budget."""

    def __init__(self, sink: StoreSink, threads: budget.ThreadBudget) -> None:
        self.inner, self.threads = sink, threads

    def control(self) -> Any:
        self.threads.apply()
        return self.inner.control()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Worker:
    def __init__(self, store: RunStore, train: TrainFn | None = None,
                 resolve_device: Callable[[str], Any] | None = None,
                 max_jobs: int | None = None, announce: bool = True) -> None:
        # Stacked sweeps (mtl_core.stacked_sweep) need the real trainer, not a stand-in.
        self.stacks = train is None
        if train is None or resolve_device is None:
            from mtl_core import trainer  # imports torch: done once, before any claim

            train = train or trainer.train
            resolve_device = resolve_device or trainer.resolve_device
            preload()
        self.store = store
        self.train = train
        self.resolve_device = resolve_device
        self.pid = os.getpid()
        self.cores = budget.cores_from_env()
        self.max_jobs = max_jobs
        self.announce = announce  # a line on stderr per run (workers.log); not in the CLI
        self.sink: StoreSink | None = None  # the run in progress, for the SIGTERM handler
        self.terminating = False

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.sink is None or self.terminating:
            raise Terminated
        self.terminating = True
        self.sink.force_stop = True  # the trainer sees "stop" at its next control poll

    def serve(self, run_id: str | None, idle_timeout: float, max_jobs: int | None) -> int:
        """Train claimed runs until idle for `idle_timeout` s (or the one `run_id`)."""
        self.store.add_worker(self.pid)
        try:
            if run_id is not None:
                claimed = self.store.claim_run(self.pid, run_id)
                if claimed is None:
                    print(f"run {run_id} is not queued; nothing to do", file=sys.stderr)
                    return 1
                self.run_one(claimed)
                return 0
            idle_since = last_seen = time.monotonic()
            while not self.terminating:
                stamp = self.store.queue_stamp()  # before the claim: nothing queued is missed
                claimed = self.store.claim_with(
                    self.pid, max_active=max_jobs,
                    carry=stacked_sweep.pick_carried if self.stacks else None)
                if claimed is not None:
                    self.run_one(*claimed)
                    idle_since = time.monotonic()
                    continue
                now = time.monotonic()
                if now - idle_since >= idle_timeout and time.time() >= warm_until(
                        self.store.runs_dir):
                    break
                if now - last_seen >= SEEN_EVERY_S:  # tells dispatch this worker still waits
                    self.store.worker_seen(self.pid)
                    last_seen = now
                self._wait(stamp)
            return 0
        except Terminated:
            return 0
        finally:
            self.store.remove_worker(self.pid)

    def _wait(self, stamp: tuple[int, int] | None) -> None:
        """Sleep POLL_S, or less: until the store's queue stamp is no longer `stamp` (runs
        were queued). A stat every WAKE_S costs next to nothing; an index poll costs a
        connection. A slot freed by a run's end is still found at the next poll."""
        deadline = time.monotonic() + POLL_S
        while not self.terminating:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(WAKE_S, left))
            if self.store.queue_stamp() != stamp:
                return

    def _budgeted(self, sink: StoreSink, cfg: Any) -> BudgetedSink:
        if self.max_jobs is None:
            self.max_jobs = max_concurrent()
        threads = budget.ThreadBudget(
            self.cores, self.max_jobs, lambda: active_count(self.store),
            budget.estimate_step_macs(cfg))
        threads.apply(force=True)
        return BudgetedSink(sink, threads)

    def run_one(self, run_id: str, taken: list[str] | None = None) -> str:
        """Train one claimed run and set its terminal status; returns that status. `taken`:
        the sweep points claimed with it (`claim_with`); None: claim them now."""
        from mtl_core.config import parse_config

        self._say(f"run {run_id}: started")
        self.sink = self.store.sink(run_id)
        status, message, fields = "failed", None, {}
        # sweep points trained in this run's stacked model (if it fails, they fail with it)
        carried: dict[str, Any] = dict.fromkeys(taken or [])
        try:
            if self.stacks and taken is None:  # first: the sooner, the fewer another takes
                carried = dict.fromkeys(stacked_sweep.claim_carried(self.store, self.pid,
                                                                    run_id))
            elif carried:  # those the stacked model has no room for go back to the queue
                carried = dict.fromkeys(stacked_sweep.keep_room(
                    self.store, self.store.get_run(run_id), list(carried)))
            cfg = parse_config(self.store.get_run(run_id).config)
            device = str(self.resolve_device(cfg.device))
            self.store.set_status(run_id, "running", device=device, expect=ACTIVE_STATUSES)
            if carried:
                self._say(f"run {run_id}: carries {', '.join(carried)} (stacked sweep)")
                results = stacked_sweep.train_carried(self.store, cfg, run_id, list(carried),
                                                      self._budgeted(self.sink, cfg))
                result = results.pop(run_id)
                carried = results
            else:
                result = self.train(cfg, self._budgeted(self.sink, cfg))
            status, message = result.status, result.message
            fields = {"step": result.steps, "summary": result.summary}
        except Terminated:
            status, message = "stopped", "worker terminated (SIGTERM) while the run was active"
        except BaseException as exc:  # noqa: BLE001 - any failure must end as "failed"
            status, message = "failed", _last_line(exc)
            (self.store.run_dir(run_id) / "error.txt").write_text(traceback.format_exc())
            if not isinstance(exc, Exception):  # KeyboardInterrupt/SystemExit: record, go on
                self.terminating = True
        finally:
            self.sink = None
        if status == "stopped" and self.terminating:
            message = "worker terminated (SIGTERM)" + (f"; {message}" if message else "")
        # expect=active: a run already ended elsewhere (e.g. reconciled) keeps its status.
        # A stacked sweep's points end together, each with its own result, in one transaction.
        ends: list[StatusUpdate] = [(run_id, status, message, ACTIVE_STATUSES, fields)]
        for other, res in carried.items():  # None: the stacked run failed before its end
            ends.append((other, status, message, ACTIVE_STATUSES, {}) if res is None else
                        (other, res.status, res.message, ACTIVE_STATUSES,
                         {"step": res.steps, "summary": res.summary}))
        self.store.set_statuses(ends)
        self.store.worker_seen(self.pid)
        self._say(f"run {run_id}: {status}" + (f" ({message})" if message else ""))
        return status

    def _say(self, text: str) -> None:
        if self.announce:
            print(f"[worker {self.pid}] {text}", file=sys.stderr, flush=True)


def preload() -> None:
    """Pay, before the first claim, what a first run would otherwise pay between Start and its
    first logged point: building the first optimizer makes torch import torch._dynamo, about
    1 s on 2 CPU cores (measured by bench/ui_latency.py). Every optimizer class goes through
    the same import. Then the imported modules' objects are frozen out of the garbage
    collector (gc.freeze): a full collection would otherwise walk all ~280,000 of them, about
    0.1–0.3 s each time one happens during a run."""
    import gc

    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    gc.freeze()


def _last_line(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {text})")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {text})")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtl_core.worker",
                                     description="Train queued MTL Lab runs from a run store.")
    parser.add_argument("--runs-dir", required=True, help="the run store's directory")
    parser.add_argument("--run", help="train only this (queued) run, then exit")
    parser.add_argument("--idle-timeout", type=_positive_float, default=30.0,
                        help="seconds to wait for a queued run before exiting (default 30)")
    parser.add_argument("--max-jobs", type=_positive_int, default=None,
                        help="claim only while fewer runs are active (default $MTL_MAX_JOBS or 2)")
    args = parser.parse_args(argv)
    if args.max_jobs is None:
        args.max_jobs = max_concurrent()

    store = RunStore(args.runs_dir)
    try:
        worker = Worker(store, max_jobs=args.max_jobs)
    except Exception as exc:  # noqa: BLE001 - e.g. a module of the trainer fails to import
        return _startup_failed(store, exc, args.run, args.max_jobs)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    return worker.serve(args.run, args.idle_timeout, args.max_jobs)


def _startup_failed(store: RunStore, exc: Exception, run_id: str | None,
                    max_jobs: int | None) -> int:
    """A worker that cannot start fails the run it would have taken, with the reason, rather
    than leave it queued (a dispatcher would otherwise start such workers again and again).
    Each failed start consumes one queued run, so this cannot loop."""
    text = traceback.format_exc()
    print(text, file=sys.stderr, flush=True)
    claimed = store.claim_run(os.getpid(), run_id, max_active=max_jobs)
    if claimed is not None:
        (store.run_dir(claimed) / "error.txt").write_text(text)
        store.set_status(claimed, "failed", f"worker could not start: {_last_line(exc)}")
    return 3


if __name__ == "__main__":
    sys.exit(main())
