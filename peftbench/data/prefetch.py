"""Device prefetch: batch i+1 is pinned and copied to the GPU on a side stream while step i runs.

The training step ends with a host sync (its loss is read), so a plain ``batch.to(device)`` at
the top of the next step copies ~100k points x (coord, grid_coord, feat, segment, ...) from
pageable memory while the GPU waits. ``prefetch_to_device`` pins each batch in a background
thread (so pinning overlaps the step too), then issues the copy with ``non_blocking=True`` on
its own CUDA stream one batch ahead; the consumer's stream waits on that copy only when it
takes the batch. Off CUDA it is the identity, so CPU runs are unchanged.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_DONE = object()


def _pin(batch: dict) -> dict:
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v)
            for k, v in batch.items()}


def _pinned(batches: Iterable[dict], depth: int) -> Iterator[dict]:
    """Batches pinned by a daemon thread, up to ``depth`` ahead; exceptions re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for batch in batches:
                slots.put(_pin(batch))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            slots.put(err)
        slots.put(_DONE)

    threading.Thread(target=work, daemon=True, name="peftbench-pin").start()
    while True:
        item = slots.get()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def prefetch_to_device(batches: Iterable[dict], device: torch.device | str, depth: int = 2) -> Iterator[dict]:
    """Yield the batches of ``batches`` already on ``device`` (tensors; other values as they are)."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)
    ahead: tuple[dict, torch.cuda.Event] | None = None
    for batch in _pinned(batches, depth):
        with torch.cuda.stream(stream):
            moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                     for k, v in batch.items()}
            ready = torch.cuda.Event()
            ready.record(stream)
        if ahead is not None:
            yield _take(*ahead)
        ahead = (moved, ready)
    if ahead is not None:
        yield _take(*ahead)


def _take(batch: dict[str, Any], ready: torch.cuda.Event) -> dict[str, Any]:
    """Make the current stream wait for the copy, and tell the allocator it uses the tensors."""
    current = torch.cuda.current_stream()
    current.wait_event(ready)
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            value.record_stream(current)
    return batch


class EpochBatches:
    """``train_batches(epoch)`` for the trainer: each epoch's batches prefetched to ``device``,
    and (with loader workers) the next epoch's loader started ``lead`` batches before this one
    ends, so its workers have batches ready when the epoch (and any validation) is over instead
    of starting cold. ``make(epoch)`` builds that epoch's loader, deterministic in (seed, epoch).

    A step takes ``per_step`` batches (micro-batches) at once, so that many are pinned ahead and the
    next loader starts that many before the end (with 2 ahead, a step of 8 waited at its start for
    six to be pinned and copied, one after the other).

    Starting ahead is only safe when the loader's workers hold their own copy of the dataset
    (``num_workers > 0``): the next loader sets the dataset's epoch in this process.
    """

    def __init__(self, make: Callable[[int], Iterable[dict]], steps_per_epoch: int, epochs: int,
                 device: torch.device | str, start_ahead: bool, per_step: int = 1) -> None:
        self.make, self.steps, self.epochs = make, steps_per_epoch, epochs
        self.device, self.start_ahead = device, start_ahead
        self.lead = self.depth = max(2, per_step)
        self._started: dict[int, Iterator[dict]] = {}

    def _iterator(self, epoch: int) -> Iterator[dict]:
        return self._started.pop(epoch, None) or iter(self.make(epoch))

    def __call__(self, epoch: int) -> Iterator[dict]:
        batches = itertools.islice(self._iterator(epoch), self.steps)  # never read past what the epoch uses
        for i, batch in enumerate(prefetch_to_device(batches, self.device, self.depth)):
            if self.start_ahead and i == max(self.steps - self.lead, 0) and epoch + 1 < self.epochs:
                self._started[epoch + 1] = iter(self.make(epoch + 1))
            yield batch
