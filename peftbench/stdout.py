"""A closed stdout (`peftbench methods | head -1`) ends the command quietly, as `yes | head -1` ends."""

from __future__ import annotations

import os
import select
import sys
from typing import Callable

SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe stopped


def quiet_when_reader_leaves(command: Callable[[], int]) -> int:
    """Run `command`; if the reader of stdout went away, return 141 instead of a traceback."""
    try:
        try:
            return command()  # SystemExit too: `peftbench --help | head -1`
        finally:
            sys.stdout.flush()  # a reader that left shows here, not as "Exception ignored" at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # Python flushes stdout once more at exit: point it at devnull so that this stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_STATUS


def _stdout_closed() -> bool:
    """Whether stdout is a pipe without a reader (the error did not come from, say, a socket)."""
    if not hasattr(select, "poll"):  # Windows: no way to ask, trust the error
        return True
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # stdout is no file (captured, closed)
        return False
