"""What a trial ran on, as one human-readable name: reports never mix hardware in one ratio."""

from __future__ import annotations

import platform
from pathlib import Path

CPU_PREFIX = "CPU: "


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_name() -> str:
    """The GPU a trial uses ("NVIDIA H200"), or "CPU: <model> (<n> threads)" on CPU-only runs."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    threads = torch.get_num_threads()
    return f"{CPU_PREFIX}{cpu_model()} ({threads} thread{'s' if threads != 1 else ''})"


def is_gpu(name: str | None) -> bool:
    """Whether a ``hardware_name`` names a GPU (None: not recorded, so not known to be one)."""
    return bool(name) and not str(name).startswith(CPU_PREFIX)
