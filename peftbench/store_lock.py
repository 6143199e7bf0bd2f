"""Locks that keep two ``peftbench run`` off each other's trials: one per experiment (held for the
whole run: a second run of the same experiment waits, then skips what the first finished) and one
per store (held while the sqlite database and the experiment are created, so that creation is
race-free). ``flock`` locks die with their process, so a killed run never leaves a stale lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from peftbench.cache import cache_dir, writable_dir
from peftbench.owner import this_process
from peftbench.tracking import sqlite_path

WAIT_NOTICE_S = 30.0


def _lock_folder(uri: str) -> Path:
    """Beside the sqlite file (every process using that file sees it); for servers, in the cache
    (then only runs on this machine are kept apart)."""
    db = sqlite_path(uri)
    if db is not None:
        return writable_dir(db.parent / f".{db.name}.locks", "tracking")
    return writable_dir(cache_dir() / "locks" / hashlib.sha256(uri.encode()).hexdigest()[:12], "cache")


@contextlib.contextmanager
def file_lock(path: Path, what: str, say: Callable[[str], None] | None = None,
              poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; while another process holds it, wait and say so."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited, last_notice = 0.0, -WAIT_NOTICE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if say and waited - last_notice >= WAIT_NOTICE_S:
                    holder = Path(path).read_text().strip() or "another process"
                    say(f"waiting: {what} is held by {holder} ({waited:.0f} s so far); this run continues "
                        "when it ends and skips the trials it finished")
                    last_notice = waited
                time.sleep(poll_s)
                waited += poll_s
        if say and waited:
            say(f"{what} is free after {waited:.0f} s of waiting")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"peftbench run pid {os.getpid()} ({this_process().token})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def experiment_lock(uri: str, experiment: str, say: Callable[[str], None] | None = None):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return file_lock(_lock_folder(uri) / f"experiment-{name}.lock", f"experiment {experiment!r}", say)


def store_lock(uri: str):
    return file_lock(_lock_folder(uri) / "store.lock", "the tracking store")
