"""The Ray executor: every run is a Ray task on the cluster at $MTL_RAY_ADDRESS.

Only mtl_core.jobs imports this module, and only when the address is set: without it nothing
imports Ray and local worker processes train as before.

- The run store on the machine that serves the pages stays the single source of truth. Next to
  it lives a `StoreActor`: a named, detached Ray actor pinned (node affinity) to the store's
  node, that wraps RunStore's public methods. A task on any node reaches the store only through
  it (`RemoteStore`), so metrics, snapshots, checkpoints and statuses flow back, and stop /
  pause / resume requests are read the same way (the trainer's `StoreSink` is used unchanged).
- The actor also submits the tasks, so it owns them: they outlive the short-lived CLI process
  that queued them, and the actor, holding their ObjectRefs, is the one that can tell a task
  that died (node lost, out of memory, killed) from one still running. A thread in it checks
  them every WATCH_EVERY_S and marks such runs `failed`, keeping what they had reported.
- A task asks for `num_gpus=1` when its run's device is CUDA (or `auto` on a cluster with
  GPUs), and for CPUs by the core budget (mtl_core.budget: small models one CPU); Ray's own
  resource accounting is then the budget on every node. Replicas stay inside one task.
- A run waiting for resources is `queued` in the store until its task claims it (through the
  actor, which also holds the class's per-owner active quota: a task of an owner at it returns
  "deferred" and is launched again); the task records where it ran in the run's summary
  (`executor`, `node`, `node_ip`, `node_id`; `ray_request` is what it asked for).
Bad input at submit (an unreachable address, a cluster without the resources a run asks for,
a Ray version mismatch) raises RayExecutorError before anything is queued.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray

import mtl_core
from mtl_core import budget
from mtl_core.store import ACTIVE_STATUSES, LIVE_STATUSES, RunStore, StoreSink

ADDRESS_VAR = "MTL_RAY_ADDRESS"
RESOURCES_VAR = "MTL_RAY_RESOURCES"  # JSON {name: amount}: custom resources every task asks for
NAMESPACE = "mtl_lab"
CONNECT_TIMEOUT_S = 3.0  # the TCP check of the address before ray.init (which waits ~60 s)
WATCH_EVERY_S = 1.0  # how often the store actor checks its tasks
ACTOR_CONCURRENCY = 64  # store calls served at once (every task polls about twice a second)
PASSED_ENV = ("MTL_DATA_DIR",)  # the operator's settings a task needs on its node
# ... and the store's actor: the class quotas' defaults (limits.json, the teacher's, wins).
ACTOR_ENV = ("MTL_MAX_ACTIVE_PER_OWNER", "MTL_MAX_QUEUED_PER_OWNER")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent

_connected: str | None = None
_connect_lock = threading.Lock()  # the Streamlit server submits from several threads


class RayExecutorError(ValueError):
    """The cluster cannot take this run (raised at submit, before anything is queued)."""


# -- connecting -----------------------------------------------------------------------------------

def connect(address: str) -> None:
    """ray.init(address=...) once per process (again if the address changed)."""
    global _connected
    with _connect_lock:
        if ray.is_initialized() and _connected == address:
            return
        if address.startswith("ray://"):
            raise RayExecutorError(
                f"{ADDRESS_VAR}={address!r}: Ray Client (ray://) addresses are not supported; "
                "the machine that serves MTL Lab must be a node of the cluster (run "
                "`ray start --head` there, or `ray start --address=HEAD:PORT`), then set "
                f"{ADDRESS_VAR} to HEAD:PORT or 'auto'")
        if address != "auto":
            _check_reachable(address)
        if ray.is_initialized():
            ray.shutdown()
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR",
                     log_to_driver=False)
        except RuntimeError as exc:
            if "Version mismatch" in str(exc):
                raise RayExecutorError(
                    f"Ray version mismatch with the cluster at {address}: "
                    f"{' '.join(str(exc).split())}. Install the cluster's Ray and Python "
                    "versions here (pip install -r requirements-ray.txt on every machine), "
                    "or restart the cluster with this machine's") from None
            raise RayExecutorError(f"cannot join the Ray cluster at {address} "
                                   f"({ADDRESS_VAR}): {exc}") from None
        except (ConnectionError, ValueError) as exc:
            raise RayExecutorError(
                f"cannot join the Ray cluster at {address} ({ADDRESS_VAR}): {exc}. Start one "
                "with `ray start --head` on this machine, or fix the address") from None
        _connected = address


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayExecutorError(f"{ADDRESS_VAR}={address!r} is not an address: use HOST:PORT "
                               "(the head's GCS port, 6379 by default) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayExecutorError(
            f"no Ray cluster answers at {address} ({ADDRESS_VAR}): {exc.strerror or exc}. "
            "Start one with `ray start --head --port PORT` or fix the address; "
            "nothing was queued") from None


# -- what a run asks for --------------------------------------------------------------------------

def custom_resources() -> dict[str, float]:
    """$MTL_RAY_RESOURCES: custom Ray resources every task asks for (e.g. a node pool)."""
    text = os.environ.get(RESOURCES_VAR, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError):
        raise RayExecutorError(f"{RESOURCES_VAR} must be a JSON object of resource amounts, "
                               f'e.g. {{"gpu_pool": 1}} (got {text!r})') from None


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def task_request(cfg: Any, nodes: list[dict[str, float]]) -> dict[str, Any]:
    """Ray options of a run's task: GPUs by its device, CPUs by the core budget."""
    has_gpu = any(n.get("GPU", 0) >= 1 for n in nodes)
    gpus = 1 if cfg.device.startswith("cuda") or (cfg.device == "auto" and has_gpu) else 0
    step_macs = budget.estimate_step_macs(cfg)
    if gpus or (step_macs is not None and step_macs < budget.SMALL_STEP_MACS):
        cpus = 1  # a GPU run, or a model bound by Python overhead: one thread is as fast
    else:
        from mtl_core import jobs

        cpus = budget.cores_per_job(budget.available_cores(), jobs.max_concurrent())
        biggest = max((int(n.get("CPU", 0)) for n in nodes), default=cpus)
        cpus = max(1, min(cpus, biggest))  # no more than the largest node has
    return {"num_cpus": cpus, "num_gpus": gpus, "resources": custom_resources()}


