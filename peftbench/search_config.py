"""The ``search:`` and ``final:`` sections of a suite: what to try per method, then which seeds to run.

    search: {lr: [2.0e-4, 6.0e-4, 2.0e-3], metric: val/mIoU, scheduler: asha, seeds: [0]}
    final: {seeds: [0, 1, 2]}

Keys that name a training setting (``lr``, ``method_lr``, ``weight_decay``, ...) take a list of values
and span a grid; the others steer the search. A method entry's own ``search:`` is merged over the
suite's.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from peftbench.errors import PeftbenchError
from peftbench.schema import build
from peftbench.train.config import TrainConfig

SCHEDULERS = ("asha", "none")


@dataclasses.dataclass
class SearchSpec:
    space: dict[str, list[Any]]          # training setting -> values tried (a grid over all of them)
    metric: str = "val/mIoU"             # picked on the validation split; the last reported value counts
    mode: str = "max"
    scheduler: str = "asha"              # asha: stop weak trials early (Ray Tune's ASHA), none: run all
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    grace_period: int = 1                # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: float = 3.0        # ASHA: keep the best 1/reduction_factor at each rung

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the space's values, in the order written."""
        keys = list(self.space)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.space[k] for k in keys))]


@dataclasses.dataclass
class FinalSpec:
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])


_CONTROL = {f.name for f in dataclasses.fields(SearchSpec)} - {"space"}
_TRAIN = {f.name for f in dataclasses.fields(TrainConfig)}


def parse_search(raw: Any, where: str) -> SearchSpec | None:
    """A validated ``SearchSpec`` from a ``search:`` mapping (None: no search)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PeftbenchError(f"{where}: expected a mapping like {{lr: [2.0e-4, 2.0e-3], metric: val/mIoU}}")
    space, control = {}, {}
    for key, value in raw.items():
        if key in _CONTROL:
            control[key] = value
        elif key in _TRAIN:
            if not isinstance(value, list) or not value:
                raise PeftbenchError(f"{where}.{key}: give the values to try as a non-empty list, e.g. [{value}]")
            space[key] = value
        else:
            raise PeftbenchError(f"{where}.{key}: neither a training setting nor one of {', '.join(sorted(_CONTROL))}")
    if not space:
        raise PeftbenchError(f"{where}: names no training setting to search (e.g. lr: [2.0e-4, 2.0e-3])")
    spec: SearchSpec = build(SearchSpec, {**control, "space": space}, where)
    if spec.scheduler not in SCHEDULERS:
        raise PeftbenchError(f"{where}.scheduler: {spec.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if spec.mode not in ("max", "min"):
        raise PeftbenchError(f"{where}.mode: {spec.mode!r}; use max or min")
    if not spec.seeds:
        raise PeftbenchError(f"{where}.seeds: list at least one seed")
    if spec.grace_period < 1 or spec.reduction_factor <= 1:
        raise PeftbenchError(f"{where}: grace_period must be >= 1 and reduction_factor > 1")
    return spec


def method_search(suite_raw: dict[str, Any] | None, entry_raw: dict[str, Any] | None,
                  where: str) -> SearchSpec | None:
    """The search of one method entry: its own ``search`` keys merged over the suite's."""
    if suite_raw is None and entry_raw is None:
        return None
    return parse_search({**(suite_raw or {}), **(entry_raw or {})}, where)
