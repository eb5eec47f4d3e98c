"""The command line: python -m mtl_core train|runs|show|export|stop|pause|resume.

Every command goes through the same functions as the pages (mtl_core.config, .jobs, .store).
Bad input (a config, an override, a run id, a state that does not allow the action) prints a
message on stderr naming what is wrong and what is allowed, and exits with status 2.
`train` prints the run id as the last line of stdout; without --detach it waits, showing one
progress line on stderr, and exits 0 if the run finished, 1 if it stopped, diverged or failed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mtl_core import reproduce_cli
from mtl_core.store import (
    ACTIVE_STATUSES,
    DB_NAME,
    LIVE_STATUSES,
    RUN_STATUSES,
    RunInfo,
    RunStore,
    default_runs_dir,
    has_store,
)

POLL_S = 0.25  # how often `train` (without --detach) reads the store
DISPATCH_EVERY_S = 2.0  # and how often it checks that a worker exists for the run
PLAIN_PROGRESS_EVERY_S = 5.0  # progress lines when stderr is not a terminal (CI logs)
BAR_WIDTH = 24
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class UsageError(Exception):
    """Bad input: main() prints the message on stderr and exits with status 2."""


# -- config overrides (--set key.path=value) ------------------------------------------------------

def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of a config document with each `key.path=value` applied.

    Values are read as YAML (2 -> int, 0.5 -> float, true -> bool, [16, 8] -> list, text ->
    str). Numeric path parts index lists; a list the document leaves to its default (such as
    `tasks`) is first filled with that default, so `tasks.0.weight=0.5` works on any config.
    Problems raise ConfigError with the path concerned.
    """
    from mtl_core.config import ConfigError, FieldError, safe_yaml

    document = copy.deepcopy(document)
    for override in overrides:
        path, sep, text = override.partition("=")
        path = path.strip()
        if not sep or not path or any(not part for part in path.split(".")):
            raise ConfigError([FieldError("", f"--set expects key.path=value, e.g. "
                                              f"optim.epochs=2 (got {override!r})")])
        try:
            value = safe_yaml(text, f"--set value {text[:60]!r}")
        except ConfigError as exc:
            raise ConfigError([FieldError(path, e.message) for e in exc.errors]) from None
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        _set_path(document, path.split("."), value)
    return document


def _set_path(document: dict[str, Any], keys: list[str], value: Any) -> None:
    from mtl_core.config import ConfigError, FieldError

    node: Any = document
    for depth, key in enumerate(keys):
        here = ".".join(keys[:depth + 1])
        last = depth == len(keys) - 1
        if isinstance(node, dict):
            if last:
                node[key] = value
                return
            if node.get(key) is None:
                # A list the document leaves to its default (tasks, layers) starts as that
                # default, so one item of it can be changed; anything else as a new section.
                node[key] = (_default_at(document, keys[:depth + 1])
                             if keys[depth + 1].isdigit() else {})
            node = node[key]
        elif isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError([FieldError(here, f"--set: {key!r} is not an index of this "
                                                    f"list; it has {len(node)} items "
                                                    f"(0 to {len(node) - 1})")])
            if last:
                node[int(key)] = value
                return
            node = node[int(key)]
        else:
            parent = ".".join(keys[:depth])
            raise ConfigError([FieldError(here, f"--set: {parent} is a value "
                                                f"({node!r}), not a section with fields")])


def _default_at(document: dict[str, Any], keys: list[str]) -> Any:
    """What the validated document has at `keys` (e.g. the suite's tasks); [] if nothing."""
    from mtl_core.config import parse_config

    node: Any = parse_config(copy.deepcopy(document)).to_dict()
    for key in keys:
        node = node[int(key)] if isinstance(node, list) else node.get(key)
        if node is None:
            return []
    return node


# -- formatting -----------------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *rows]]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_table(per_task: dict[str, dict[str, float]],
                  sd: dict[str, dict[str, float]] | None = None) -> str:
    """Tasks as rows, metric names (loss first) as columns; with `sd`, "mean ± sd" cells."""
    names = sorted({n for values in per_task.values() for n in values},
                   key=lambda n: (n != "loss", n))

    def cell(task: str, name: str) -> str:
        value = per_task[task].get(name)
        if value is None:
            return "-"
        spread = (sd or {}).get(task, {}).get(name)
        return _number(value) + ("" if spread is None else f" ± {_number(spread)}")

    rows = [[task] + [cell(task, n) for n in names] for task in per_task]
    return format_table(["task", *names], rows)


