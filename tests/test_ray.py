"""The Ray executor (MTL_RAY_ADDRESS) on a local Ray cluster of this module's own.

One head (`ray start --head --num-cpus 2`) serves every test here, and one second "node" joins
it (`ray start --address=... --num-cpus 1` with a custom resource) for the placement and
node-loss tests; both are ended at the end of the module, by the process ids they started.
Without Ray installed the cluster tests skip, except in CI (CI=true), where they must run.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import wait_until
from ray_support import LocalCluster, free_port, ray_env

from mtl_core import cli, jobs
from mtl_core.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TINY = {"name": "tiny", "device": "cpu", "data": {"suite": "toy_2d", "params": {"n_samples": 400}},
        "model": {"trunk": {"type": "mlp", "layers": [16, 16]}, "heads": {"layers": [8]}},
        "optim": {"lr": 0.01, "batch_size": 64, "epochs": 2}, "log_every": 5}
LONG = {"optim": {"epochs": 400}, "log_every": 2}  # runs until stopped (minutes)

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not HAVE_RAY:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the Ray tests: ray is not installed (requirements-ray.txt)")
        pytest.skip("ray is not installed (pip install -r requirements-ray.txt)")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    local = LocalCluster()
    try:
        local.start("--head", "--num-cpus", "2", "--port", str(local.port),
                    "--include-dashboard=false", "--temp-dir", local.temp,
                    "--ray-client-server-port", str(free_port()))
        yield local
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        local.stop()


@pytest.fixture
def on_ray(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    monkeypatch.setenv("MTL_RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return cluster


def wait_for(condition: Callable[[], Any], timeout: float = 180.0,
             what: str = "the condition") -> Any:
    return wait_until(condition, timeout, what)


def _status(store: RunStore, run_id: str, *statuses: str) -> bool:
    return store.get_run(run_id).status in statuses


def _show_json(runs_dir: Path, run_id: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--runs-dir", str(runs_dir), "show", run_id, "--json"]) == 0
    return json.loads(out.getvalue())


def _cli(runs_dir: Path, *args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["--runs-dir", str(runs_dir), *args])
    return code, err.getvalue()


def _head_node_id() -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes()
                if n["Alive"] and "node:__internal_head__" in n["Resources"])


def _config_file(tmp_path: Path, doc: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- without an address -------------------------------------------------------------------------

def test_without_an_address_nothing_imports_ray(tmp_path: Path, runs_dir: Path) -> None:
    code = (
        "import sys, json, io, contextlib\n"
        "from mtl_core import jobs, cli\n"
        f"rid = jobs.submit({TINY!r}, {str(runs_dir)!r}, start=False)\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    cli.main(['--runs-dir', {str(runs_dir)!r}, 'show', rid, '--json'])\n"
        "doc = json.loads(out.getvalue())\n"
        "print(doc['executor'], doc['node'], 'ray' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTL_RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["local", "None", "False"]


def test_an_address_without_ray_installed_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray -> ImportError
            "from mtl_core.cli import main\n"
            f"sys.exit(main(['--runs-dir', {str(runs_dir)!r}, 'train', sys.argv[1], "
            "'--ray', '127.0.0.1:1']))\n")
    done = subprocess.run([sys.executable, "-c", code, str(_config_file(tmp_path, TINY))],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Ray cannot be imported" in done.stderr and "requirements-ray.txt" in done.stderr
    assert RunStore(runs_dir).list_runs() == []


def test_the_runs_page_shows_the_executor_and_the_node(runs_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from mtl_core.config import parse_config

    store = RunStore(runs_dir)
    ray_run, local_run = (store.create_run(parse_config(TINY)) for _ in range(2))
    store.set_status(ray_run, "finished", summary={"executor": "ray", "node": "gpu-7",
                                                   "node_id": "abcdef0123456789"})
    store.set_status(local_run, "finished")
    captions = {}
    for run_id in (ray_run, local_run):
        at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60)
        at.query_params["run"] = run_id
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        captions[run_id] = " ".join(c.value for c in at.caption)
    assert "executor ray on node gpu-7 (abcdef01)" in captions[ray_run]
    assert "executor local" in captions[local_run] and "on node" not in captions[local_run]


def test_what_a_task_asks_for(monkeypatch: pytest.MonkeyPatch,
                              tiny_doc: Callable[..., dict[str, Any]]) -> None:
    if not HAVE_RAY and os.environ.get("CI") != "true":
        pytest.skip("ray is not installed")
    from mtl_core import budget, ray_executor
    from mtl_core.config import parse_config

    cpu_node, gpu_node = {"CPU": 8.0}, {"CPU": 4.0, "GPU": 2.0}

    def request(changes: dict[str, Any], nodes: list[dict[str, float]]) -> tuple[int, int]:
        asked = ray_executor.task_request(parse_config(tiny_doc(changes)), nodes)
        return asked["num_cpus"], asked["num_gpus"]

    assert request({"device": "cuda"}, [cpu_node, gpu_node]) == (1, 1)
    assert request({"device": "cuda:1"}, [gpu_node]) == (1, 1)
    assert request({"device": "auto"}, [cpu_node, gpu_node]) == (1, 1)  # a GPU is there
    assert request({"device": "auto"}, [cpu_node]) == (1, 0)
    assert request({"device": "cpu"}, [gpu_node]) == (1, 0)  # a small MLP: one thread
    # A large model: its share of the cores (16 / 2 jobs), at most what the largest node has.
    monkeypatch.setattr(budget, "available_cores", lambda: 16)
    monkeypatch.setenv("MTL_MAX_JOBS", "2")
    large = {"device": "cpu", "model": {"trunk": {"type": "mlp", "layers": [1024, 1024]}}}
    assert request(large, [cpu_node, gpu_node]) == (8, 0)
    assert request(large, [{"CPU": 2.0}, {"CPU": 6.0}]) == (6, 0)
    monkeypatch.setenv("MTL_RAY_RESOURCES", '{"pool": 1}')
    assert ray_executor.task_request(parse_config(tiny_doc()), [cpu_node])["resources"] == {
        "pool": 1.0}
    monkeypatch.setenv("MTL_RAY_RESOURCES", "[1]")
    with pytest.raises(ValueError, match="MTL_RAY_RESOURCES must be a JSON object"):
        ray_executor.task_request(parse_config(tiny_doc()), [cpu_node])


# -- on the cluster -----------------------------------------------------------------------------

def test_a_run_on_ray_reports_back_to_the_store(on_ray: LocalCluster, runs_dir: Path,
                                                tiny_doc: Callable[..., dict[str, Any]]
                                                ) -> None:
    store = RunStore(runs_dir)
    run_id = jobs.submit(tiny_doc(), runs_dir)
    wait_for(lambda: _status(store, run_id, "finished", "failed", "stopped"), what="the run")
    run = store.get_run(run_id)
    assert run.status == "finished", (run.message, (runs_dir / run_id / "error.txt").read_text()
                                      if (runs_dir / run_id / "error.txt").exists() else "")
    assert run.step == run.total_steps > 0
    frame = store.metrics(run_id)
    assert len(frame[(frame.split == "val") & (frame.name == "loss")]) > 0
    assert store.snapshots(run_id, "probe") and store.latest_snapshot(run_id, "predictions")
    assert "final" in store.checkpoints(run_id)
    assert store.load_checkpoint(run_id)["step"] == run.step
    doc = _show_json(runs_dir, run_id)
    assert doc["executor"] == "ray" and doc["status"] == "finished"
    assert doc["summary"]["node_id"] == _head_node_id()
    assert doc["node"].endswith(f"({_head_node_id()[:8]})")
    assert doc["summary"]["ray_request"] == {"num_cpus": 1, "num_gpus": 0, "resources": {}}
    assert doc["summary"]["test"]  # the trainer's own summary is kept beside the placement


def test_a_sweep_from_the_cli_spreads_over_the_cluster(cluster: LocalCluster, tmp_path: Path,
                                                       runs_dir: Path,
                                                       tiny_doc: Callable[..., dict[str, Any]]
                                                       ) -> None:
    cfg = _config_file(tmp_path, tiny_doc({"data": {"suite": "synthetic_mmoe",
                                                    "params": {"n_samples": 300}},
                                           "optim": {"epochs": 1}}))
    env = dict(ray_env(), MTL_RUNS_DIR=str(runs_dir))
    done = subprocess.run([sys.executable, "-m", "mtl_core", "sweep", str(cfg), "--grid", "3",
                           "--ray", cluster.address], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = RunStore(runs_dir).list_runs()
    assert len(runs) == 3
    assert {r.status for r in runs} == {"finished"}
    assert {jobs.placement(r)[0] for r in runs} == {"ray"}


def test_queued_in_ray_then_stop_pause_resume(on_ray: LocalCluster, runs_dir: Path,
                                              tiny_doc: Callable[..., dict[str, Any]]) -> None:
    store = RunStore(runs_dir)
    # The head has 2 CPUs and each run asks for one: the third waits in Ray, queued here.
    ids = [jobs.submit(tiny_doc(LONG), runs_dir) for _ in range(3)]
    wait_for(lambda: sum(_status(store, i, "running") and store.get_run(i).step > 0
                         for i in ids) == 2, what="two runs training")
    waiting = next(i for i in ids if _status(store, i, "queued"))
    first, second = (i for i in ids if i != waiting)
    assert jobs.stop(waiting, runs_dir) == "stopped"  # its task will find nothing to claim

    assert jobs.pause(first, runs_dir) == "requested"
    wait_for(lambda: _status(store, first, "paused"), what="paused")
    steps = store.get_run(first).step
    time.sleep(1.5)
    assert store.get_run(first).step == steps  # paused: no training
    assert jobs.resume(first, runs_dir) == "requested"
    wait_for(lambda: _status(store, first, "running") and store.get_run(first).step > steps,
             what="resumed")
    for run_id in (first, second):
        assert jobs.stop(run_id, runs_dir) == "requested"
    wait_for(lambda: all(_status(store, i, "stopped") for i in (first, second)), what="stopped")
    rows = store.metrics(first)
    assert rows.step.max() >= steps  # everything reported before the stop is kept
    assert store.get_run(waiting).status == "stopped" and len(store.metrics(waiting)) == 0
    assert "last" in store.checkpoints(first) or "final" in store.checkpoints(first)


def test_an_owner_over_the_active_quota_waits_queued(on_ray: LocalCluster, runs_dir: Path,
                                                     tiny_doc: Callable[..., dict[str, Any]]
                                                     ) -> None:
    from mtl_core.owners import OPERATOR, Actor

    store = RunStore(runs_dir)
    store.set_limits(OPERATOR, max_active_per_owner=1)  # limits.json: the actor reads it too
    alice = Actor("alice-id", "Alice")
    ids = [jobs.submit(tiny_doc(LONG), runs_dir, owner=alice) for _ in range(2)]
    # Either may start first (Ray's order); the other must wait while Alice is at her quota.
    first = wait_for(lambda: next((i for i in ids if store.get_run(i).step > 0), None),
                     what="one of Alice's runs training")
    second = next(i for i in ids if i != first)
    time.sleep(3.0)  # a free CPU on the head, but Alice is at her quota
    assert store.get_run(second).status == "queued"
    jobs.stop(first, runs_dir)
    wait_for(lambda: store.get_run(second).step > 0, what="her second run once the first ended")
    jobs.stop(second, runs_dir)
    wait_for(lambda: _status(store, second, "stopped"), what="stopped")


def test_a_killed_task_leaves_its_run_failed_with_its_metrics(
        on_ray: LocalCluster, runs_dir: Path, tiny_doc: Callable[..., dict[str, Any]]) -> None:
    store = RunStore(runs_dir)
    run_id = jobs.submit(tiny_doc(LONG), runs_dir)
    wait_for(lambda: store.get_run(run_id).step >= 10, what="some steps")
    before = len(store.metrics(run_id))
    os.kill(store.get_run(run_id).pid, signal.SIGKILL)  # the task's process (OOM killer alike)
    # Nobody calls reconcile: the store's actor sees its task's ObjectRef fail.
    wait_for(lambda: _status(store, run_id, "failed"), timeout=60, what="failed")
    run = store.get_run(run_id)
    assert "Ray task" in run.message and "kept" in run.message
    assert len(store.metrics(run_id)) >= before > 0
    assert jobs.placement(run)[0] == "ray"


def test_a_finished_run_survives_the_store_actor_and_queued_runs_are_adopted(
        on_ray: LocalCluster, runs_dir: Path, tiny_doc: Callable[..., dict[str, Any]]) -> None:
    import ray

    from mtl_core import ray_executor

    store = RunStore(runs_dir)
    done = jobs.submit(tiny_doc(), runs_dir)
    wait_for(lambda: _status(store, done, "finished"), what="finished")
    metrics = len(store.metrics(done))
    live = jobs.submit(tiny_doc(LONG), runs_dir)
    wait_for(lambda: store.get_run(live).step > 0, what="training")
    # The head (or the actor with it) goes away: its tasks go with it.
    ray.kill(ray.get_actor(ray_executor.actor_name(store), namespace=ray_executor.NAMESPACE))
    time.sleep(2.0)
    assert jobs.reconcile(runs_dir, stale_after=1.0) == [live]  # its heartbeat stopped
    assert "stopped reporting" in store.get_run(live).message
    run = store.get_run(done)
    assert run.status == "finished" and len(store.metrics(done)) == metrics
    # A run still queued when the actor went: the next dispatch gives it a task again.
    queued = store.create_run(__import__("mtl_core.config").config.parse_config(tiny_doc()))
    store.set_status(queued, "queued", expect=["queued"], summary={
        "executor": "ray", "ray_request": {"num_cpus": 1, "num_gpus": 0, "resources": {}}})
    jobs.dispatch(runs_dir)
    wait_for(lambda: _status(store, queued, "finished"), what="the adopted run")


def test_bad_input_is_refused_at_submit(cluster: LocalCluster, tmp_path: Path, runs_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        tiny_doc: Callable[..., dict[str, Any]]) -> None:
    monkeypatch.setenv("MTL_RAY_ADDRESS", cluster.address)  # restored after --ray overrides
    cases = [
        (tiny_doc(), ["--ray", f"127.0.0.1:{free_port()}"], "no Ray cluster answers"),
        (tiny_doc(), ["--ray", "not-an-address"], "HOST:PORT"),
        (tiny_doc({"device": "cuda"}), ["--ray", cluster.address], "GPU 1"),
    ]
    for doc, extra, expected in cases:
        code, err = _cli(runs_dir, "train", str(_config_file(tmp_path, doc)), *extra)
        assert code == 2 and expected in err, err
    monkeypatch.setenv("MTL_RAY_RESOURCES", '{"no_such_pool": 1}')
    code, err = _cli(runs_dir, "sweep", str(_config_file(tmp_path, tiny_doc())), "--grid", "3",
                     "--ray", cluster.address)
    assert code == 2 and "no_such_pool 1" in err and "nothing was queued" in err, err
    monkeypatch.delenv("MTL_RAY_RESOURCES")
    assert RunStore(runs_dir).list_runs() == []

    # A Ray version other than the cluster's (this process pretends to have another).
    code = ("import sys, ray; ray.__version__ = '2.59.0'\n"
            "from mtl_core.cli import main\n"
            f"sys.exit(main(['--runs-dir', {str(runs_dir)!r}, 'train', sys.argv[1]]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(_config_file(tmp_path, tiny_doc()))],
                          cwd=ROOT, env=dict(ray_env(), MTL_RAY_ADDRESS=cluster.address),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Ray version mismatch" in done.stderr and "2.59.0" in done.stderr
    assert RunStore(runs_dir).list_runs() == []


def test_a_second_node_runs_what_only_it_can_and_its_loss_fails_the_run(
        on_ray: LocalCluster, runs_dir: Path, monkeypatch: pytest.MonkeyPatch,
        tiny_doc: Callable[..., dict[str, Any]]) -> None:
    import ray

    on_ray.start("--address", on_ray.address, "--num-cpus", "1",
                 "--resources", '{"second_node": 1}')
    node_id = wait_for(lambda: next((n["NodeID"] for n in ray.nodes() if n["Alive"]
                                     and "second_node" in n["Resources"]), None),
                       what="the second node")
    monkeypatch.setenv("MTL_RAY_RESOURCES", '{"second_node": 1}')
    store = RunStore(runs_dir)
    run_id = jobs.submit(tiny_doc(), runs_dir)
    wait_for(lambda: _status(store, run_id, "finished", "failed"), what="the run")
    run = store.get_run(run_id)
    assert run.status == "finished", run.message
    assert run.summary["node_id"] == node_id != _head_node_id()

    # The node is lost mid-run: the run fails, its metrics kept.
    long_id = jobs.submit(tiny_doc(LONG), runs_dir)
    wait_for(lambda: store.get_run(long_id).step >= 10, what="training on the second node")
    before = len(store.metrics(long_id))
    on_ray.kill_group(on_ray.groups.pop())
    wait_for(lambda: _status(store, long_id, "failed"), timeout=120, what="failed")
    assert "Ray" in store.get_run(long_id).message
    assert len(store.metrics(long_id)) >= before > 0
