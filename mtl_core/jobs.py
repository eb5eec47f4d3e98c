"""Jobs: worker processes, the queue and its concurrency limit, stop/pause/resume, crash repair.

There is no daemon. A submitted run is `queued` in the store; worker processes
(`python -m mtl_core.worker`) claim queued runs atomically, at most `max_concurrent()` active
(running or paused) at a time, and each worker claims the next queued run when its run ends.
`dispatch` only makes sure enough workers exist; it never trains in the calling process (the
Streamlit server must stay responsive, and a fork of it would copy its threads' state).

Controls go through the store: `stop`, `pause` and `resume` write a request the trainer reads
at its next poll (about every 0.5 s). A worker that dies leaves its run `running` with a stale
heartbeat; `reconcile` (called by `dispatch` and when listing runs) marks it `failed`, keeping
everything it had written.

With $MTL_RAY_ADDRESS set, runs are Ray tasks instead (mtl_core.ray_executor): `submit` hands
them to the cluster, `dispatch`/`reconcile` ask it about them, and no local worker starts.

Owners (mtl_core.owners): `submit` records who queued a run (`owner`, the local operator by
default) and refuses a submit past that owner's queue quota (store.QuotaError); `stop`, `pause`
and `resume` take the `actor` who asks and raise PermissionError unless it is the run's owner,
the teacher or the operator.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mtl_core import budget
from mtl_core.fair_queue import is_carried
from mtl_core.owners import OPERATOR, Actor
from mtl_core.store import ACTIVE_STATUSES, RunStore

HEARTBEAT_STALE_S = 30.0  # a run with an older heartbeat AND a dead pid has lost its worker
IDLE_TIMEOUT_S = 30.0  # how long a dispatched worker waits for more queued runs
WARM_IDLE_TIMEOUT_S = 600.0  # how long a warm_up worker waits for its first run
IDLE_WORKER_STALE_S = 60.0  # an idle worker row not refreshed for this long is gone
WARM_FILE = "warm_until"  # in the runs dir: see warm_until()

RAY_ADDRESS_VAR = "MTL_RAY_ADDRESS"  # set: runs are Ray tasks on that cluster
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_children: list[subprocess.Popen[bytes]] = []  # workers we started, reaped in dispatch
_children_lock = threading.Lock()  # the Streamlit server dispatches from several threads


def max_concurrent() -> int:
    """$MTL_MAX_JOBS (a positive integer), default from the hardware (mtl_core.budget)."""
    text = os.environ.get("MTL_MAX_JOBS", "").strip()
    if not text:
        return budget.default_max_jobs(gpus=gpu_count())
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"MTL_MAX_JOBS must be a positive integer (got {text!r})")
    return value


def active_count(store: RunStore) -> int:
    """Runs holding a worker's slot: running or paused, a sweep point carried by another
    run's stacked model (mtl_core.stacked_sweep) not counted."""
    return sum(1 for r in store.list_runs(ACTIVE_STATUSES) if not is_carried(r.message))


def gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES when
    set, else the /dev/nvidiaN device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def ray_address() -> str | None:
    """$MTL_RAY_ADDRESS, or None: the local executor (Ray is then never imported)."""
    return os.environ.get(RAY_ADDRESS_VAR, "").strip() or None


def _ray() -> Any:
    """mtl_core.ray_executor (imports Ray); ValueError naming the fix if Ray is missing."""
    try:
        from mtl_core import ray_executor
    except ImportError as exc:
        raise ValueError(f"{RAY_ADDRESS_VAR} is set but Ray cannot be imported ({exc}); "
                         "pip install -r requirements-ray.txt, or unset it") from None
    return ray_executor


def placement(run: Any) -> tuple[str, str | None]:
    """("ray" or "local", the node it ran on if known) of a RunInfo."""
    summary = run.summary or {}
    if summary.get("executor") == "ray":
        node, node_id = summary.get("node"), summary.get("node_id")
        return "ray", (f"{node} ({str(node_id)[:8]})" if node and node_id else node)
    return "local", None


def budget_text() -> str:
    """The core budget in one line (the sidebar, `runs`)."""
    return budget.describe(budget.available_cores(), max_concurrent())


def submit(cfg: Any, runs_dir: Path | None = None, owner: Actor = OPERATOR, *,
           start: bool = True) -> str:
    """Validate a config (dict or ExperimentConfig), queue it as a run of `owner`, dispatch
    (unless `start` is False: the caller trains it, see `train_here`); the run id.

    Raises mtl_core.config.ConfigError (with every field's problem) or store.QuotaError (the
    owner already has the most queued runs allowed) before anything is queued.
    """
    from mtl_core.config import parse_config

    cfg = parse_config(cfg)
    address = ray_address()
    if address is not None:  # RayExecutorError (a ValueError) here: nothing is queued
        ray_executor = _ray()
        request = ray_executor.check(cfg, address)
    store = RunStore(runs_dir)
    run_id = store.create_run(cfg, owner=owner)
    if address is not None:
        ray_executor.launch(store, run_id, request)  # never trained here, even if not start
    elif start:
        dispatch(runs_dir)
    return run_id


