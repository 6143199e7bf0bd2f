"""SIGTERM ends a suite run as a Ctrl-C does.

`kill PID`, `timeout` and batch schedulers (Slurm, Kubernetes) stop a process with SIGTERM. Python's
default dies on the spot, and once Ray is up in the driver its fatal-signal handler aborts (exit
134): either way the trials stay RUNNING in MLflow until the next run finds them orphaned. Raised
as KeyboardInterrupt, a SIGTERM takes the Ctrl-C path instead: trials KILLED, Ray shut down, exit 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Install the handler (again: ``ray.init`` replaces it with Ray's own). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block; the previous handler comes back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    interrupt_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raised_by_interrupt(err: BaseException | None) -> bool:
    """True for an interrupt, or an error raised while one was being handled: MLflow turns a
    Ctrl-C that lands inside its database session into an ``MlflowException`` (the interrupt is in
    its context chain), which must still end the suite as interrupted, not as a failed trial."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
