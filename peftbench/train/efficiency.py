"""Peak memory of one trial: CUDA allocator peak on GPU, sampled resident set on CPU."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading

import torch

_STATM = "/proc/self/statm"


def resident_megabytes() -> float | None:
    """This process's resident set now (Linux), or None where /proc is absent."""
    try:
        with open(_STATM) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages resident otherwise
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Started with the trial, read at its end.

    On CPU the process's own max RSS would include earlier trials of a reused Ray worker, so
    a thread samples the resident set every ``interval`` seconds instead (falls back to the
    process max RSS where /proc is absent, e.g. macOS).
    """

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device = device
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            torch.cuda.empty_cache()  # a reused Ray worker's earlier trial keeps no cached blocks
            torch.cuda.reset_peak_memory_stats(device)
        elif resident_megabytes() is not None:
            _release_free_memory()  # what an earlier trial of this worker freed is not this trial's
            self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
            self._thread.start()

    def _sample(self, interval: float) -> None:
        while True:
            self.peak = max(self.peak, resident_megabytes() or 0.0)
            if self._stop.wait(interval):
                return

    def megabytes(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            return self.peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