def train_here(run_id: str, runs_dir: Path | None = None) -> threading.Thread | None:
    """Train a just-queued run in this process, in a background thread, when that is the
    quickest way: no idle worker is waiting (handing over to one costs nothing), no other
    run is queued ahead of it (it would jump the queue) and a slot is free. The thread goes
    through the same Worker.run_one as a worker process, so the store sees the same rows and
    statuses; only the pid is this process's. None (and the run dispatched to the workers)
    otherwise. The CLI's foreground `train` uses it: the torch import it pays anyway replaces
    a worker's start."""
    store = RunStore(runs_dir)
    reconcile(runs_dir)
    if ray_address() is not None:
        return None  # submit gave it to the cluster
    idle = any(worker_run is None for _, worker_run, _ in _live_workers(store))
    queued = [r.id for r in store.list_runs(["queued"])]
    limit = max_concurrent()
    if idle or queued != [run_id] or active_count(store) >= limit:
        dispatch(runs_dir)
        return None
    from mtl_core.worker import Worker  # imports torch and the trainer

    worker = Worker(store, max_jobs=limit, announce=False)
    if store.claim_run(os.getpid(), run_id) is None:  # taken meanwhile by a worker
        return None
    thread = threading.Thread(target=worker.run_one, args=(run_id,), daemon=True,
                              name=f"train-{run_id}")
    thread.start()
    return thread


def dispatch(runs_dir: Path | None = None, idle_timeout: float | None = None) -> None:
    """Start worker processes for queued runs, up to the concurrency limit.

    Workers already waiting (idle, or still starting) count, so calling this often is cheap
    and starts nothing new. The limit itself is enforced where workers claim runs.
    """
    store = RunStore(runs_dir)
    reconcile(runs_dir)
    if ray_address() is not None:
        try:
            _ray().adopt(store)  # queued Ray runs whose task was lost with the head
        except Exception:  # noqa: BLE001 - the cluster is down: they wait for it
            pass
        return
    limit = max_concurrent()
    queued = len(store.list_runs(["queued"]))
    if not queued:
        return
    active = active_count(store)
    idle = sum(1 for _, run_id, _ in _live_workers(store) if run_id is None)
    for _ in range(min(queued, limit - active) - idle):
        _spawn_worker(store, IDLE_TIMEOUT_S if idle_timeout is None else idle_timeout, limit)


def warm_up(runs_dir: Path | None = None) -> None:
    """Make sure one idle worker (torch already imported) waits for the next queued run, for
    WARM_IDLE_TIMEOUT_S from now. An idle worker already waiting is kept that long rather than
    doubled: otherwise one about to leave (a dispatched worker's short idle timeout) would
    leave the page without the worker it was promised."""
    store = RunStore(runs_dir)
    if ray_address() is not None:
        return  # a local worker would take the cluster's queued runs
    _write_warm_until(store.runs_dir, time.time() + WARM_IDLE_TIMEOUT_S)
    if not any(run_id is None for _, run_id, _ in _live_workers(store)):
        _spawn_worker(store, WARM_IDLE_TIMEOUT_S, max_concurrent())


def warm_until(runs_dir: Path) -> float:
    """Until when (epoch seconds) idle workers of this store stay, however short their own
    idle timeout: the last `warm_up`'s promise. 0 when none was made."""
    try:
        return float((Path(runs_dir) / WARM_FILE).read_text())
    except (OSError, ValueError):
        return 0.0


def _write_warm_until(runs_dir: Path, until: float) -> None:
    tmp = runs_dir / f"{WARM_FILE}.{os.getpid()}.tmp"
    tmp.write_text(repr(until))
    os.replace(tmp, runs_dir / WARM_FILE)  # readers see the old or the new value, never half


def stop(run_id: str, runs_dir: Path | None = None, actor: Actor = OPERATOR) -> str:
    """Stop a run. A queued run is stopped at once ("stopped"); a running or paused one gets a
    stop request its worker acts on, keeping its metrics ("requested"). KeyError for an
    unknown run, ValueError for one that has already ended, PermissionError unless `actor`
    may change it."""
    store = RunStore(runs_dir)
    run = store.check_actor(run_id, actor, "stop")
    if run.status == "queued":
        if store.set_status(run_id, "stopped", "stopped before it started", expect=["queued"]):
            return "stopped"
        run = store.get_run(run_id)  # a worker claimed it meanwhile
    if run.status in ACTIVE_STATUSES:
        store.request_control(run_id, "stop")
        return "requested"
    raise ValueError(f"run {run_id!r} has already ended ({run.status}); nothing to stop")


