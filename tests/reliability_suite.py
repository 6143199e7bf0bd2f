"""A micro suite for the bad-input and fault tests: tiny backbone, 2+1 synthetic scenes, 1 epoch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import MICRO

MICRO_SUITE: dict[str, Any] = {
    "name": "faults",
    "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO.items()}},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 2, "val": 1},
                  "points_per_m2": 15}],
    "methods": ["linear"],
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 2, "grid_size": 0.1},
}


def write_suite(folder: Path, name: str = "suite.yaml", **changes: Any) -> Path:
    """The micro suite with top-level keys replaced; ``train`` entries are merged."""
    suite = copy.deepcopy(MICRO_SUITE)
    suite["train"].update(changes.pop("train", {}))
    suite.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(suite))
    return path


def runs(uri: str, experiment: str = "faults") -> list[Any]:
    """All runs of the experiment, deleted ones excluded (as reports see them)."""
    from peftbench import tracking

    client = tracking.client(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])