def replica_sd(summary: dict[str, Any], key: str) -> dict[str, dict[str, float]] | None:
    """The sd over the seeds of a stacked run's `summary[key]` metrics (None for one seed)."""
    from mtl_core.metrics import mean_sd

    entries = [e.get(key) or {} for e in summary.get("replicas") or [] if not e.get("diverged")]
    if len(entries) < 2:
        return None
    out: dict[str, dict[str, float]] = {}
    for task, names in (summary.get(key) or {}).items():
        for name in names:
            values = [e[task][name] for e in entries if name in e.get(task, {})
                      and e[task][name] is not None and math.isfinite(e[task][name])]
            if len(values) > 1:
                out.setdefault(task, {})[name] = mean_sd(values)[1]
    return out


def _summary_title(summary: dict[str, Any], title: str) -> str:
    entries = summary.get("replicas") or []
    if len(entries) < 2:
        return title
    done = [e for e in entries if not e.get("diverged")]
    seeds = ", ".join(str(e["seed"]) for e in done)
    return f"{title}, mean ± sd over {len(done)} seeds ({seeds})"


def runs_table(runs: list[RunInfo]) -> str:
    rows = [[r.id, r.name, r.owner_label, r.suite, r.architecture, r.method, r.status,
             f"{r.step}/{r.total_steps or '?'}", format_duration(r.duration)] for r in runs]
    return format_table(["id", "name", "owner", "suite", "arch", "method", "status",
                         "step/total", "duration"], rows)


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else datetime.fromtimestamp(timestamp).strftime(
        "%Y-%m-%d %H:%M:%S")


# -- commands -------------------------------------------------------------------------------------

def _runs_dir(args: argparse.Namespace) -> Path:
    given = getattr(args, "runs_dir", None)  # absent unless given, before or after the command
    return Path(given) if given else default_runs_dir()


def _existing_store(args: argparse.Namespace) -> RunStore:
    """The store of a command that only reads or controls runs: never create one."""
    runs_dir = _runs_dir(args)
    if not has_store(runs_dir):
        raise UsageError(f"no run store in {runs_dir} (no {DB_NAME}); pass --runs-dir DIR "
                         "or set MTL_RUNS_DIR to the folder `train` wrote to")
    return RunStore(runs_dir)


def _get_run(store: RunStore, run_id: str) -> RunInfo:
    try:
        return store.get_run(run_id)
    except KeyError:
        raise UsageError(f"unknown run {run_id!r} in {store.runs_dir}; "
                         "`python -m mtl_core runs` lists the runs there") from None


def _load_config(args: argparse.Namespace) -> Any:
    """The validated config of `args.config` with `--set` overrides, checked for this machine
    (mtl_core.preflight); UsageError if anything is wrong, before anything is queued."""
    from mtl_core import jobs
    from mtl_core.config import ConfigError, loads_config_text, parse_config, read_config_file
    from mtl_core.preflight import check_submit
    from mtl_core.trust import restrict_paths

    if getattr(args, "ray", None):  # first: the device is then the cluster's to check
        os.environ[jobs.RAY_ADDRESS_VAR] = args.ray  # this command's runs (and baselines)
    path = Path(args.config)
    try:
        text = read_config_file(path)
    except ConfigError as exc:
        raise UsageError(f"cannot read config {path}: "
                         + "; ".join(e.message for e in exc.errors)) from None
    try:
        cfg = parse_config(apply_overrides(loads_config_text(text, str(path)), args.set or []),
                           trusted=not restrict_paths())
        check_submit(cfg)
    except ConfigError as exc:
        raise UsageError(f"invalid config {path}:\n" +
                         "\n".join(f"  - {e}" for e in exc.errors)) from None
    except ValueError as exc:  # a bad MTL_MAX_* limit
        raise UsageError(str(exc)) from None
    try:
        jobs.max_concurrent()  # a bad MTL_MAX_JOBS is refused before anything is queued
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from mtl_core import jobs

    cfg = _load_config(args)
    runs_dir = _runs_dir(args)
    try:
        run_id = jobs.submit(cfg, runs_dir, start=args.detach)
    except ValueError as exc:  # e.g. the Ray cluster cannot take it: nothing was queued
        raise UsageError(str(exc)) from None
    baseline_ids = _submit_baselines(cfg, runs_dir) if args.with_baselines else {}
    if args.detach:
        print(f"queued run {run_id} in {runs_dir}", file=sys.stderr)
        print(run_id)
        return 0
    store = RunStore(runs_dir)
    trainer = jobs.train_here(run_id, runs_dir)
    run = _wait(store, run_id, runs_dir)
    if trainer is not None:
        _end_in_process(store, run_id, trainer)
        run = store.get_run(run_id)
    print(_result_text(run))
    if baseline_ids:
        for task, base_id in baseline_ids.items():
            print(f"baseline for {task}: waiting for run {base_id}", file=sys.stderr)
            _wait(store, base_id, runs_dir)
        print(comparison_text(run_id, runs_dir))
    print(run_id)
    return 0 if run.status == "finished" else 1


