"""The fair queue: in which order queued runs are served, owners in turn.

Pure functions over (run id, owner) pairs plus the index queries they need; the run store
calls them inside its claim transaction (`RunStore.claim_run`) and to say where a run stands
(`RunStore.queue_place`), so both always agree.
"""
from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping

from mtl_core.owners import OPERATOR_ID

CARRIED_PREFIX = "carried by run "  # the message of a sweep point a stacked run trains


def fair_order(queued: list[tuple[str, str]], last_served: Mapping[str, float],
               active: Mapping[str, int], owner_cap: int) -> list[tuple[str, bool]]:
    """The order in which queued runs will be served, as (run id, blocked) pairs.

    `queued`: (run id, owner) oldest first. Owners take turns: the next run goes to the owner
    served least recently (`last_served`: when each owner's latest run started; never served
    comes first), ties to the owner whose waiting run is oldest; within an owner, oldest first.
    An owner with `owner_cap` runs active (0 = no cap; the operator has none) waits until one
    ends: its runs come last, marked blocked.
    """
    heads: dict[str, list[str]] = {}
    first_seen: dict[str, int] = {}
    for i, (run_id, owner) in enumerate(queued):
        heads.setdefault(owner, []).append(run_id)
        first_seen.setdefault(owner, i)
    last = {o: last_served.get(o, -math.inf) for o in heads}
    busy = {o: active.get(o, 0) for o in heads}
    clock = max([0.0, *[v for v in last_served.values() if v is not None]])
    order: list[tuple[str, bool]] = []
    while heads:
        free = [o for o in heads
                if not owner_cap or o == OPERATOR_ID or busy[o] < owner_cap]
        if not free:
            break
        owner = min(free, key=lambda o: (last[o], first_seen[o]))
        order.append((heads[owner].pop(0), False))
        clock += 1.0
        last[owner], busy[owner] = clock, busy[owner] + 1
        if not heads[owner]:
            del heads[owner]
    blocked = {rid for ids in heads.values() for rid in ids}
    order += [(rid, True) for rid, _ in queued if rid in blocked]
    return order


def queued_rows(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT id, owner FROM runs WHERE status = 'queued' ORDER BY created_at, rowid")]


def last_served(conn: sqlite3.Connection) -> dict[str, float]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT owner, MAX(started_at) FROM runs WHERE started_at IS NOT NULL GROUP BY owner")}


def count_by_owner(conn: sqlite3.Connection, statuses: Iterable[str]) -> dict[str, int]:
    """Runs per owner in `statuses`; a sweep point carried by another run's stacked model
    (mtl_core.stacked_sweep) is not counted: its carrier is."""
    wanted = list(statuses)
    return {r[0]: r[1] for r in conn.execute(
        f"SELECT owner, COUNT(*) FROM runs WHERE status IN ({','.join('?' * len(wanted))}) "
        "AND COALESCE(message, '') NOT LIKE ? GROUP BY owner", [*wanted, f"{CARRIED_PREFIX}%"])}


def is_carried(message: str | None) -> bool:
    """Whether a live run is a sweep point trained inside another run's stacked model."""
    return bool(message) and message.startswith(CARRIED_PREFIX)  # type: ignore[union-attr]
