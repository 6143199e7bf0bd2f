"""``Function.apply``, or where autograd is off, the Function's forward called directly.

Even where nothing is recorded, ``apply`` builds a context and wraps the inputs and outputs: ~11 us of host time a
call on a 2-core CPU against ~0.5 for the call itself. Evaluation makes ~140 such calls in a GEM step at Sonata's
size (the convs, norms, slot gathers and adapters of 24 blocks), and a GPU step waits on the host (issue 12).
"""

from __future__ import annotations

from typing import Any

import torch


class _Unrecorded:
    """The context of a forward whose backward never runs: what it keeps is dropped with it."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        pass


def apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)``; with autograd off, ``function.forward`` on a context that records nothing (its
    forward may set attributes and save tensors; it must not read ``needs_input_grad``)."""
    if torch.is_grad_enabled():
        return function.apply(*args)
    return function.forward(_Unrecorded(), *args)
