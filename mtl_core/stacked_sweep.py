"""A weight sweep's grid points trained as one stacked run (issue 12, item 4).

The sweep's runs are queued as before, one run per point (`mtl_core.sweep`). When a worker
claims one of them (the *carrier*), it also claims, in the same transaction (`pick_carried`),
every other still-queued point of the same sweep that can share its stacked model (`stack_key`:
the same config but for the name and the task weights, static weighting, the same owner), up
to MAX_STACK_SLOTS slots, and trains them
all with `replicas.train_slots`: slot (point p, seed j) has seed `seed + j` and point p's
weights, its loss is Σ_i w_{p,i} L_{p,i}. `PointSink` sends slot (p, j)'s rows, snapshots and
checkpoints to point p's own run as replica j, so every point's run folder, status and summary
look exactly as if it had trained alone (which it would have: same initial weights, same
batches, metrics equal up to floating-point reordering).

While carried, a point is `running` with the carrier's pid and the message
"carried by run <id>" (`fair_queue.CARRIED_PREFIX`); the fair queue and the thread budget count
the carrier alone, so a stacked sweep takes one slot of MTL_MAX_JOBS, as one process does.
A point another worker claimed first trains on its own (each point trains exactly once either
way); adaptive extra methods never stack (each is a different method). A stop or pause request
on any carried point acts on the whole stacked run. MTL_STACK_SWEEPS=0 turns stacking off.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mtl_core.config import MAX_REPLICAS, ExperimentConfig, parse_config
from mtl_core.fair_queue import CARRIED_PREFIX
from mtl_core.sink import Control, MetricRow, Sink, SnapshotEntry, replica_kind
from mtl_core.store import HEARTBEAT_EVERY_S, RunInfo, RunStore

if TYPE_CHECKING:
    from mtl_core.trainer import TrainResult

MAX_STACK_SLOTS = MAX_REPLICAS  # points × replicas in one stacked model: what one run may hold
_KIND = re.compile(r"^(?P<kind>.*)/r(?P<slot>\d+)$")
_TAG = re.compile(r" #(?P<id>[0-9a-f]{6})$")  # a sweep run's name ends with its sweep's id


def sweep_id_of(name: str) -> str | None:
    match = _TAG.search(name)
    return match.group("id") if match else None


def sweep_runs(store: RunStore, sweep_id: str) -> list[RunInfo]:
    """The sweep's runs in the order they were submitted (grid first, then extra methods).
    Here, not in mtl_core.sweep, so a worker finds a sweep's points without pandas."""
    runs = [run for run in store.list_runs() if sweep_id_of(run.name) == sweep_id]
    return sorted(runs, key=lambda r: r.created_at)


def stacking_enabled() -> bool:
    return os.environ.get("MTL_STACK_SWEEPS", "1").strip() != "0"


def stack_key(config: dict[str, Any]) -> str | None:
    """What points must share to stack: the config without its name and task weights.
    None for a config that does not stack (a weighting method other than static)."""
    if (config.get("weighting") or {}).get("method") != "static":
        return None
    rest = {k: v for k, v in config.items() if k != "name"}
    rest["tasks"] = [{k: v for k, v in t.items() if k != "weight"}
                     for t in config.get("tasks") or []]
    return repr(sorted(rest.items()))


