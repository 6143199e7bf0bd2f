"""Autocast off for a float32 scope, at no cost where it is off already.

Entering ``torch.autocast(device, enabled=False)`` and leaving it cost ~16 us of host time on a 2-core CPU. The
adapters' float32 products take such a scope in every block, forward and backward; on CUDA the backward runs on
autograd's device thread, where autocast is off, and a GPU step waits on the host (issue 12).
"""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)`` where autocast is on for ``device_type``, else a no-op."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
