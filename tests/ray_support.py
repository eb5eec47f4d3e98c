"""A local Ray cluster of a test module's (or a benchmark's) own, ended by the process ids it
started: `ray start` runs in a new session, its daemons stay in that process group, and the
workers its raylet starts (which leave the group) are found as its descendants. Every port a
node listens on is a free one, so a second node, or another cluster on the same machine, does
not collide with Ray's default ports."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    env.pop("MTL_RAY_ADDRESS", None)
    return env


def _ports() -> list[str]:
    """Every port a Ray node listens on, free ones: a second node, or another helper's
    cluster on this machine, must not collide with the defaults."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port",
            str(free_port()), "--metrics-export-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port())]


def _descendants(pids: set[int]) -> set[int]:
    """Processes started by these (Ray's workers leave their process group)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class LocalCluster:
    """`start("--head", ...)` first, then `start("--address", cluster.address, ...)` per extra
    node; `stop()` ends them all."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="mtlray", dir="/tmp")  # short: socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []

    def start(self, *args: str) -> None:
        ray_cli = str(Path(sys.executable).parent / "ray")
        proc = subprocess.Popen([ray_cli, "start", *args, "--disable-usage-stats", *_ports()],
                                env=ray_env(), cwd=self.temp, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        # ray start daemonizes inside its new session: its pid is the daemons' group.
        self.groups.append(proc.pid)
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out

    def kill_group(self, group: int) -> None:
        members = {int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                   if _field(p, 2) == group}
        for pid in members | _descendants(members):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for group in reversed(self.groups):
            if group > 0:
                self.kill_group(group)
        shutil.rmtree(self.temp, ignore_errors=True)


def _field(stat: Path, index: int) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[-1].split()[index])
    except (OSError, ValueError, IndexError):
        return None