def pick_carried(run: RunInfo, queued: Callable[[], list[RunInfo]]) -> tuple[list[str], str]:
    """The queued points (of `queued()`, oldest first) of the same sweep as `run` that stack
    with it, in sweep order, as many as one stacked run holds, and the message they get
    while carried: `RunStore.claim_with`'s `carry`, so a worker claims a sweep's first point
    and the others in one transaction."""
    sweep_id = sweep_id_of(run.name)
    key = None if sweep_id is None else stack_key(run.config)
    if key is None or not stacking_enabled():
        return [], ""
    k = max(1, int(run.config.get("replicas") or 1))
    wanted = [other.id for other in queued()
              if other.id != run.id and other.status == "queued" and other.owner == run.owner
              and sweep_id_of(other.name) == sweep_id
              and stack_key(other.config) == key][:MAX_STACK_SLOTS // k - 1]
    return wanted, f"{CARRIED_PREFIX}{run.id}"


def claim_carried(store: RunStore, pid: int, run_id: str) -> list[str]:
    """Claim for worker `pid` (already holding `run_id`) the queued points of the same sweep
    that stack with it; their ids in sweep order ([] when none). (A worker polling the
    queue claims them with the first point instead: `claim_with(carry=pick_carried)`.)"""
    run = store.get_run(run_id)
    wanted, message = pick_carried(run, lambda: sweep_runs(store, sweep_id_of(run.name) or ""))
    # One transaction, as soon as possible: a point another idle worker claimed meanwhile
    # trains on its own (correct, but it takes a worker slot and half the cores).
    taken = store.claim_runs(pid, wanted, message) if wanted else []
    return keep_room(store, run, taken)


def keep_room(store: RunStore, run: RunInfo, taken: list[str]) -> list[str]:
    """Of the points `taken` with `run`, those its stacked model has room for (the parameter
    limit over every copy); the others go back to the queue, as they were."""
    if not taken:
        return []
    room = max(0, _room(run.config))  # after the claim: it builds the model on the meta device
    for extra in taken[room:]:
        store.set_status(extra, "queued", None, expect=["running"], pid=None, started_at=None,
                         heartbeat_at=None)
    return taken[:room]


def _slots_allowed(config: dict[str, Any]) -> int:
    """How many copies of this model one stacked run may hold: MAX_STACK_SLOTS, and the
    parameter limit over all of them (`limits.params_problems`), as for `replicas: K`."""
    from mtl_core import limits

    try:
        per_model = sum(limits.count_parameters(parse_config(config)).values())
    except (ValueError, KeyError, TypeError, RuntimeError):  # e.g. a csv suite's shapes
        return 0
    return min(MAX_STACK_SLOTS, limits.current().max_params // max(1, per_model))


def _room(config: dict[str, Any]) -> int:
    """How many more points the carrier of this config may take."""
    return _slots_allowed(config) // max(1, int(config.get("replicas") or 1)) - 1


class PointSink:
    """Slot s = p·K + j of the stacked run → point p's sink, as replica j.

    Point 0 (the carrier) gets its rows and progress at once; the other points' rows and
    progress are written at most every FLUSH_S (each write is one store transaction per point,
    which would otherwise cost more than the stacked step), and always before a checkpoint,
    so their curves lag by at most that much and are complete when the run ends."""

    FLUSH_S = 1.0

    def __init__(self, sinks: list[Sink], replicas: int, carried_messages: list[str | None]
                 ) -> None:
        self.sinks, self.k, self.messages = sinks, replicas, carried_messages
        self.pending: list[list[MetricRow]] = [[] for _ in sinks]
        self.last_progress: tuple[int, int, float] | None = None
        self.flushed_at = time.monotonic()
        # Every point's run in one store (the worker's case): a flush, and an evaluation's
        # snapshots of every point, are then one store transaction (`RunStore.add_many`).
        self.store = _shared_store(sinks)
        self.run_ids: list[str] = [getattr(s, "run_id", "") for s in sinks]
        self.beat_at = -math.inf  # the carried points' last heartbeat (the first poll beats)

    def _split(self, slot: int) -> tuple[Sink, int]:
        return self.sinks[slot // self.k], slot % self.k

    def flush(self) -> None:
        """Write the carried points' pending rows and their latest progress."""
        if self.store is not None:
            rows = {run_id: part for run_id, part in zip(self.run_ids[1:], self.pending[1:],
                                                         strict=True) if part}
            progress = ({} if self.last_progress is None else
                        dict.fromkeys(self.run_ids[1:], self.last_progress))
            if rows or progress:
                self.store.add_many(metrics=rows, progress=progress)
        else:
            for sink, part in zip(self.sinks[1:], self.pending[1:], strict=True):
                if part:
                    sink.metrics(part)
                if self.last_progress is not None:
                    sink.progress(*self.last_progress)
        self.pending = [[] for _ in self.sinks]
        self.flushed_at = time.monotonic()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.flushed_at >= self.FLUSH_S:
            self.flush()

    def metrics(self, rows: list[MetricRow]) -> None:
        per_point: list[list[MetricRow]] = [[] for _ in self.sinks]
        for row in rows:
            slot = int(row[6]) if len(row) > 6 else 0
            per_point[slot // self.k].append((*row[:6], slot % self.k))  # type: ignore[arg-type]
        if per_point[0]:
            self.sinks[0].metrics(per_point[0])
        for pending, part in zip(self.pending[1:], per_point[1:], strict=True):
            pending.extend(part)
        self._maybe_flush()

    def _route(self, kind: str) -> tuple[int, str]:
        """A stacked run's snapshot kind -> (point, the kind in that point's run)."""
        match = _KIND.match(kind)
        base, slot = (match["kind"], int(match["slot"])) if match else (kind, 0)
        return slot // self.k, replica_kind(base, slot % self.k)

    def snapshot(self, step: int, kind: str, payload: dict[str, Any]) -> None:
        point, own = self._route(kind)
        self.sinks[point].snapshot(step, own, payload)

    def snapshot_many(self, items: list[SnapshotEntry]) -> None:
        routed = [(*self._route(kind), step, payload) for step, kind, payload in items]
        if self.store is not None:  # every point's in one transaction
            self.store.add_many(snapshots=[(self.run_ids[point], step, own, payload)
                                           for point, own, step, payload in routed])
            return
        parts: list[list[SnapshotEntry]] = [[] for _ in self.sinks]
        for point, own, step, payload in routed:
            parts[point].append((step, own, payload))
        for sink, part in zip(self.sinks, parts, strict=True):
            if part:
                sink.snapshot_many(part)

    def progress(self, step: int, total_steps: int, epoch: float) -> None:
        self.sinks[0].progress(step, total_steps, epoch)
        self.last_progress = (step, total_steps, epoch)  # the carried points' at the next flush
        self._maybe_flush()

    def status(self, status: str, message: str | None = None) -> None:
        for sink, carried in zip(self.sinks, self.messages, strict=True):
            sink.status(status, carried or message)  # a carried point keeps its marker

    def control(self) -> Control | None:
        """A request on any point acts on the stacked run. The carrier's sink is polled as a
        run's own; the carried points, in one store, together: one read, and every
        HEARTBEAT_EVERY_S one heartbeat write for all of them (not one of each per point)."""
        request = self.sinks[0].control()
        if request is not None or len(self.sinks) == 1:
            return request
        if self.store is not None:
            now = time.monotonic()
            beat = now - self.beat_at >= HEARTBEAT_EVERY_S
            if beat:
                self.beat_at = now
            return self.store.poll_controls(self.run_ids[1:], beat)  # type: ignore[return-value]
        for sink in self.sinks[1:]:
            request = sink.control()
            if request is not None:
                return request
        return None

    def checkpoint(self, state: dict[str, Any], name: str) -> None:
        self.flush()  # a point's checkpoint never runs ahead of its rows
        entries = state["replicas"]
        for p, sink in enumerate(self.sinks):
            mine = entries[p * self.k:(p + 1) * self.k]
            part = {"model": mine[0]["model"], "weighting": mine[0]["weighting"],
                    "step": state["step"], "epoch": state["epoch"]}
            if p == 0:  # the stacked optimizer holds every slot: kept once, by the carrier
                part["optimizer"] = state["optimizer"]
            if self.k > 1:
                part["replicas"] = mine
            sink.checkpoint(part, name)


def _shared_store(sinks: list[Sink]) -> RunStore | None:
    """The run store every sink writes to (StoreSinks, possibly wrapped, of one runs dir),
    else None (e.g. MemorySinks)."""
    stores = [getattr(sink, "store", None) for sink in sinks]
    first = stores[0]
    if not isinstance(first, RunStore):
        return None
    if all(isinstance(s, RunStore) and s.runs_dir == first.runs_dir for s in stores) and \
            all(isinstance(getattr(sink, "run_id", None), str) for sink in sinks):
        return first
    return None


def train_points(configs: list[ExperimentConfig], sinks: list[Sink],
                 carried_messages: list[str | None] | None = None) -> list[TrainResult]:
    """Train the points `configs` (they share a `stack_key`) as one stacked model, each
    logging to its own sink; one TrainResult per point, as `trainer.train` would give it."""
    from mtl_core.replicas import replica_summary, train_slots
    from mtl_core.trainer import TrainResult

    first = configs[0]
    k = first.replicas
    slots = [(first.seed + j, [t.weight for t in c.tasks or []])
             for c in configs for j in range(k)]
    messages = carried_messages or [None] * len(configs)
    demux = PointSink(sinks, k, messages)
    try:
        out = train_slots(first, demux, slots)
    finally:
        demux.flush()  # what a failed run had logged is kept, as in a run of its own
    results = []
    for p in range(len(configs)):
        reps, tests = out.replicas[p * k:(p + 1) * k], out.tests[p * k:(p + 1) * k]
        if k == 1:  # an ordinary run's summary, as trainer.train writes it
            summary = {"test": tests[0], "best_val": _drop_total(reps[0].best_val_metrics),
                       "val": _drop_total(reps[0].last_val)}
        else:
            summary = replica_summary(reps, tests)
        diverged = [r for r in reps if r.status == "diverged"]
        if len(diverged) == len(reps):
            notes = "; ".join(f"seed {r.seed}: {r.message}" for r in reps)
            message = reps[0].message if k == 1 else f"every replica diverged ({notes})"
            results.append(TrainResult("diverged", message, out.steps,
                                       {"val": summary["val"]} if k == 1 else summary))
            continue
        message = out.message
        if all(r.status == "early_stopped" for r in reps):
            message = reps[0].message if k == 1 else message
        if diverged:
            note = "; ".join(f"replica {r.index - p * k} (seed {r.seed}) diverged: "
                             f"{r.message}" for r in diverged)
            message = f"{message}; {note}" if message else note
        status = "finished" if out.status == "diverged" else out.status
        results.append(TrainResult(status, message, out.steps, summary))
    return results


def train_carried(store: RunStore, cfg: ExperimentConfig, run_id: str, carried: list[str],
                  sink: Sink) -> dict[str, TrainResult]:
    """The worker's side: the carrier `run_id` (config `cfg`, sink `sink`) and the points it
    claimed, trained together; {run id: its result}."""
    from mtl_core.trainer import resolve_device

    device = str(resolve_device(cfg.device))
    # the device the carrier's row shows, on every point (one transaction for all)
    store.set_statuses([(other, "running", f"{CARRIED_PREFIX}{run_id}", ["running"],
                         {"device": device}) for other in carried])
    ids = [run_id, *carried]
    configs = [cfg] + [parse_config(store.get_run(i).config) for i in carried]
    sinks: list[Sink] = [sink] + [store.sink(i) for i in carried]
    messages = [None] + [f"{CARRIED_PREFIX}{run_id}" for _ in carried]
    return dict(zip(ids, train_points(configs, sinks, messages), strict=True))


def _drop_total(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: v for k, v in metrics.items() if k != "total"}
