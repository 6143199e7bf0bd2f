"""Autocast off for a float32 scope, at no cost where it is off already.

A ``torch.autocast(device, enabled=False)`` scope, entered and left, costs ~6.5 us of host time on a 2-core CPU
against ~1.1 us for this one where autocast is off (``timeit``). The adapters' float32 products take such a scope in
every block, forward and backward; on CUDA the backward runs on autograd's device thread, where autocast is off
unless ``backward()`` was called under it, and a GPU step waits on the host (issue 12).
"""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)`` where autocast is on for ``device_type``, else a no-op."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