def check(cfg: Any, address: str) -> dict[str, Any]:
    """Connect, and make sure some node of the cluster can run `cfg`; its task options."""
    connect(address)
    nodes = _alive_nodes()
    request = task_request(cfg, nodes)
    wanted = {"CPU": request["num_cpus"], "GPU": request["num_gpus"], **request["resources"]}
    if any(all(n.get(k, 0) >= v for k, v in wanted.items() if v) for n in nodes):
        return request
    have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items())
                               if k in ("CPU", "GPU") or k in request["resources"])
                     for n in nodes) or "no live node"
    asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items() if v)
    hint = (f"set device: cpu (or auto), or join a GPU node (ray start --address={address} "
            "--num-gpus=1)" if request["num_gpus"] else
            f"join a node that has them (ray start --address={address} ...) or change "
            f"{RESOURCES_VAR}")
    raise RayExecutorError(f"no node of the Ray cluster at {address} has what this run asks "
                           f"for (device {cfg.device!r}: {asked}); its nodes have: {have}. "
                           f"{hint}; nothing was queued")


# -- submitting -----------------------------------------------------------------------------------

def launch(store: RunStore, run_id: str, request: dict[str, Any]) -> None:
    """Mark a just-queued run as a Ray run and hand it to the store's actor, which submits
    its task."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    summary = {"executor": "ray", "ray_request": request, "ray_env": env}
    if not store.set_status(run_id, "queued", None, expect=["queued"], summary=summary):
        return  # taken meanwhile (a local worker of the same store), or stopped
    ray.get(store_actor(store).launch.remote(run_id, request, env))


def adopt(store: RunStore) -> int:
    """Launch tasks for queued Ray runs that have none (after a head or actor restart)."""
    return int(ray.get(store_actor(store).adopt.remote()))


def reconcile(store: RunStore) -> list[str]:
    """Ask the actor now (it also checks on its own): runs whose task died, marked failed."""
    return list(ray.get(store_actor(store).reconcile.remote()))


def actor_name(store: RunStore) -> str:
    """One actor per store (host and folder) and MTL Lab version: an upgrade gets a new one."""
    key = f"{socket.gethostname()}:{store.runs_dir.resolve()}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"mtl-store-{mtl_core.__version__}-{digest}"


def store_actor(store: RunStore) -> Any:
    """The store's actor, started on this node if it is not there yet."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    paths = [str(_PACKAGE_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                   if p]]
    return StoreActor.options(
        name=actor_name(store), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_concurrency=ACTOR_CONCURRENCY,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        # Inherited by the tasks it submits: the same mtl_core wherever the node has it there.
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths),
                                  **{k: os.environ[k] for k in ACTOR_ENV if k in os.environ}}},
    ).remote(str(store.runs_dir.resolve()))


