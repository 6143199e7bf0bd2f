"""Who owns a run or a local Ray cluster: host, pid and process start time, and whether that
process is still alive. The start time tells a live owner from a new process that reuses its pid."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the command name may hold spaces: split after ')'


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str  # clock ticks since boot, as text ("" where /proc is missing)

    @property
    def token(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, token: str | None) -> Owner | None:
        try:
            host, pid, start = str(token).rsplit(":", 2)
            return cls(host, int(pid), start)
        except ValueError:
            return None

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Only meaningful on the owner's host (``is_local``)."""
        ticks = _start_ticks(self.pid)
        if ticks is None:
            return False
        return not self.start or ticks == self.start


def this_process() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), _start_ticks(os.getpid()) or "")


def process_owner(pid: int) -> Owner | None:
    """The identity of another local process, or None if it is gone."""
    ticks = _start_ticks(pid)
    return None if ticks is None else Owner(socket.gethostname(), pid, ticks)
