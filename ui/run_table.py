"""Tables for the pages: runs → a DataFrame, latest numbers of a run, exports.

Pure functions over `RunInfo`-like objects and the store's long-format metrics frame, so they
can be tested without Streamlit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

# Which single number stands for a task in the runs table (first one present wins).
PRIMARY_METRICS = ("accuracy", "iou", "miou", "r2", "abs_rel", "mse", "mae", "loss")
LATEST_COLUMNS = [("train", "loss", "train loss"), ("val", "loss", "val loss"),
                  ("val", "accuracy", "val accuracy"), ("val", "r2", "val R²"),
                  ("val", "mse", "val MSE"), ("val", "mae", "val MAE"),
                  ("val", "iou", "val IoU"), ("val", "miou", "val mIoU"),
                  ("val", "abs_rel", "val abs_rel"),
                  ("train", "weight", "weight"), ("diag", "grad_norm", "grad norm")]
STATUS_ICONS = {"queued": "⏳", "running": "▶️", "paused": "⏸️", "finished": "✅",
                "stopped": "⏹️", "diverged": "💥", "failed": "❌"}


def format_duration(seconds: float | None) -> str:
    """'1h 02m', '3m 07s', '12s'; '–' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def final_metrics(summary: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from a run summary: test metrics, else best validation, else
    the last validation (a diverged run has only that)."""
    summary = summary or {}
    for key in ("test", "best_val", "val"):
        block = summary.get(key)
        if isinstance(block, Mapping) and block:
            return {str(t): dict(m) for t, m in block.items() if isinstance(m, Mapping)}
    return {}


def primary_metric(metrics: Mapping[str, float]) -> tuple[str, float] | None:
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name, float(metrics[name])
    return None


def _duration(run: Any, now: float) -> float | None:
    duration = getattr(run, "duration", None)
    if duration is None and getattr(run, "started_at", None) and run.status == "running":
        return now - run.started_at  # still running: time so far
    return duration


def runs_frame(runs: Iterable[Any], now: float | None = None) -> pd.DataFrame:
    """One row per run: id, name, owner, suite, architecture, method, status, progress, one
    column per task with its final primary metric ("task · metric"), duration, created."""
    now = time.time() if now is None else now
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "id": run.id, "name": run.name,
            "owner": getattr(run, "owner_name", None) or getattr(run, "owner", ""),
            "suite": run.suite,
            "architecture": run.architecture, "method": run.method,
            "status": f"{STATUS_ICONS.get(run.status, '')} {run.status}".strip(),
            "progress": (run.step / run.total_steps) if run.total_steps else 0.0,
        }
        for task, metrics in final_metrics(run.summary).items():
            best = primary_metric(metrics)
            if best:
                row[f"{task} · {best[0]}"] = best[1]
        row["duration"] = format_duration(_duration(run, now))
        row["created"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at))
        rows.append(row)
    fixed = ["id", "name", "owner", "suite", "architecture", "method", "status", "progress"]
    frame = pd.DataFrame(rows, columns=None if rows else fixed + ["duration", "created"])
    metric_cols = [c for c in frame.columns if c not in fixed + ["duration", "created"]]
    return frame[fixed + metric_cols + ["duration", "created"]]


def latest_table(df: pd.DataFrame, tasks: Sequence[str], statistic: str = "mean"
                 ) -> pd.DataFrame:
    """The latest logged value per task of the numbers worth watching (rows: tasks + total).
    A stacked run: each replica's latest value, then their mean (or their "sd")."""
    if df is None or df.empty:
        return pd.DataFrame(index=pd.Index([], name="task"))
    order = df.sort_values(["step", "id"] if "id" in df.columns else ["step"], kind="stable")
    if "replica" in order.columns and order["replica"].nunique() > 1:
        each = order.groupby(["split", "task", "name", "replica"], sort=False)["value"].last()
        grouped = each.groupby(level=[0, 1, 2], sort=False)
        last = grouped.std(ddof=1) if statistic == "sd" else grouped.mean()
    elif statistic == "sd":
        return pd.DataFrame(index=pd.Index([], name="task"))
    else:
        last = order.groupby(["split", "task", "name"], sort=False)["value"].last()
    rows = list(tasks) + ["total"]
    table = pd.DataFrame(index=pd.Index(rows, name="task"))
    for split, name, label in LATEST_COLUMNS:
        values = [last.get((split, task, name), math.nan) for task in rows]
        if any(not math.isnan(v) for v in values):
            table[label] = values
    return table.dropna(how="all")


def latest_step(df: pd.DataFrame, split: str) -> int | None:
    sel = df[df["split"] == split] if df is not None and not df.empty else None
    return None if sel is None or sel.empty else int(sel["step"].max())


def metrics_csv(df: pd.DataFrame) -> bytes:
    """Every logged metric row of a run as CSV (long format)."""
    cols = [c for c in ("step", "epoch", "split", "task", "name", "value", "time", "replica")
            if c in df.columns]
    return df[cols].to_csv(index=False).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null keeps the file loadable everywhere
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_json(run: Any, df: pd.DataFrame) -> bytes:
    """The run (info, config, summary) and every logged metric row, as one JSON document."""
    info = dataclasses.asdict(run) if dataclasses.is_dataclass(run) else dict(vars(run))
    cols = [c for c in ("step", "epoch", "split", "task", "name", "value", "time", "replica")
            if c in df.columns]
    doc = {"run": info, "metrics": df[cols].to_dict(orient="records")}
    return json.dumps(_jsonable(doc), indent=1, default=str).encode()
