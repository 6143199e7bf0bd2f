"""Stop a diverged training: a run whose loss turned NaN/Inf must end FAILED with the cause, never
FINISHED with the numbers of a broken model (which a resume would then skip forever)."""

from __future__ import annotations

import math
from typing import Any

from peftbench.errors import PeftbenchError

# GradScaler halves its scale on each skipped step: from 65536, 20 skips in a row reach a scale
# below 0.1, so the gradients are non-finite whatever the scale, not an fp16 overflow.
MAX_SKIPPED_STEPS = 20


class TrainingDiverged(PeftbenchError):
    """The loss or the gradients stopped being finite; the message says where and what to change."""


class DivergenceGuard:
    """Call ``check`` after every optimizer step; it raises ``TrainingDiverged`` on the first
    non-finite loss, or after ``max_skipped`` consecutive steps that AMP skipped."""

    def __init__(self, config: Any, max_skipped: int = MAX_SKIPPED_STEPS) -> None:
        self.lr = getattr(config, "lr", None)
        self.max_skipped = max_skipped
        self.skipped_in_a_row = 0

    def check(self, loss: float, epoch: int, step: int, skipped: bool = False) -> None:
        """``epoch`` and ``step`` count from 0 (shown from 1); ``skipped``: AMP skipped this step."""
        where = f"epoch {epoch + 1} step {step + 1}"
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at {where}; {self._advice()}")
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= self.max_skipped:
            raise TrainingDiverged(f"gradients were non-finite for {self.skipped_in_a_row} steps in a row (AMP "
                                   f"skipped them) up to {where}; {self._advice()} or set train.amp: false")

    def _advice(self) -> str:
        lr = f" (now {self.lr:g})" if self.lr is not None else ""
        return f"lower train.lr{lr}; the run is FAILED and runs again at the next `peftbench run`"
