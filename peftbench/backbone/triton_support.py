"""Triton is optional: its kernel modules are imported on first use, or not at all."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def triton_kernels(module: str) -> ModuleType | None:
    """``peftbench.backbone.<module>`` (a module of Triton kernels), or None where Triton does not import."""
    try:
        return importlib.import_module(f"peftbench.backbone.{module}")
    except ImportError:
        return None
