"""Device prefetch and epoch pipelining: same batches, same order, errors surface, loaders start early."""

from __future__ import annotations

import pytest
import torch

from peftbench.data import prefetch
from peftbench.data.prefetch import EpochBatches, prefetch_to_device


def _batches(n: int, epoch: int = 0) -> list[dict]:
    return [{"coord": torch.full((3, 3), float(epoch * 100 + i)), "name": [f"s{i}"]} for i in range(n)]


def test_cpu_prefetch_is_the_identity() -> None:
    src = _batches(4)
    assert list(prefetch_to_device(iter(src), "cpu")) == src


def test_pin_thread_keeps_order_and_reraises(monkeypatch) -> None:
    monkeypatch.setattr(prefetch, "_pin", lambda b: b)  # CPU torch cannot pin; the thread logic is the point

    def broken():
        yield from _batches(2)
        raise ValueError("loader broke")

    got = []
    with pytest.raises(ValueError, match="loader broke"):
        for batch in prefetch._pinned(broken(), depth=1):
            got.append(float(batch["coord"][0, 0]))
    assert got == [0.0, 1.0]


def test_epoch_batches_reads_only_the_steps_and_starts_the_next_loader_early() -> None:
    made: list[tuple[int, int]] = []  # (epoch, batches consumed of the previous epoch when made)
    consumed = [0]

    def make(epoch: int):
        made.append((epoch, consumed[0]))
        return iter(_batches(10, epoch))  # longer than an epoch's steps

    pipeline = EpochBatches(make, steps_per_epoch=4, epochs=3, device="cpu", start_ahead=True, per_step=1)
    seen = []
    for epoch in range(3):
        consumed[0] = 0
        for batch in pipeline(epoch):
            consumed[0] += 1
            seen.append(float(batch["coord"][0, 0]))
    assert seen == [e * 100 + i for e in range(3) for i in range(4)]
    # epoch 0 made on demand; epochs 1 and 2 made while the previous one still had batches to go
    assert made == [(0, 0), (1, 2), (2, 2)]


def test_epoch_batches_without_workers_makes_each_loader_on_demand() -> None:
    made = []
    pipeline = EpochBatches(lambda e: made.append(e) or _batches(3, e), 3, 2, "cpu", start_ahead=False)
    for epoch in range(2):
        assert len(list(pipeline(epoch))) == 3
    assert made == [0, 1]


def test_a_step_of_many_micro_batches_is_pinned_and_its_next_epoch_started_a_step_ahead(monkeypatch) -> None:
    depths, made, consumed = [], [], [0]

    def recording_prefetch(batches, device, depth=2):
        depths.append(depth)
        yield from batches
    monkeypatch.setattr(prefetch, "prefetch_to_device", recording_prefetch)

    def make(epoch: int):
        made.append((epoch, consumed[0]))
        return iter(_batches(16, epoch))

    pipeline = EpochBatches(make, steps_per_epoch=16, epochs=2, device="cpu", start_ahead=True, per_step=8)
    for epoch in range(2):
        consumed[0] = 0
        for _ in pipeline(epoch):
            consumed[0] += 1
    assert depths == [8, 8]
    assert made == [(0, 0), (1, 8)]  # one step (8 micro-batches) before epoch 0 ends


def test_pin_thread_reads_depth_batches_ahead(monkeypatch) -> None:
    import time

    monkeypatch.setattr(prefetch, "_pin", lambda b: b)
    produced = []

    def source():
        for batch in _batches(20):
            produced.append(batch)
            yield batch
    pinned = prefetch._pinned(source(), depth=8)
    next(pinned)
    deadline = time.monotonic() + 10
    while len(produced) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # room to run further, were it not blocked
    assert len(produced) == 1 + 8 + 1  # taken, queued, one in hand waiting for room
