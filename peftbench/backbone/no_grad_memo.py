"""Weights derived from parameters (a product, a concatenation), kept between calls while autograd is off.

Training rebuilds them in the graph on every call. Evaluation (validation, testing, ``peftbench bench``'s
inference) reads the same parameters call after call, and on a GPU each rebuild is kernels and host time in
every block: GEM's Spatial Adapter's conv weight, its Context Adapter's concatenated projections (issue 12).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def no_grad_memo(owner: nn.Module, name: object, sources: Sequence[Tensor], make: Callable[[], Tensor]) -> Tensor:
    """``make()``, memoised on ``owner`` under ``name`` while autograd is off, until one of ``sources`` changes.

    A source changes when it is written in place (its version counter: an optimizer step, ``load_state_dict``)
    or replaced (``module.to``, ``param.data = ...``). The memo keeps the tensors it was made from alive, so a
    replacement never reuses their memory and differs from them by address. With autograd on, ``make()``."""
    if torch.is_grad_enabled():
        return make()
    memo = owner.__dict__.setdefault("_no_grad_memo", {})  # a plain attribute: no state-dict keys
    entry = memo.get(name)
    if entry is not None:
        kept, versions, value = entry
        if all(s.data_ptr() == k.data_ptr() and s.dtype == k.dtype and s._version == v
               for s, k, v in zip(sources, kept, versions)):
            return value
    value = make()
    memo[name] = (tuple(s.detach() for s in sources), tuple(s._version for s in sources), value)
    return value
