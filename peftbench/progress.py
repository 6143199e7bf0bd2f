"""Progress for long work, readable from across the room and in CI logs.

* ``SuiteProgress``: the suite bar -- finished / running / failed trials, elapsed time, and an ETA
  from the measured durations of finished trials -- and one line per finished trial with its test
  mIoU.
* ``TaskProgress``: the bar of one piece of work in this process (training steps with epoch and
  loss, the voting test, data generation) with tqdm's ETA; the trainer's epoch lines go above it.

On a terminal these are tqdm bars; otherwise (a pipe, a CI log, ``TERM=dumb``) plain lines, so
logs stay readable and greppable. ``quiet`` keeps only the per-trial result lines and summaries.
Code that does the work only calls ``report_progress(progress, ...)`` and a plain ``progress(str)``;
it never needs to know which of these it talks to.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

try:
    from tqdm import tqdm
except ImportError:  # a minimal image (e.g. a GPU machine's bundle) without tqdm: plain lines
    tqdm = None

Say = Callable[[str], None]


def interactive(stream: TextIO) -> bool:
    """Bars only where a person watches a terminal that can redraw a line."""
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # closed or fake streams
        return False


def clock_text(seconds: float | None) -> str:
    """[H:]MM:SS, as tqdm writes times."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def report_progress(progress: Any, task: str, done: int, total: int, lines: bool = True, **info: Any) -> None:
    """Tell ``progress`` that ``done`` of ``total`` of ``task`` are done. A ``TaskProgress`` draws
    its bar; a plain callable taking strings gets a line at every tenth (unless ``lines`` is
    False: callers whose own lines already say it, as the trainer's epoch lines)."""
    if progress is None:
        return
    update = getattr(progress, "update", None)
    if callable(update):
        update(task, done, total, lines=lines, **info)
    elif lines and total and done > 0 and (done == total or done % max(total // 10, 1) == 0):
        progress(f"{task}: {done}/{total}")


class Console:
    """Where the command's output goes. Callable as ``say(message)`` (lines are written above live
    bars); ``suite(total)`` and ``task()`` make the bars, plain lines when not interactive."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, bars: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.bars = (interactive(self.stream) if bars is None else bars) and not quiet and tqdm is not None

    def __call__(self, message: str) -> None:
        if self.bars:
            tqdm.write(message, file=self.stream)
            self.stream.flush()
        else:
            print(message, file=self.stream, flush=True)

    def detail(self, message: str) -> None:
        """A line that ``--quiet`` drops."""
        if not self.quiet:
            self(message)

    def suite(self, total: int) -> SuiteProgress:
        return SuiteProgress(total, self)

    def task(self, prefix: str = "") -> TaskProgress:
        return TaskProgress(self, prefix)


def as_console(say: Say) -> Console:
    """``say`` itself when it is a Console, else a lines-only Console printing through ``say``."""
    if isinstance(say, Console):
        return say
    return _SayConsole(say)


class _SayConsole(Console):
    def __init__(self, say: Say) -> None:
        super().__init__(bars=False)
        self._say = say

    def __call__(self, message: str) -> None:
        self._say(message)


class SuiteProgress:
    """Counts of a suite's trials, with the ETA from the mean measured duration of finished trials
    spread over the trials running side by side (at most as many as were seen running at once)."""

    def __init__(self, total: int, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.console, self.clock = total, console, clock
        self.start = clock()
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self.failed = 0
        self.most_at_once = 1
        self.bar = (tqdm(total=total, file=console.stream, unit="trial", dynamic_ncols=True,
                         bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} trials{postfix}")
                    if console.bars else None)
        self._stop = threading.Event()
        if self.bar is not None:  # elapsed and ETA move while a long trial runs
            threading.Thread(target=self._tick_every_second, daemon=True).start()
        self._refresh()

    @property
    def finished(self) -> int:
        return len(self.durations)

    def eta_seconds(self) -> float | None:
        durations, starts = list(self.durations), list(self.running.values())  # snapshots: the ticker thread reads
        if not durations:
            return None
        now, mean = self.clock(), sum(durations) / len(durations)
        waiting = self.total - len(durations) - self.failed - len(starts)
        left_running = sum(max(mean - (now - start), 0.0) for start in starts)
        return (waiting * mean + left_running) / max(self.most_at_once, 1)

    def status(self) -> str:
        return (f"{self.finished} done, {len(self.running)} running, {self.failed} failed, "
                f"elapsed {clock_text(self.clock() - self.start)}, ETA {clock_text(self.eta_seconds())}")

    def started(self, name: str) -> None:
        self.running[name] = self.clock()
        self.most_at_once = max(self.most_at_once, len(self.running))
        if self.bar is None:
            self.console.detail(f"  started  {name}")
        self._refresh()

    def epoch(self, name: str, epoch: Any, metrics: dict[str, Any]) -> None:
        """A running trial's epoch (Ray reports them): a line without bars, the bar's text with."""
        val = metrics.get("val/mIoU")
        text = f"epoch {epoch} {name}: loss {metrics.get('train/loss', float('nan')):.3f}" + (
            f", val mIoU {val:.3f}" if val is not None else "")
        if self.bar is None:
            self.console.detail(f"  {text}")
        else:
            self.bar.set_description_str(f"{text} | ", refresh=False)
            self._refresh()

    def finished_trial(self, name: str, miou: float | None = None, error: str | None = None) -> None:
        """One line per finished trial (kept by ``--quiet``): its test mIoU or its error."""
        began = self.running.pop(name, None)
        seconds = self.clock() - began if began is not None else None
        if error is None:
            self.durations.append(seconds if seconds is not None else self.clock() - self.start)
            result = f"test mIoU {miou:.3f}" if miou is not None else "done"
        else:
            self.failed += 1
            result = f"FAILED: {error}"
        took = f" in {clock_text(seconds)}" if seconds is not None else ""
        self.console(f"[{self.finished + self.failed}/{self.total}] {name}: {result}{took} ({self.status()})")
        if self.bar is not None:
            self.bar.update(1)
        self._refresh()

    def tick(self) -> None:
        """Redraw (elapsed and ETA move while nothing finishes)."""
        self._refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self._refresh()
            self.bar.close()
            self.bar = None

    def _tick_every_second(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()

    def _refresh(self) -> None:
        bar = self.bar
        if bar is not None:
            bar.set_postfix_str(self.status(), refresh=False)
            bar.refresh()


class TaskProgress:
    """A bar per task in this process (``report_progress`` updates it); called with a string, a line
    (above the bar) -- the trainer's epoch lines, with the running task's elapsed time and ETA."""

    def __init__(self, console: Console, prefix: str = "") -> None:
        self.console, self.prefix = console, prefix
        self.bar: tqdm | None = None
        self.task: str | None = None
        self.start = time.monotonic()
        self.done, self.total = 0, 0

    def __call__(self, message: str) -> None:
        eta = ""
        if self.task is not None and 0 < self.done < self.total:
            rate = (time.monotonic() - self.start) / self.done
            eta = (f" [{clock_text(time.monotonic() - self.start)} elapsed, "
                   f"ETA {clock_text(rate * (self.total - self.done))}]")
        self.console.detail(f"{self.prefix}{message}{eta}")

    def update(self, task: str, done: int, total: int, lines: bool = True, **info: Any) -> None:
        if task != self.task or total != self.total:
            self._close_bar()
            self.task, self.total, self.start = task, total, time.monotonic()
            if self.console.bars:
                self.bar = tqdm(total=total, desc=f"{self.prefix}{task}", file=self.console.stream,
                                dynamic_ncols=True, leave=False)
        self.done = done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if info:
                self.bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in info.items()})
        elif lines and done > 0 and not self.console.quiet and (done == total or done % max(total // 10, 1) == 0):
            self.console(f"{self.prefix}{task}: {done}/{total}")
        if done >= total:
            self._close_bar()
            self.task = None

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