def pause(run_id: str, runs_dir: Path | None = None, actor: Actor = OPERATOR) -> str:
    """Ask a running run to pause ("requested"); "already paused" if it is paused and no
    resume is pending. PermissionError unless `actor` may change it."""
    return _request_switch(run_id, runs_dir, actor, "pause", "running", "paused")


def resume(run_id: str, runs_dir: Path | None = None, actor: Actor = OPERATOR) -> str:
    """Ask a paused run to go on ("requested"); "already running" if it is running and no
    pause is pending. PermissionError unless `actor` may change it."""
    return _request_switch(run_id, runs_dir, actor, "resume", "paused", "running")


def _request_switch(run_id: str, runs_dir: Path | None, actor: Actor, control: str,
                    source: str, target: str) -> str:
    """Request `control` for a run in `source` (or in `target` with the opposite request
    still pending, which this one overrides)."""
    store = RunStore(runs_dir)
    run = store.check_actor(run_id, actor, control)
    opposite = "resume" if control == "pause" else "pause"
    if run.status == source or (run.status == target
                                and opposite in store.pending_controls(run_id)):
        store.request_control(run_id, control)
        return "requested"
    if run.status == target:
        return f"already {target}"
    raise ValueError(_not_active(run_id, run.status, "paused" if control == "pause" else "resumed"))


def reconcile(runs_dir: Path | None = None, stale_after: float = HEARTBEAT_STALE_S) -> list[str]:
    """Mark `failed` every running/paused run whose heartbeat is older than `stale_after` s and
    whose worker process is gone. Their metrics, snapshots and checkpoints stay. Returns their
    ids. With Ray, the cluster is asked first (a dead task is known at once); a Ray run's pid is
    on another node, so only its heartbeat counts here (its actor is gone with the head)."""
    store = RunStore(runs_dir)
    _reap_children()
    failed = []
    if ray_address() is not None:
        try:
            failed += _ray().reconcile(store)
        except Exception:  # noqa: BLE001 - the cluster is down: the heartbeats below decide
            pass
    now = time.time()
    for run in store.list_runs(ACTIVE_STATUSES):
        beat = run.heartbeat_at or run.started_at or run.created_at
        local = placement(run)[0] == "local"
        if now - beat < stale_after or (local and run.pid is not None and pid_alive(run.pid)):
            continue
        message = (f"worker process died (pid {run.pid}) at step {run.step}; "
                   "metrics up to there are kept") if local else (
            f"its Ray task stopped reporting at step {run.step} (node or head lost); "
            "metrics up to there are kept")
        if store.set_status(run.id, "failed", message, expect=ACTIVE_STATUSES):
            failed.append(run.id)
    return failed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (an exited child nobody
    has waited for still answers kill(pid, 0))."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _not_active(run_id: str, status: str, verb: str) -> str:
    if status == "queued":
        return f"run {run_id!r} is queued and has not started; only a running run can be {verb}"
    return f"run {run_id!r} has already ended ({status}); only a live run can be {verb}"


def _live_workers(store: RunStore) -> list[tuple[int, str | None, float]]:
    """Registered workers that still exist; rows of dead ones are dropped."""
    now = time.time()
    live = []
    for pid, run_id, seen_at in store.workers():
        gone = not pid_alive(pid) or (run_id is None and now - seen_at > IDLE_WORKER_STALE_S)
        if gone:
            store.remove_worker(pid)
        else:
            live.append((pid, run_id, seen_at))
    return live


def _spawn_worker(store: RunStore, idle_timeout: float, max_jobs: int) -> int:
    """Start `python -m mtl_core.worker` in its own session, output to workers.log."""
    env = budget.worker_env(dict(os.environ), budget.available_cores(), max_jobs)
    # The worker must import this same mtl_core, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "mtl_core.worker",
               "--runs-dir", str(store.runs_dir.resolve()),
               "--idle-timeout", str(idle_timeout), "--max-jobs", str(max_jobs)]
    with open(store.runs_dir / "workers.log", "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    # Registered now (the worker re-registers itself), so a dispatch right after this one
    # counts it as waiting instead of starting another.
    store.add_worker(proc.pid, replace=False)
    with _children_lock:
        _children.append(proc)
    return proc.pid


def _reap_children() -> None:
    """Wait for our exited workers, so they do not linger as zombies."""
    with _children_lock:
        _children[:] = [p for p in _children if p.poll() is None]
