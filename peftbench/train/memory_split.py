"""Evaluation forwards that survive running out of GPU memory: validation's scenes
(``train.val_batch_size``) and voting's fragments (``train.test_fragments_per_pass``) never interact
in PTv3, so a batch that does not fit is run again in halves with the same predictions, and an
evaluation at the end of a long trial is not lost to a large scene."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from peftbench.data.collate import concat_batches, split_batch
from peftbench.errors import PeftbenchError


class SplitOnOutOfMemory:
    """``self(batch)``: ``[(part, forward(part)), ...]`` for a collated batch of independent scenes.
    After an out-of-memory the batch runs in halves (recursively) and later batches are cut to the
    size that fitted; one scene that does not fit raises ``PeftbenchError`` naming ``what``."""

    def __init__(self, forward: Callable[[dict], torch.Tensor], what: str) -> None:
        self.forward, self.what = forward, what
        self.limit: int | None = None  # scenes a forward since an out-of-memory

    def __call__(self, batch: dict) -> list[tuple[dict, torch.Tensor]]:
        scenes = len(batch["offset"])
        if self.limit is not None and scenes > self.limit:
            return self._in_parts(batch, self.limit)
        try:
            return [(batch, self.forward(batch))]
        except torch.cuda.OutOfMemoryError as err:
            if scenes == 1:
                raise PeftbenchError(f"out of GPU memory on one {self.what} of {len(batch['coord'])} points, "
                                     "alone in its forward: it needs a GPU with more memory") from err
        # outside the except: the failed forward's tensors are freed before the halves run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.limit = max(scenes // 2, 1)
        warnings.warn(f"out of GPU memory on {scenes} {self.what}s in one forward; going on with "
                      f"{self.limit} (slower, same predictions)", RuntimeWarning, stacklevel=2)
        return self._in_parts(batch, self.limit)

    def _in_parts(self, batch: dict, size: int) -> list[tuple[dict, torch.Tensor]]:
        scenes = split_batch(batch)
        return [pair for first in range(0, len(scenes), size)
                for pair in self(concat_batches(scenes[first:first + size]))]