def _end_in_process(store: RunStore, run_id: str, trainer: Any) -> None:
    """The run trained in this process: let it end; if we leave before (a second Ctrl-C),
    it ends as stopped now rather than as a worker that died."""
    trainer.join(timeout=5)  # a stop request is seen within a control poll (0.5 s)
    if trainer.is_alive():
        store.set_status(run_id, "stopped", "stopped: the command that trained it was left",
                         expect=ACTIVE_STATUSES)


def _submit_baselines(cfg: Any, runs_dir: Path) -> dict[str, str]:
    from mtl_core.baselines import find_baselines, find_or_submit_baselines

    existing = find_baselines(cfg, runs_dir)
    ids = find_or_submit_baselines(cfg, runs_dir)
    for task, base_id in ids.items():
        how = "reused" if existing.get(task) == base_id else "queued"
        print(f"single-task baseline for {task}: {how} run {base_id}", file=sys.stderr)
    return ids


def comparison_text(run_id: str, runs_dir: Path) -> str:
    """Each task's metric against its single-task baseline, and Δm (lower is better)."""
    from mtl_core.baselines import compare_run

    comp = compare_run(run_id, runs_dir)
    rows = [[r.task, r.metric, _number(r.value), _number(r.baseline),
             "-" if r.better is None else ("better" if r.better else "worse")]
            for r in comp.rows]
    table = format_table(["task", "metric", "multi-task", "single-task", ""], rows)
    if comp.delta_m is None:
        verdict = f"Δm: not available ({comp.note})"
    else:
        verdict = (f"Δm = {comp.delta_m:+.2f}% (mean relative change against the single-task "
                   "baselines; negative = multi-task is better)")
    if comp.seeds is not None:
        verdict += "\n" + comp.seeds.text()
    return f"\nagainst single-task baselines ({comp.split}):\n{table}\n{verdict}"


def cmd_sweep(args: argparse.Namespace) -> int:
    from mtl_core.sweep import submit_sweep, sweep_table, wait_for_sweep

    cfg = _load_config(args)
    runs_dir = _runs_dir(args)
    methods = [m for m in (args.methods or "").split(",") if m]
    try:
        submission = submit_sweep(cfg, args.grid, runs_dir, extra_methods=methods)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"sweep {submission.sweep_id}: {len(submission.run_ids)} runs queued in {runs_dir}",
          file=sys.stderr)
    if args.detach:
        print(submission.sweep_id)
        return 0

    def progress(counts: dict[str, int]) -> None:
        done = sum(v for k, v in counts.items() if k not in LIVE_STATUSES)
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        print(f"\rsweep {submission.sweep_id}: {done}/{len(submission.run_ids)} done ({parts})",
              end="", file=sys.stderr, flush=True)

    counts = wait_for_sweep(submission.sweep_id, runs_dir, on_progress=progress)
    print(file=sys.stderr)
    table = sweep_table(RunStore(runs_dir), submission.sweep_id)
    shown = [c for c in table.columns if c.startswith(("w_", "val_", "test_"))]
    rows = [[str(r["method"]), *(_number(r[c]) for c in shown),
             ("front" if r["on_front"] else "") + (" chosen" if r["chosen"] else "")]
            for _, r in table.iterrows()]
    print(format_table(["method", *shown, ""], rows))
    metrics = table.attrs.get("metrics", {})
    print("val_/test_ columns: " + ", ".join(f"{t}: {m}" for t, m in metrics.items()))
    print(submission.sweep_id)
    return 0 if counts.get("finished", 0) == len(submission.run_ids) else 1


