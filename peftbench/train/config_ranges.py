"""Range checks of training settings: a value of the right type but outside its sensible range
(``epochs: 0``, ``batch_size: 0``, ``lr: -1``) is a one-line error before any trial starts, never
an untrained FINISHED run or a ZeroDivisionError inside a trial."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from peftbench.errors import PeftbenchError

# field -> (test, what the value must be); fields a config does not have are skipped, so the
# table may name fields that other branches add. None passes (it means "unset" for Optional fields).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {}


def _rule(test: Callable[[Any], bool], text: str, *names: str) -> None:
    for name in names:
        _RULES[name] = (test, text)


_rule(lambda v: v >= 1, "an integer >= 1", "epochs", "batch_size", "steps_per_epoch", "eval_every", "point_max",
      "micro_batches_per_pass", "test_fragments_per_pass", "val_batch_size")
_rule(lambda v: v >= 0, "an integer >= 0", "num_workers")
_rule(lambda v: v > 0, "a number > 0", "lr", "method_lr", "grid_size", "div_factor", "final_div_factor")
_rule(lambda v: v >= 0, "a number >= 0", "backbone_lr", "weight_decay", "grad_clip", "lovasz_weight")
_rule(lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)", "pct_start")
_rule(lambda v: 0 <= v <= 1, "a probability between 0 and 1", "mix_prob")


def check_ranges(config: Any) -> None:
    """Raise a PeftbenchError naming the first field of ``config`` outside its range."""
    for name, (test, text) in _RULES.items():
        value = getattr(config, name, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or not test(value):
            raise PeftbenchError(f"{name} must be {text}, got {value!r}")
