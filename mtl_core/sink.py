"""Where the trainer sends what it logs, and where it asks whether to stop or pause.

The trainer knows only this protocol. `mtl_core.store.StoreSink` writes to the run store;
`MemorySink` keeps everything in lists (tests, benchmarks, quick experiments).

Metric rows are `(step, epoch, split, task, name, value, replica)`:
- replica: which seed of a stacked run (`replicas: K`) the row belongs to, 0..K-1 (seed + replica);
  0 in an ordinary run. Readers also accept the older 6-element rows (replica 0).
- split: "train" | "val" | "test" | "diag"
- task: a task name, "total" (weighted sum), or "a|b" for a pair of tasks (cosine)
- name: "loss", "weight", "grad_norm", "accuracy", "mse", "mae", "r2", "cosine", "update_norm", ...
Snapshots are JSON-able dicts, one kind each (written by mtl_core.trainer):
- "probe" (once, step 0): {"tasks": {task: {kind, class_names, input, num_classes}},
  "images": {input: N×H×W uint8 nested lists (image suites only)}, "targets": {task: list}}
- "predictions" (each evaluation, on the probe batch): {"outputs": {task: list}}, the class id
  for classification, P(class 1) for binary, the value for regression
- "confusion": {task: K×K counts on val, rows true}; "scatter": {task: {"true", "pred"}} (val)
- "grid" (2-D suites): {"xs", "ys", "points": {"x", "y"}, "targets": {task: list},
  "values": {task: len(ys)×len(xs) model output}}
- "inspect": architecture state, e.g. {"mixing": ...} (cross_stitch), {"gates": ...} (mmoe),
  {"masks": ...} (mtan)
In a stacked run replica 0 writes these kinds as they are and replica r > 0 writes
`replica_kind(kind, r)` ("predictions/r3"), so a page that knows nothing of replicas shows
replica 0 and the Predictions page can pick another. Replica r > 0 writes its evaluation
snapshots at about `replicas.REPLICA_SNAPSHOTS` evaluations spread over the run and at its last
one (its rows at every evaluation); an evaluation's snapshots arrive in one `snapshot_many`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MetricRow = tuple[int, float, str, str, str, float, int]
SnapshotEntry = tuple[int, str, dict[str, Any]]  # (step, kind, payload)
Control = Literal["stop", "pause", "resume"]


def replica_kind(kind: str, replica: int) -> str:
    """The snapshot kind replica `replica` of a stacked run writes `kind` under."""
    return kind if replica == 0 else f"{kind}/r{replica}"


def row_replica(row: tuple) -> int:
    """The replica index of a metric row (0 for a 6-element row)."""
    return int(row[6]) if len(row) > 6 else 0


class Sink(Protocol):
    def metrics(self, rows: list[MetricRow]) -> None: ...
    def snapshot(self, step: int, kind: str, payload: dict[str, Any]) -> None: ...
    def snapshot_many(self, items: list[SnapshotEntry]) -> None:
        """Several snapshots in one write (an evaluation's, of every replica): the run store
        indexes them in one transaction instead of one each."""
        ...
    def progress(self, step: int, total_steps: int, epoch: float) -> None: ...
    def status(self, status: str, message: str | None = None) -> None: ...
    def control(self) -> Control | None:
        """The pending control request, if any (consumed by reading it)."""
        ...
    def checkpoint(self, state: dict[str, Any], name: str) -> None: ...


@dataclass
class Batch:
    """Metric rows and snapshots gathered to be written together, one call each (a stacked
    run's evaluation of every replica: K × ~5 snapshots and K sets of val rows)."""

    rows: list[MetricRow] = field(default_factory=list)
    snapshots: list[SnapshotEntry] = field(default_factory=list)

    def write(self, sink: Sink) -> None:
        if self.rows:
            sink.metrics(self.rows)
        if self.snapshots:
            sink.snapshot_many(self.snapshots)
        self.rows, self.snapshots = [], []


@dataclass
class MemorySink:
    rows: list[MetricRow] = field(default_factory=list)
    snapshots: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    statuses: list[tuple[str, str | None]] = field(default_factory=list)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_progress: tuple[int, int, float] = (0, 0, 0.0)
    requests: list[Control] = field(default_factory=list)  # queued control requests

    def metrics(self, rows: list[MetricRow]) -> None:
        self.rows.extend(rows)

    def snapshot(self, step: int, kind: str, payload: dict[str, Any]) -> None:
        self.snapshots.append((step, kind, payload))

    def snapshot_many(self, items: list[SnapshotEntry]) -> None:
        self.snapshots.extend(items)

    def progress(self, step: int, total_steps: int, epoch: float) -> None:
        self.last_progress = (step, total_steps, epoch)

    def status(self, status: str, message: str | None = None) -> None:
        self.statuses.append((status, message))

    def control(self) -> Control | None:
        return self.requests.pop(0) if self.requests else None

    def checkpoint(self, state: dict[str, Any], name: str) -> None:
        self.checkpoints[name] = state

    def series(self, split: str, task: str, name: str,
               replica: int = 0) -> list[tuple[int, float]]:
        return [(r[0], r[5]) for r in self.rows
                if r[2:5] == (split, task, name) and row_replica(r) == replica]
