"""The files of a run folder: how metric and snapshot lines are written and read back, and
the few file operations the run store needs to never leave a half-written file (see the
layout in mtl_core.store).
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON to a temporary file, then rename: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def append(path: Path, data: bytes) -> int | None:
    """Append in one O_APPEND write, so lines of concurrent appenders never interleave.
    Returns the file offset where `data` starts when it went out in that one write (the
    writer then knows its lines' ids without reading them back), else None."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view, writes = memoryview(data), 0
        while view:
            view = view[os.write(fd, view):]
            writes += 1
        return os.lseek(fd, 0, os.SEEK_CUR) - len(data) if writes == 1 else None
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads: flock is per open file)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): one process at a time is the user's job there
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def metric_item(step: Any, epoch: Any, split: Any, task: Any, name: Any, value: Any,
                replica: Any, when: float) -> list[Any]:
    """A metric row as its line holds it (JSON round-trips it exactly)."""
    return [int(step), float(epoch), str(split), str(task), str(name), real(value),
            int(replica), float(when)]


def metric_line(step: Any, epoch: Any, split: Any, task: Any, name: Any, value: Any,
                replica: Any, when: float) -> bytes:
    return item_line(metric_item(step, epoch, split, task, name, value, replica, when))


def item_line(item: list[Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def metric_row(run_id: str, line_id: int, item: list[Any]) -> tuple[Any, ...]:
    step, epoch, split, task, name, value, replica, when = item
    return (run_id, line_id, int(step), float(epoch), str(split), str(task), str(name),
            None if value is None else float(value), int(replica), float(when))


def snapshot_line(step: int, kind: str, payload: Any, when: float) -> bytes:
    doc = {"step": int(step), "kind": str(kind), "payload": payload, "time": float(when)}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def snapshot_row(run_id: str, line_id: int, item: dict[str, Any],
                 line: bytes | None = None) -> tuple[Any, ...]:
    """The index row of a parsed snapshot line; with the `line` itself, its payload's text
    is cut from it rather than encoded again (a grid payload is ~40 KB of JSON)."""
    payload = _payload_text(line, item) if line is not None else None
    return (run_id, line_id, int(item["step"]), str(item["kind"]),
            json.dumps(item["payload"]) if payload is None else payload, float(item["time"]))


def _payload_text(line: bytes, item: dict[str, Any]) -> str | None:
    """The payload's JSON text in a line `snapshot_line` wrote ({"step","kind","payload",
    "time"} in that order, compact): between the first `,"payload":` (the kind is an escaped
    string, so it cannot hold that byte sequence) and the last `,"time":` (only the time's
    number follows it). None for a line of another shape."""
    if list(item) != ["step", "kind", "payload", "time"] or not line.startswith(b'{"step":'):
        return None
    start, end = line.find(b',"payload":'), line.rfind(b',"time":')
    if start < 0 or end <= start:
        return None
    return line[start + len(b',"payload":'):end].decode()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def real(value: Any) -> float | None:
    if value is None:  # the index's NULL: a NaN
        return None
    value = float(value)
    return None if math.isnan(value) else value