def _wait(store: RunStore, run_id: str, runs_dir: Path) -> RunInfo:
    """Follow a run until it ends. Ctrl-C requests stop and keeps waiting; a second Ctrl-C
    leaves (the stop request stands). Ctrl-C only counts presses here (no KeyboardInterrupt):
    raised inside a store call it could leave a store lock held that the run, training in
    this process's other thread, then waits on for ever."""
    from mtl_core import jobs

    bar = _ProgressLine(sys.stderr)
    presses: list[float] = []
    previous = signal.signal(signal.SIGINT, lambda *_: presses.append(time.monotonic()))
    try:
        handled = 0
        while True:
            run = _follow(store, run_id, runs_dir, bar,
                          lambda seen=handled: len(presses) > seen)
            if run is not None:
                bar.done(run)
                return run
            handled = len(presses)
            bar.clear()
            if handled > 1:
                print(f"left run {run_id}; its stop request stands", file=sys.stderr)
                return store.get_run(run_id)
            print(f"\nstopping run {run_id} (its metrics are kept); Ctrl-C again to leave "
                  "without waiting", file=sys.stderr)
            try:
                jobs.stop(run_id, runs_dir)
            except ValueError:
                pass  # it ended meanwhile
    finally:
        signal.signal(signal.SIGINT, previous)


def _follow(store: RunStore, run_id: str, runs_dir: Path, bar: _ProgressLine,
            interrupted: Any) -> RunInfo | None:
    """The run once it has ended, or None as soon as `interrupted()` (a Ctrl-C)."""
    from mtl_core import jobs

    after_id, last_dispatch = 0, time.monotonic()
    while not interrupted():
        run = store.get_run(run_id)
        rows = store.metrics(run_id, after_id)
        if len(rows):
            after_id = int(rows["id"].iloc[-1])
            total = rows[(rows.split == "train") & (rows.task == "total") & (rows.name == "loss")]
            if len(total):  # a stacked run: the mean over its seeds at the latest step
                bar.loss = float(total[total.step == total.step.iloc[-1]]["value"].mean())
        if not run.is_live:
            return run
        bar.show(run)
        if time.monotonic() - last_dispatch >= DISPATCH_EVERY_S:
            jobs.dispatch(runs_dir)  # repairs a dead worker, restarts the queue if needed
            last_dispatch = time.monotonic()
        time.sleep(POLL_S)
    return None


