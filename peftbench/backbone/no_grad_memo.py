"""Weights derived from parameters (a product, a concatenation), kept between calls while autograd is off.

Training rebuilds them in the graph on every call. Evaluation (validation, testing, ``peftbench bench``'s
inference) reads the same parameters call after call, and on a GPU each rebuild is kernels and host time in
every block: GEM's Spatial Adapter's conv weight, its Context Adapter's concatenated projections (issue 12).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class _Memo:
    """A derived value, the sources it was made from (kept alive) and their versions, in ``memos[name]``. A
    gradient reaching a source drops it: the optimizer step that may follow can write the source without bumping
    its version (torch's fused AdamW does not)."""

    def __init__(self, memos: dict, name: str, sources: Sequence[Tensor], value: Tensor) -> None:
        self.memos, self.name, self.value = memos, name, value
        self.kept = tuple(s.detach() for s in sources)
        self.versions = tuple(s._version for s in sources)
        self.hooks = [s.register_post_accumulate_grad_hook(self.drop) for s in sources if s.requires_grad and s.is_leaf]

    def holds(self, sources: Sequence[Tensor]) -> bool:
        return all(s.data_ptr() == k.data_ptr() and s.dtype == k.dtype and s._version == v
                   for s, k, v in zip(sources, self.kept, self.versions))

    def drop(self, _param: Tensor | None = None) -> None:
        for hook in self.hooks:
            hook.remove()
        if self.memos.get(self.name) is self:
            del self.memos[self.name]


def no_grad_memo(owner: nn.Module, name: str, sources: Sequence[Tensor], make: Callable[[], Tensor]) -> Tensor:
    """``make()``, memoised on ``owner`` under ``name`` while autograd is off, until one of ``sources`` changes.

    A source changes when it is written in place (its version counter: ``load_state_dict``, an edit under
    ``no_grad``), replaced (``module.to``, ``param.data = ...``: the memo keeps the tensors it was made from alive,
    so a replacement never reuses their memory and differs from them by address), or when a gradient reaches it
    (before any optimizer step). Not seen: an optimizer stepping on gradients set by hand without a backward.
    With autograd on, ``make()``."""
    if torch.is_grad_enabled():
        return make()
    memos = owner.__dict__.setdefault("_no_grad_memo", {})  # a plain attribute: no state-dict keys
    memo = memos.get(name)
    if memo is None or not memo.holds(sources):
        if memo is not None:
            memo.drop()
        memo = memos[name] = _Memo(memos, name, sources, make())
    return memo.value
