"""From a suite's dataset entry to readers: which folder, which label file, which classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.data.collate import collate_points
from peftbench.data.layout import SceneFolderDataset
from peftbench.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_dataset
from peftbench.data.transforms import sonata_train_transform, sonata_val_transform
from peftbench.errors import PeftbenchError


@dataclass(frozen=True)
class DatasetKind:
    classes: tuple[str, ...]
    label_file: str = "segment.npy"
    label_column: int | None = None


DATASET_KINDS: dict[str, DatasetKind] = {
    "synthetic": DatasetKind(SYNTHETIC_CLASSES),
}


def dataset_kind(name: str) -> DatasetKind:
    if name not in DATASET_KINDS:
        raise PeftbenchError(f"unknown dataset {name!r}; available: {', '.join(DATASET_KINDS)}")
    return DATASET_KINDS[name]


def prepare_dataset(spec: dict[str, Any]) -> None:
    """Make sure the data exists: synthetic data is generated (idempotent), real data checked."""
    root = Path(spec["root"])
    if spec["name"] == "synthetic":
        write_synthetic_dataset(root, spec["domain"] or "target", spec.get("scenes") or {"train": 16, "val": 8},
                                seed=spec.get("data_seed", 0), points_per_m2=spec.get("points_per_m2"))
    elif not root.is_dir():
        raise PeftbenchError(f"dataset root not found: {root} (set `root` of dataset {spec['name']!r} in the suite)")


def build_split(spec: dict[str, Any], split: str, train: bool, grid_size: float, point_max: int,
                seed: int, augment: bool = True, loop: int = 1) -> SceneFolderDataset:
    kind = dataset_kind(spec["name"])
    if train:
        transform = sonata_train_transform(grid_size, point_max) if augment else sonata_val_transform(grid_size)
    else:
        transform = sonata_val_transform(grid_size)
    return SceneFolderDataset(spec["root"], split, label_file=kind.label_file, label_column=kind.label_column,
                              num_classes=len(kind.classes), transform=transform, seed=seed, loop=loop)


def batches(dataset: SceneFolderDataset, batch_size: int, shuffle: bool, seed: int, epoch: int,
            drop_last: bool, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A loader for one epoch; its order and augmentations depend only on (seed, epoch)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       drop_last=drop_last, num_workers=num_workers, collate_fn=collate_points)