# -- the actor next to the store -----------------------------------------------------------------

# RunStore's public methods a task may call through the actor (nothing else, nothing private).
STORE_METHODS = frozenset({
    "get_run", "claim_run", "set_status", "set_progress", "heartbeat", "add_metrics",
    "add_snapshot", "add_many", "take_control", "pending_controls", "save_checkpoint",
})


@ray.remote
class StoreActor:
    def __init__(self, runs_dir: str) -> None:
        self.store = RunStore(runs_dir)
        self.tasks: dict[str, ray.ObjectRef] = {}  # run id -> its task's result
        self.requests: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}  # for re-launch
        self.lock = threading.Lock()
        self.claim_lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="mtl-watch").start()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in STORE_METHODS:
            raise AttributeError(f"the store actor does not serve {method!r}")
        return getattr(self.store, method)(*args, **kwargs)

    def claim(self, run_id: str, pid: int) -> str:
        """Claim a run for a task that got its resources, unless its owner is at the class's
        per-owner active quota ("deferred"). One lock: two tasks of one owner starting at
        once cannot both pass the check."""
        with self.claim_lock:
            place = self.store.queue_place(run_id)
            if place is None:
                return "not queued"
            if place.owner_cap and place.owner_active >= place.owner_cap:
                return "deferred"
            return "claimed" if self.store.claim_run(pid, run_id) else "not queued"

    def write_error(self, run_id: str, text: str) -> None:
        (self.store.run_dir(run_id) / "error.txt").write_text(text)

    def launch(self, run_id: str, request: dict[str, Any], env: dict[str, str]) -> bool:
        with self.lock:
            if run_id in self.tasks:
                return False
            self.requests[run_id] = (request, env)
            self.tasks[run_id] = run_task.options(
                num_cpus=request["num_cpus"], num_gpus=request["num_gpus"],
                resources=request["resources"] or None,
            ).remote(actor_name(self.store), run_id, mtl_core.__version__, env)
        return True

    def adopt(self) -> int:
        launched = 0
        for run in self.store.list_runs(["queued"]):
            if run.summary.get("executor") == "ray" and run.summary.get("ray_request"):
                launched += self.launch(run.id, run.summary["ray_request"],
                                        run.summary.get("ray_env", {}))
        return launched

    def reconcile(self) -> list[str]:
        with self.lock:
            items = list(self.tasks.items())
        if not items:
            return []
        ready, _ = ray.wait([ref for _, ref in items], num_returns=len(items), timeout=0)
        done = set(ready)
        failed = []
        for run_id, ref in items:
            if ref not in done:
                continue
            with self.lock:
                self.tasks.pop(run_id, None)
            try:
                outcome = ray.get(ref)
                if outcome == "deferred":  # its owner is at the active quota: try again
                    self.launch(run_id, *self.requests[run_id])
                    continue
                self.requests.pop(run_id, None)
                if outcome != "claimed":
                    continue  # the run was no longer queued (stopped, or taken): nothing to do
                message = "its Ray task ended without reporting a final status"
            except Exception as exc:  # noqa: BLE001 - every way a task can die
                self.requests.pop(run_id, None)
                message = describe_failure(exc)
            try:
                run = self.store.get_run(run_id)
            except KeyError:
                continue  # deleted
            if run.status in LIVE_STATUSES and self.store.set_status(
                    run_id, "failed", f"{message} at step {run.step}; what it reported is kept",
                    expect=LIVE_STATUSES):
                failed.append(run_id)
        return failed

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - keep watching; the next pass retries
                traceback.print_exc()


