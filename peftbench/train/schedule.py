"""How many optimizer steps a trial takes: per epoch (one pass over the training scenes at the
total batch, last partial batch dropped, as Pointcept's ``drop_last``) and in all (OneCycle's
``total_steps``). Shared by the trial, which logs it, and ``peftbench run --dry-run``."""

from __future__ import annotations

from typing import Any

from peftbench.data.efficiency import efficiency_split, parse_split
from peftbench.data.sources import KindDataset, dataset_kind, expand_path
from peftbench.errors import PeftbenchError
from peftbench.train.config import TrainConfig


def steps_per_epoch(num_scenes: int, cfg: TrainConfig) -> int:
    return cfg.steps_per_epoch or max(num_scenes // cfg.batch_size, 1)


def schedule(num_scenes: int, cfg: TrainConfig) -> dict[str, int]:
    """``{"scenes", "batch_size", "accumulate", "micro_batch", "steps_per_epoch", "total_steps"}``."""
    per_epoch = steps_per_epoch(num_scenes, cfg)
    return {"scenes": num_scenes, "batch_size": cfg.batch_size, "accumulate": cfg.accumulate,
            "micro_batch": cfg.micro_batch, "steps_per_epoch": per_epoch, "total_steps": per_epoch * cfg.epochs}


def describe(plan: dict[str, int]) -> str:
    """One line: ``8 scenes / batch 2 (1 x 2) = 4 steps per epoch, 112 steps``."""
    return (f"{plan['scenes']} scenes / batch {plan['batch_size']} ({plan['accumulate']} x {plan['micro_batch']}) "
            f"= {plan['steps_per_epoch']} steps per epoch, {plan['total_steps']} steps")



def planned_scenes(dataset: dict[str, Any], split: str) -> int | None:
    """A trial's training scenes, counted without reading point data (for ``--dry-run``); None when
    the data is not on disk and the suite does not say how many (a real dataset's root is missing)."""
    try:
        root = expand_path(dataset["root"], "root")
        if root.is_dir():
            everything = KindDataset(dataset_kind(dataset["name"]), root, dataset["train_split"])
            if parse_split(split)[0] != "scenes":
                return len(everything)
            return len(efficiency_split(everything, root, split, int(dataset.get("data_seed") or 0)).scenes)
    except PeftbenchError:
        return None
    if dataset["name"] == "synthetic":  # written on the first run, with this many scenes
        return int((dataset.get("scenes") or {}).get("train", 16))
    return None


def planned_steps(spec: dict[str, Any]) -> str:
    """A resolved trial spec's schedule as one line, or what is missing to count it."""
    cfg = TrainConfig(**spec["train"])
    scenes = planned_scenes(spec["dataset"], spec.get("split", "full"))
    if scenes is None:
        if cfg.steps_per_epoch:
            return f"batch {cfg.batch_size} = {cfg.steps_per_epoch} steps per epoch, {cfg.steps_per_epoch * cfg.epochs} steps"
        return f"batch {cfg.batch_size} ({cfg.accumulate} x {cfg.micro_batch}); steps: dataset not found"
    return describe(schedule(scenes, cfg))
