"""What a trial ran on, as one human-readable name: reports never mix hardware in one ratio."""

from __future__ import annotations

import platform
from pathlib import Path

CPU_PREFIX = "CPU: "
HARDWARE_TAG = "peftbench.hardware"  # every run's hardware_name(): reports group by it, cost prices by it


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_name(device: object = None) -> str:
    """The GPU a trial uses ("NVIDIA H200"), or "CPU: <model> (<n> threads)" on CPU-only runs.
    ``device``: a torch device (or its name) to name instead of this process's default."""
    import torch

    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device() if device is None else device)
    threads = torch.get_num_threads()
    return f"{CPU_PREFIX}{cpu_model()} ({threads} thread{'s' if threads != 1 else ''})"


def is_gpu(name: str | None) -> bool:
    """Whether a ``hardware_name`` names a GPU (None: not recorded, so not known to be one)."""
    return bool(name) and not str(name).startswith(CPU_PREFIX)
