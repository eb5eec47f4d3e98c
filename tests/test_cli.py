"""The command line: a train/show/export round trip, overrides, and refusing bad input."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtl_core import cli, jobs
from mtl_core.config import ConfigError, ExperimentConfig
from mtl_core.store import RunInfo, RunStore

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["circle", "xor", "spiral", "distance"]


def write_config(tmp_path: Path, document: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse refusing its input
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def finished_store(tmp_path: Path) -> RunStore:
    """A store with one finished run written directly (no training)."""
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(ExperimentConfig.model_validate({"name": "demo",
                                                              "data": {"suite": "toy_2d"}}))
    store.set_status(run_id, "running", pid=1)
    store.add_metrics(run_id, [(1, 0.1, "train", "circle", "loss", 0.7),
                               (1, 0.1, "train", "total", "loss", float("nan")),
                               (8, 1.0, "val", "circle", "accuracy", 0.75)])
    store.set_status(run_id, "finished", step=8, total_steps=8,
                     summary={"test": {"circle": {"loss": 0.25, "accuracy": 0.875}}})
    return store


# -- the round trip -------------------------------------------------------------------------------

def test_train_show_export_round_trip(tmp_path: Path, runs_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"name": "round-trip", "data": {"suite": "toy_2d"},
                                     "optim": {"epochs": 3}})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MTL_RUNS_DIR": str(tmp_path / "unused")}
    proc = subprocess.run(
        [sys.executable, "-m", "mtl_core", "train", str(config), "--runs-dir", str(runs_dir),
         "--set", "optim.epochs=1", "--set", "tasks.0.weight=0.5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]  # the run id is the last line of stdout
    assert "circle" in proc.stdout and "accuracy" in proc.stdout  # final test metrics
    assert f"run {run_id} finished" in proc.stderr and "step 8/8" in proc.stderr
    assert not (tmp_path / "unused").exists()  # --runs-dir wins over MTL_RUNS_DIR

    store = RunStore(runs_dir)
    run = store.get_run(run_id)
    assert run.status == "finished" and run.config["optim"]["epochs"] == 1
    assert [t["weight"] for t in run.config["tasks"]] == [0.5, 1.0, 1.0, 1.0]

    code, out, _ = run_cli(capsys, "show", run_id, "--runs-dir", str(runs_dir))
    assert code == 0
    assert "finished" in out and "round-trip" in out and "test metrics (final)" in out
    table = out.split("test metrics (final):\n")[1].split("\n\n")[0].splitlines()
    assert table[0].split()[:2] == ["task", "loss"]
    assert [line.split()[0] for line in table[1:]] == TASKS
    circle = run.summary["test"]["circle"]
    assert table[1].split()[1:3] == [f"{circle['loss']:.4g}", f"{circle['accuracy']:.4g}"]

    code, out, _ = run_cli(capsys, "--runs-dir", str(runs_dir), "show", run_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "finished" and shown["id"] == run_id
    assert set(shown["summary"]["test"]) == set(TASKS)
    assert "final" in shown["checkpoints"] and shown["config"]["name"] == "round-trip"

    logged = store.metrics(run_id)
    code, out, _ = run_cli(capsys, "export", run_id, "--format", "csv",
                           "--runs-dir", str(runs_dir))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == len(logged) > 0
    assert list(rows[0]) == ["step", "epoch", "split", "task", "name", "value", "time",
                            "replica"]
    assert {r["split"] for r in rows} >= {"train", "val", "test"}
    assert float(rows[0]["value"]) == pytest.approx(logged["value"].iloc[0])

    out_file = tmp_path / "exports" / "metrics.json"
    code, _, err = run_cli(capsys, "export", run_id, "--format", "json", "--out", str(out_file),
                           "--runs-dir", str(runs_dir))
    exported = json.loads(out_file.read_text())
    assert code == 0 and f"wrote {len(logged)} metric rows" in err
    assert exported["run"]["status"] == "finished" and len(exported["metrics"]) == len(logged)
    assert exported["metrics"][-1]["split"] == "test"

    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(runs_dir))
    header, line = out.splitlines()
    assert header.split() == ["id", "name", "owner", "suite", "arch", "method", "status",
                              "step/total", "duration"]
    assert line.split()[:8] == [run_id, "round-trip", "operator", "toy_2d", "hard_sharing",
                                "static", "finished", "8/8"]


def test_ctrl_c_stops_the_run_and_waits(tmp_path: Path, runs_dir: Path) -> None:
    config = write_config(tmp_path, {"data": {"suite": "toy_2d",
                                              "params": {"n_samples": 200, "n_test": 50}},
                                     "optim": {"epochs": 5000, "batch_size": 16,
                                               "eval_every": 10_000_000}, "log_every": 2})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtl_core", "train", str(config), "--runs-dir", str(runs_dir)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            runs = RunStore(runs_dir).list_runs() if (runs_dir / "runs.db").exists() else []
            if runs and runs[0].step >= 4:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("the run did not start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = RunStore(runs_dir).get_run(runs[0].id)
    assert proc.returncode == 1, err
    assert out.splitlines()[-1] == run.id
    assert f"stopping run {run.id}" in err and f"run {run.id} stopped" in err
    assert run.status == "stopped" and set(run.summary["test"]) == set(TASKS)


def test_detach_prints_the_run_id_last(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    submitted = []
    monkeypatch.setattr(jobs, "submit",
                        lambda cfg, runs_dir, start: submitted.append((cfg, start)) or "RID-1")
    config = write_config(tmp_path, {"data": {"suite": "toy_2d"}})
    code, out, err = run_cli(capsys, "train", str(config), "--detach",
                             "--runs-dir", str(tmp_path / "runs"), "--set", "optim.lr=0.01")
    assert code == 0 and out.splitlines()[-1] == "RID-1" and "queued run RID-1" in err
    assert submitted[0][0].optim.lr == 0.01
    assert submitted[0][1] is True  # queued for the workers, not trained here


# -- overrides -------------------------------------------------------------------------------------

def test_apply_overrides_types_and_defaults() -> None:
    document = {"data": {"suite": "toy_2d"}, "optim": {"lr": 0.1}}
    out = cli.apply_overrides(document, [
        "optim.epochs=2", "optim.lr=5e-3", "tasks.1.weight=0", "model.trunk.layers=[16, 8]",
        "model.heads.layers.0=4", "name=my run", "model.trunk.batch_norm=true"])
    assert out["optim"] == {"lr": 0.005, "epochs": 2}
    assert out["tasks"] == [{"name": n, "weight": 0.0 if n == "xor" else 1.0} for n in TASKS]
    assert out["model"]["trunk"] == {"layers": [16, 8], "batch_norm": True}
    assert out["model"]["heads"]["layers"] == [4]  # default [32], first item replaced
    assert out["name"] == "my run"
    assert document == {"data": {"suite": "toy_2d"}, "optim": {"lr": 0.1}}  # not modified


@pytest.mark.parametrize("override, path, says", [
    ("optim.epochs", "", "--set expects key.path=value"),
    ("optim..lr=1", "", "--set expects key.path=value"),
    ("tasks.7.weight=1", "tasks.7", "it has 4 items (0 to 3)"),
    ("optim.lr.value=1", "optim.lr.value", "optim.lr is a value"),
    ("optim.lr=[1", "optim.lr", "not valid YAML"),
])
def test_apply_overrides_refuses_bad_paths(override: str, path: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        cli.apply_overrides({"data": {"suite": "toy_2d"}, "optim": {"lr": 0.1}}, [override])
    assert info.value.errors[0].path == path and says in info.value.errors[0].message


# -- bad input: exit 2 with a message naming what is wrong -----------------------------------------

def test_bad_config_exits_2_naming_each_field(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"data": {"suite": "toy_2d"},
                                     "optim": {"lr": -1, "optimiser": "adam"}})
    code, out, err = run_cli(capsys, "train", str(config), "--runs-dir", str(tmp_path / "r"))
    assert code == 2 and out == ""
    assert f"invalid config {config}" in err
    assert "optim.lr: Input should be greater than 0" in err
    assert "optim.optimiser: unknown field" in err
    assert not (tmp_path / "r").exists()  # nothing was queued

    # Overrides are applied before validation: one can mend a field, another break one.
    config = write_config(tmp_path, {"data": {"suite": "toy_2d"}, "optim": {"lr": -1}})
    code, _, err = run_cli(capsys, "train", str(config), "--set", "optim.lr=0.1",
                           "--set", "data.suite=toys", "--runs-dir", str(tmp_path / "r"))
    assert code == 2 and "optim.lr" not in err and "data.suite: unknown suite 'toys'" in err
    assert "toy_2d" in err  # what is allowed


def test_unreadable_and_invalid_yaml_configs_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read config" in err and "missing.yaml" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    code, _, err = run_cli(capsys, "train", str(bad), "--runs-dir", str(tmp_path / "r"))
    assert code == 2 and "is not valid YAML" in err


def test_bad_max_jobs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTL_MAX_JOBS", "lots")
    config = write_config(tmp_path, {"data": {"suite": "toy_2d"}})
    code, _, err = run_cli(capsys, "train", str(config), "--runs-dir", str(tmp_path / "r"))
    assert code == 2 and "MTL_MAX_JOBS must be a positive integer (got 'lots')" in err


@pytest.mark.parametrize("command", [["show", "nope"], ["show", "nope", "--json"],
                                     ["export", "nope", "--format", "csv"],
                                     ["stop", "nope"], ["pause", "nope"], ["resume", "nope"]])
def test_unknown_run_exits_2(finished_store: RunStore, capsys: pytest.CaptureFixture[str],
                             command: list[str]) -> None:
    code, out, err = run_cli(capsys, *command, "--runs-dir", str(finished_store.runs_dir))
    assert code == 2 and out == ""
    assert "unknown run 'nope'" in err and "python -m mtl_core runs" in err


def test_missing_store_and_bad_arguments_exit_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                finished_store: RunStore) -> None:
    code, _, err = run_cli(capsys, "show", "x", "--runs-dir", str(tmp_path / "none"))
    assert code == 2 and "no run store in" in err and not (tmp_path / "none").exists()
    run_id = finished_store.list_runs()[0].id
    code, _, err = run_cli(capsys, "export", run_id, "--format", "xml",
                           "--runs-dir", str(finished_store.runs_dir))
    assert code == 2 and "invalid choice: 'xml'" in err and "'csv', 'json'" in err
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


def test_runs_dir_option_before_or_after_the_command(finished_store: RunStore, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTL_RUNS_DIR", str(tmp_path / "elsewhere"))
    run_id = finished_store.list_runs()[0].id
    where = str(finished_store.runs_dir)
    for argv in (["--runs-dir", where, "show", run_id], ["show", run_id, "--runs-dir", where]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and run_id in out, err
    code, _, err = run_cli(capsys, "show", run_id)  # MTL_RUNS_DIR is the default
    assert code == 2 and "elsewhere" in err
    monkeypatch.setenv("MTL_RUNS_DIR", where)
    assert run_cli(capsys, "show", run_id)[0] == 0


def test_control_of_an_ended_run_exits_2(finished_store: RunStore,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run_id = finished_store.list_runs()[0].id
    for command in ("stop", "pause", "resume"):
        code, _, err = run_cli(capsys, command, run_id, "--runs-dir",
                               str(finished_store.runs_dir))
        assert code == 2 and "has already ended (finished)" in err


def test_control_commands_reach_the_store(finished_store: RunStore,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = finished_store
    queued = store.create_run(ExperimentConfig.model_validate({"data": {"suite": "toy_2d"}}))
    code, out, _ = run_cli(capsys, "stop", queued, "--runs-dir", str(store.runs_dir))
    assert code == 0 and out.strip() == f"run {queued}: stopped"
    assert store.get_run(queued).status == "stopped"
    running = store.create_run(ExperimentConfig.model_validate({"data": {"suite": "toy_2d"}}))
    store.claim_run(os.getpid())
    code, out, _ = run_cli(capsys, "pause", running, "--runs-dir", str(store.runs_dir))
    assert code == 0 and out.strip() == f"pause requested for run {running}"
    assert store.pending_controls(running) == ["pause"]


def test_export_refuses_to_overwrite(finished_store: RunStore, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_id = finished_store.list_runs()[0].id
    target = tmp_path / "keep.csv"
    target.write_text("precious\n")
    args = ["export", run_id, "--format", "csv", "--out", str(target),
            "--runs-dir", str(finished_store.runs_dir)]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "exists" in err and "--force" in err
    assert target.read_text() == "precious\n"
    code, _, _ = run_cli(capsys, *args, "--force")
    assert code == 0 and target.read_text().splitlines()[0].startswith("step,epoch,split")


def test_show_and_export_of_a_stored_run(finished_store: RunStore,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run_id = finished_store.list_runs()[0].id
    runs_dir = str(finished_store.runs_dir)
    code, out, _ = run_cli(capsys, "show", run_id, "--runs-dir", runs_dir)
    assert code == 0
    assert "task    loss  accuracy\ncircle  0.25  0.875" in out
    code, out, _ = run_cli(capsys, "export", run_id, "--format", "json", "--runs-dir", runs_dir)
    metrics = json.loads(out)["metrics"]  # strict JSON: a NaN loss is null
    assert [m["value"] for m in metrics] == [0.7, None, 0.75]


def test_show_without_final_metrics_shows_latest_val(finished_store: RunStore,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = finished_store
    run_id = store.create_run(ExperimentConfig.model_validate({"data": {"suite": "toy_2d"}}))
    store.claim_run(os.getpid())
    store.add_metrics(run_id, [(10, 1.0, "val", "xor", "accuracy", 0.5),
                               (20, 2.0, "val", "xor", "accuracy", 0.625),
                               (20, 2.0, "val", "total", "loss", 0.9)])
    code, out, _ = run_cli(capsys, "show", run_id, "--runs-dir", str(store.runs_dir))
    assert code == 0 and "no final test metrics (the run is running)" in out
    assert "latest validation metrics (step 20):\ntask  accuracy\nxor   0.625" in out


def test_runs_table_is_aligned() -> None:
    def info(run_id: str, name: str, status: str, step: int) -> RunInfo:
        return RunInfo(id=run_id, name=name, status=status,
                       config={"data": {"suite": "toy_2d"}, "model": {"architecture": "mmoe"},
                               "weighting": {"method": "pcgrad"}},
                       created_at=0.0, started_at=100.0, ended_at=100.0 + 3725, step=step,
                       total_steps=400, epoch=1.0, message=None, device="cpu", pid=None,
                       heartbeat_at=None)

    text = cli.runs_table([info("a1", "a long experiment name", "finished", 400),
                           info("b22", "x", "failed", 12)])
    lines = text.splitlines()
    for column in ("name", "suite", "status", "step/total", "duration"):
        at = lines[0].index(column)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines[1:])
    assert lines[1].split()[-2:] == ["400/400", "1:02:05"]
    assert cli.format_duration(65) == "1:05" and cli.format_duration(None) == "-"
