"""Per-trial peak memory on CPU: sampled, and not inherited from an earlier trial of the same process."""

from __future__ import annotations

import time

import pytest
import torch

from peftbench.train.efficiency import PeakMemory, resident_megabytes

pytestmark = pytest.mark.skipif(resident_megabytes() is None, reason="needs /proc (Linux)")


def test_peak_memory_sees_a_transient_allocation_and_forgets_it_after() -> None:
    base = resident_megabytes()
    first = PeakMemory(torch.device("cpu"), interval=0.01)
    block = torch.ones(64 * 2**20)  # 256 MiB of float32, written so it is resident
    time.sleep(0.2)
    del block
    peak_first = first.megabytes()
    assert peak_first >= base + 200

    second = PeakMemory(torch.device("cpu"), interval=0.01)  # the next trial in a reused worker
    time.sleep(0.1)
    assert second.megabytes() < peak_first - 200