class _ProgressLine:
    """One self-overwriting line on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.loss: float | None = None
        self.last_plain = 0.0
        self.last_status = ""
        self.width = 0

    def text(self, run: RunInfo) -> str:
        total = run.total_steps
        filled = int(BAR_WIDTH * run.step / total) if total else 0
        parts = [f"{run.id} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}]",
                 f"step {run.step}/{total or '?'}", f"epoch {run.epoch:.2f}"]
        if self.loss is not None:
            parts.append(f"loss {_number(self.loss)}")
        if run.status == "running" and run.started_at and run.step and total:
            elapsed = time.time() - run.started_at
            parts.append(f"ETA {format_duration(elapsed * (total - run.step) / run.step)}")
        parts.append(run.status)
        return "  ".join(parts)

    def show(self, run: RunInfo) -> None:
        line = self.text(run)
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif (run.status != self.last_status
              or time.monotonic() - self.last_plain >= PLAIN_PROGRESS_EVERY_S):
            self.stream.write(line + "\n")
            self.last_plain = time.monotonic()
        self.last_status = run.status
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0

    def done(self, run: RunInfo) -> None:
        self.clear()
        self.stream.write(self.text(run) + "\n")
        self.stream.write(f"run {run.id} {run.status}"
                          + (f": {run.message}" if run.message else "") + "\n")
        self.stream.flush()


def _result_text(run: RunInfo) -> str:
    test = run.summary.get("test") or {}
    if test:
        title = _summary_title(run.summary, f"test metrics ({run.id}, {run.status})")
        return f"{title}:\n{metrics_table(test, replica_sd(run.summary, 'test'))}"
    return f"no test metrics ({run.id} {run.status})"


def cmd_runs(args: argparse.Namespace) -> int:
    from mtl_core import jobs

    runs_dir = _runs_dir(args)
    if not has_store(runs_dir):
        print(f"no runs yet in {runs_dir}", file=sys.stderr)
        return 0
    jobs.reconcile(runs_dir)
    runs = RunStore(runs_dir).list_runs(args.status)
    if not runs:
        print(f"no runs in {runs_dir}" + (f" with status {', '.join(args.status)}"
                                          if args.status else ""), file=sys.stderr)
        return 0
    print(runs_table(runs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mtl_core import jobs

    store = _existing_store(args)
    jobs.reconcile(store.runs_dir)
    run = _get_run(store, args.run)
    if args.json:
        executor, node = jobs.placement(run)
        document = {**run.__dict__, "is_live": run.is_live, "duration": run.duration,
                    "executor": executor, "node": node,
                    "run_dir": str(store.run_dir(run.id)),
                    "checkpoints": store.checkpoints(run.id)}
        print(json.dumps(_jsonable(document), indent=2))
        return 0
    status = run.status + (f" ({run.message})" if run.message else "")
    fields = [
        ("run", run.id), ("name", run.name), ("status", status),
        ("suite", run.suite), ("architecture", run.architecture), ("method", run.method),
        ("device", run.device or "-"),
        ("executor", " on ".join(p for p in jobs.placement(run) if p)),
        ("progress", f"step {run.step}/{run.total_steps or '?'}, epoch {run.epoch:.2f}"),
        ("started", _when(run.started_at)), ("duration", format_duration(run.duration)),
        ("folder", str(store.run_dir(run.id))),
        ("checkpoints", ", ".join(store.checkpoints(run.id)) or "-"),
    ]
    print("\n".join(f"{key:<13}{value}" for key, value in fields))
    for key, title in (("test", "test metrics (final)"), ("best_val", "best validation")):
        if run.summary.get(key):
            print(f"\n{_summary_title(run.summary, title)}:\n"
                  f"{metrics_table(run.summary[key], replica_sd(run.summary, key))}")
    if run.summary.get("test") and run.architecture != "single_task":
        from mtl_core.baselines import find_baselines

        if find_baselines(run.config, store.runs_dir):
            print(comparison_text(run.id, store.runs_dir))
    if not run.summary.get("test"):
        print(f"\nno final test metrics (the run is {run.status})")
        latest = _latest_val(store, run.id)
        if latest:
            step, per_task = latest
            print(f"latest validation metrics (step {step}):\n{metrics_table(per_task)}")
    import yaml

    print("\nconfig:\n" + yaml.safe_dump(run.config, sort_keys=False).rstrip())
    return 0


def _latest_val(store: RunStore, run_id: str) -> tuple[int, dict[str, dict[str, float]]] | None:
    frame = store.metrics(run_id)
    val = frame[(frame.split == "val") & (frame.task != "total")]
    if not len(val):
        return None
    step = int(val.step.max())
    per_task: dict[str, dict[str, float]] = {}
    # a stacked run: the mean over its replicas
    latest = val[val.step == step].groupby(["task", "name"], sort=False).value.mean()
    for (task, name), value in latest.items():
        per_task.setdefault(task, {})[name] = float(value)
    return step, per_task


def cmd_export(args: argparse.Namespace) -> int:
    store = _existing_store(args)
    run = _get_run(store, args.run)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise UsageError(f"{out} exists; choose another --out FILE or pass --force to "
                         "replace it")
    frame = store.metrics(run.id).drop(columns=["id"])
    if args.format == "csv":
        text = frame.to_csv(index=False)
    else:
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        document = {"run": {"id": run.id, "name": run.name, "status": run.status,
                            "message": run.message, "config": run.config,
                            "summary": run.summary},
                    "metrics": records}
        text = json.dumps(_jsonable(document), indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)  # a reader of FILE never sees half an export
    print(f"wrote {len(frame)} metric rows of run {run.id} to {out}", file=sys.stderr)
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from mtl_core import jobs

    store = _existing_store(args)
    _get_run(store, args.run)
    action = {"stop": jobs.stop, "pause": jobs.pause, "resume": jobs.resume}[args.command]
    try:
        outcome = action(args.run, store.runs_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if outcome == "requested":
        print(f"{args.command} requested for run {args.run}")
    else:
        print(f"run {args.run}: {outcome}")
    return 0


# -- parser and entry point -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --runs-dir given before the command is not overwritten by the subcommand's
    # default (the same action object serves the main parser and every subcommand).
    common.add_argument("--runs-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="the run store (default: $MTL_RUNS_DIR or ./runs)")
    parser = argparse.ArgumentParser(
        prog="python -m mtl_core", parents=[common],
        description="MTL Lab: train multi-task models and inspect their runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", parents=[common], help="queue a run from a YAML/JSON config",
                           description="Queue a run; prints its id as the last line of stdout.")
    train.add_argument("config", metavar="CONFIG", help="a YAML or JSON experiment config")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                       help="override a config field, e.g. --set optim.epochs=2 "
                            "--set tasks.0.weight=0.5 (repeatable)")
    train.add_argument("--detach", action="store_true",
                       help="return at once instead of showing progress until the run ends")
    train.add_argument("--with-baselines", action="store_true",
                       help="also train (or reuse) a single-task baseline per task and print "
                            "each task against its baseline and Δm")
    train.add_argument("--ray", metavar="ADDRESS",
                       help="run it as a task on this Ray cluster (HOST:PORT or auto; default "
                            "$MTL_RAY_ADDRESS, else local workers)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", parents=[common],
                           help="a loss-weight sweep: a grid of task weights, its Pareto front",
                           description="Queue one run per point of a weight grid (2 tasks: w1 "
                                       "over N points in [0, 1], w2 = 1 - w1; 3+: a simplex "
                                       "grid), wait, and print the Pareto front of the tasks' "
                                       "validation metrics with the point chosen by validation. "
                                       "Prints the sweep id as the last line of stdout.")
    sweep.add_argument("config", metavar="CONFIG", help="the base experiment config")
    sweep.add_argument("--grid", type=int, default=5, metavar="N",
                       help="points per weight axis (default 5)")
    sweep.add_argument("--methods", metavar="M1,M2",
                       help="adaptive methods to add as extra points, e.g. uncertainty,pcgrad")
    sweep.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                       help="override a config field of the base config (repeatable)")
    sweep.add_argument("--detach", action="store_true", help="queue the runs and return at once")
    sweep.add_argument("--ray", metavar="ADDRESS",
                       help="spread the runs over this Ray cluster (default $MTL_RAY_ADDRESS)")
    sweep.set_defaults(func=cmd_sweep)

    runs = sub.add_parser("runs", parents=[common], help="list runs, newest first")
    runs.add_argument("--status", action="append", choices=RUN_STATUSES,
                      help="only runs with this status (repeatable)")
    runs.set_defaults(func=cmd_runs)

    show = sub.add_parser("show", parents=[common],
                          help="a run's status, final per-task metrics and config")
    show.add_argument("run", metavar="RUN", help="a run id")
    show.add_argument("--json", action="store_true", help="print everything as JSON")
    show.set_defaults(func=cmd_show)

    export = sub.add_parser("export", parents=[common], help="all logged metrics of a run")
    export.add_argument("run", metavar="RUN", help="a run id")
    export.add_argument("--format", required=True, choices=("csv", "json"))
    export.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    export.add_argument("--force", action="store_true", help="replace an existing --out FILE")
    export.set_defaults(func=cmd_export)

    for name, text in (("stop", "stop a run (a queued one at once), keeping its metrics"),
                       ("pause", "pause a running run"), ("resume", "resume a paused run")):
        control = sub.add_parser(name, parents=[common], help=text)
        control.add_argument("run", metavar="RUN", help="a run id")
        control.set_defaults(func=cmd_control)
    reproduce_cli.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad arguments: argparse exits with status 2
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `show RUN | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