def describe_failure(exc: BaseException) -> str:
    """Why a Ray task died, in words."""
    from ray import exceptions as rx

    if isinstance(exc, rx.OutOfMemoryError):
        return "Ray killed its task: the node ran out of memory"
    if isinstance(exc, rx.NodeDiedError):
        return "its Ray node was lost"
    if isinstance(exc, rx.WorkerCrashedError):
        return "its Ray task's process died (killed, out of memory, or `ray stop`)"
    if isinstance(exc, rx.TaskCancelledError):
        return "its Ray task was cancelled"
    if isinstance(exc, rx.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        lines = traceback.format_exception_only(type(cause), cause)
        return (f"its Ray task failed on its node ({''.join(lines).strip().splitlines()[-1]}); "
                "every node needs the same MTL Lab and data (README: More than one machine)")
    return f"its Ray task was lost ({type(exc).__name__}: {exc})"


# -- the task on a node ---------------------------------------------------------------------------

class RemoteStore:
    """The RunStore methods a task needs, each a call to the store's actor.

    Every call goes through one thread of this process: one task's writes arrive in order,
    and a task blocked in ray.get would lend its CPU to another task (Ray's rule for nested
    calls: a third run would start on a 2-CPU node), which a call from a thread that is not
    the task's does not do."""

    def __init__(self, actor: str) -> None:
        self.handle = self.submit(ray.get_actor, actor, namespace=NAMESPACE)

    @staticmethod
    def submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return _caller().submit(fn, *args, **kwargs).result()

    def __getattr__(self, method: str) -> Any:
        if method not in STORE_METHODS:
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.submit(lambda: ray.get(self.handle.call.remote(method, *args,
                                                                       **kwargs)))
        return call


_CALLER: ThreadPoolExecutor | None = None


def _caller() -> ThreadPoolExecutor:
    global _CALLER
    if _CALLER is None:
        _CALLER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtl-store")
    return _CALLER


class CpuCheckpointSink(StoreSink):
    """StoreSink over the actor; checkpoints travel as CPU tensors (the store's node may
    have no GPU)."""

    def checkpoint(self, state: dict[str, Any], name: str) -> None:
        self.store.save_checkpoint(self.run_id, _to_cpu(state), name)


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


@ray.remote(max_retries=0)  # a retry would train again over what the first try reported
def run_task(actor: str, run_id: str, version: str, env: dict[str, str]) -> str:
    """Train one run on this node; "claimed" once it took the run, "deferred" when its owner
    already has as many active runs as the class quota allows (the actor launches it again;
    the store's per-owner cap holds on the cluster too), "not queued" otherwise."""
    store: Any = RemoteStore(actor)
    if mtl_core.__version__ != version:
        store.set_status(run_id, "failed", f"node {socket.gethostname()} has MTL Lab "
                         f"{mtl_core.__version__}, the store {version}: install the same "
                         "version on every node", expect=["queued"])
        return "not queued"
    pid = os.getpid()
    outcome = store.submit(lambda: ray.get(store.handle.claim.remote(run_id, pid)))
    if outcome != "claimed":
        return str(outcome)
    context = ray.get_runtime_context()
    placement = {"executor": "ray", "node": socket.gethostname(),
                 "node_ip": ray.util.get_node_ip_address(), "node_id": context.get_node_id()}
    status, message, fields = "failed", None, {"summary": placement}
    try:
        for key in PASSED_ENV:  # this worker process may have served another run before
            os.environ.pop(key, None)
        os.environ.update(env)
        from mtl_core import trainer
        from mtl_core.config import parse_config

        run = store.get_run(run_id)
        placement = {**run.summary, **placement}
        fields = {"summary": placement}
        cfg = parse_config(run.config)
        # Ray gives the task its GPU as the only visible one: cuda:N means "a GPU" here.
        device = trainer.resolve_device("cuda" if cfg.device.startswith("cuda") else cfg.device)
        store.set_status(run_id, "running", device=str(device), summary=placement,
                         expect=ACTIVE_STATUSES)
        import torch

        torch.set_num_threads(max(1, int(context.get_assigned_resources().get("CPU", 1))))
        result = trainer.train(cfg, CpuCheckpointSink(store, run_id))
        status, message = result.status, result.message
        fields = {"step": result.steps, "summary": {**result.summary, **placement}}
    except BaseException as exc:  # noqa: BLE001 - any failure must end as "failed"
        lines = traceback.format_exception_only(type(exc), exc)
        message = "".join(lines).strip().splitlines()[-1]
        text = traceback.format_exc()
        store.submit(lambda: ray.get(store.handle.write_error.remote(run_id, text)))
    store.set_status(run_id, status, message, expect=ACTIVE_STATUSES, **fields)
    return "claimed"
