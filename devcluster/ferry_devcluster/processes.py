"""Long-running processes that outlive the `devcluster up` command that started them.

Each process starts in a session (and so a process group) of its own, so that stopping it also stops
anything it spawned, and so that a Ctrl-C in the terminal that ran `up` does not reach it. A pid file
records the pid together with the process's start time: a pid reused by an unrelated process after a
reboot is never mistaken for ours, and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one component."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    process_group: int
    state: str
    start_time: int


def proc_info(pid: int) -> ProcInfo | None:
    """Fields of /proc/PID/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may itself contain spaces or parentheses
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcInfo(pid=pid, state=fields[0], process_group=int(fields[2]), start_time=int(fields[19]))


def _all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def group_members(process_group: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for pid in _all_pids():
        info = proc_info(pid)
        if info is not None and info.process_group == process_group and info.state != "Z":
            members.append(pid)
    return members


def strays(state_dir: Path, bin_dir: Path) -> list[int]:
    """Live processes running one of our cached binaries with a command line that names `state_dir`.
    Both conditions: a shell tailing a log in the state directory is not ours to stop."""
    found = []
    for pid in _all_pids():
        try:
            executable = Path(os.readlink(f"/proc/{pid}/exe"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        info = proc_info(pid)
        if info is None or info.state == "Z":
            continue
        if executable.parent == bin_dir and str(state_dir) in cmdline:
            found.append(pid)
    return found


class Supervisor:
    """Starts, finds and stops the cluster's processes via pid files in `run_dir`."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The pid of the named process if it is running (and is the one we started)."""
        pid_file = self._pid_file(name)
        if not pid_file.exists():
            return None
        try:
            recorded = json.loads(pid_file.read_text())
        except json.JSONDecodeError:
            return None
        info = proc_info(int(recorded["pid"]))
        if info is None or info.state == "Z" or info.start_time != recorded["start_time"]:
            return None
        return info.pid

    def start(self, spec: ProcessSpec) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(spec.name)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n=== {stamp} devcluster starts: {' '.join(spec.argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
                start_new_session=True,
                close_fds=True,
            )
        info = proc_info(process.pid)
        start_time = info.start_time if info is not None else 0
        self._pid_file(spec.name).write_text(json.dumps({"pid": process.pid, "start_time": start_time}))
        return process.pid

    def exited_early(self, name: str) -> bool:
        return self._pid_file(name).exists() and self.pid(name) is None

    def stop(self, name: str, grace_seconds: float = 10.0) -> bool:
        """SIGTERM the process's group, SIGKILL what is left after the grace period. True if it ran."""
        pid = self.pid(name)
        self._pid_file(name).unlink(missing_ok=True)
        if pid is None:
            return False
        terminate_groups([pid], grace_seconds)
        return True

    def known_names(self) -> list[str]:
        if not self.run_dir.exists():
            return []
        return sorted(path.stem for path in self.run_dir.glob("*.pid"))


def _alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and info.state != "Z"


def terminate_pids(pids: Sequence[int], grace_seconds: float) -> None:
    """SIGTERM single processes, then SIGKILL those still alive after the grace period."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def terminate_groups(process_groups: Sequence[int], grace_seconds: float) -> None:
    """Stop whole process groups: SIGTERM, wait, then SIGKILL the stragglers."""
    for group in process_groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not any(group_members(group) for group in process_groups):
            return
        time.sleep(0.1)
    for group in process_groups:
        for pid in group_members(group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(group_members(group) for group in process_groups):
        time.sleep(0.05)
