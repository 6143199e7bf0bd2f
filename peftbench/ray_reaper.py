"""A watchdog that outlives nothing: started by `peftbench run` beside a local Ray cluster, it keeps
the list of the driver's descendant processes (Ray's GCS, raylet, agents, workers) and kills them
as soon as the driver is gone -- also after ``kill -9`` of the driver, when Ray's agents would
otherwise keep listening for minutes. It notices the driver's end as end-of-file on its stdin.

The list is also written to a JSON file under the cache, so that the next `peftbench run` can reap
a cluster whose watchdog was killed too (``reap_stale``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

from peftbench.owner import Owner, process_owner

REFRESH_S = 1.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _is_ray(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ray" in f.read()
    except OSError:
        return False


def descendants(pid: int) -> list[Owner]:
    """Every live Ray process below ``pid`` (Ray names its workers ``ray::...``), with its start time."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            todo.append(child)
            if child != os.getpid() and _is_ray(child) and (owner := process_owner(child)) is not None:
                found.append(owner)
    return found


def kill_all(processes: list[Owner], grace_s: float = 2.0) -> int:
    """SIGTERM, then SIGKILL what is left; only processes whose start time still matches."""
    alive = [p for p in processes if p.is_alive()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive:
            try:
                os.kill(p.pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if p.is_alive()]
    return len(processes) - len(alive)


def record(path: Path, driver: Owner, processes: list[Owner]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": driver.token, "processes": [p.token for p in processes]}))
    tmp.replace(path)


def reap_stale(folder: Path) -> int:
    """Kill the processes of recorded clusters whose driver is gone; returns how many were killed."""
    killed = 0
    for path in folder.glob("cluster-*.json") if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            driver = Owner.parse(data["driver"])
        except (OSError, ValueError, KeyError):
            continue
        if driver is None or not driver.is_local() or driver.is_alive():
            continue
        killed += kill_all([o for t in data["processes"] if (o := Owner.parse(t)) is not None], grace_s=1.0)
        path.unlink(missing_ok=True)
    return killed


def watch(driver: Owner, path: Path) -> None:
    known: dict[int, Owner] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], REFRESH_S)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break  # EOF: the driver closed the pipe or died
        if not driver.is_alive():
            break
        fresh = {p.pid: p for p in descendants(driver.pid)}
        if fresh.keys() - known.keys():
            known.update(fresh)
            record(path, driver, list(known.values()))
    kill_all(list(known.values()) + descendants(driver.pid))
    path.unlink(missing_ok=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the driver; this one cleans up after it
    owner = Owner.parse(sys.argv[1])
    if owner is not None:
        watch(owner, Path(sys.argv[2]))
