"""From a suite's dataset entry to readers: which folder, which label file, which classes, which
transforms (the kind's recipe), which scenes and labelled points (data efficiency), which batches.

Dataset roots may name environment variables (``root: ${SCANNET_ROOT}``); ``prepare_dataset``,
which the driver calls for every dataset before any trial starts, stops with one line naming the
missing root and the setting or variable that points to it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftbench.data.collate import collate_points, mix3d_collate
from peftbench.data.datasets import DATASET_KINDS, DatasetKind, dataset_kind
from peftbench.data.efficiency import LimitedAnnotation, efficiency_split
from peftbench.data.layout import SceneFolderDataset
from peftbench.data.synthetic import write_synthetic_dataset
from peftbench.data.transforms import Compose, SphereCrop, sonata_train_transform, sonata_val_transform
from peftbench.errors import PeftbenchError
from peftbench.hub import fetch_hub_file, hub_reference

__all__ = [
    "DATASET_KINDS", "DatasetKind", "KindDataset", "batches", "build_split", "build_test_set", "build_train_set",
    "dataset_kind", "expand_path", "kind_train_transform", "prepare_dataset", "resolve_file", "resolve_root",
]

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_path(raw: str | os.PathLike, setting: str) -> Path:
    """``raw`` with ``$VAR``/``${VAR}`` and ``~`` expanded; an unset variable is a one-line error
    naming it and ``setting`` (the suite key). Variables join like path parts: a variable whose
    value is an absolute path replaces what precedes it (so ``/cwd/${ROOT}``, as left by making a
    path absolute before expansion, still gives ``$ROOT``)."""
    text, out, last = str(raw), "", 0
    for match in _VARIABLE.finditer(text):
        name = match.group(1) or match.group(2)
        value = os.environ.get(name)
        if value is None:
            raise PeftbenchError(f"{setting} is {text!r} but environment variable {name} is not set: "
                                 f"export {name}=<path> or write the path in {setting}")
        out += text[last:match.start()]
        out = value if os.path.isabs(value) else out + value
        last = match.end()
    out += text[last:]
    return Path(os.path.expanduser(out))


def resolve_file(raw: str | os.PathLike, setting: str) -> Path:
    """An existing file named by a setting (e.g. ``backbone.checkpoint: ${SONATA_CHECKPOINT}``), or a
    Hugging Face Hub name (``facebook/sonata``, ``hf://...``) fetched into the HF cache; one-line
    error naming the setting or variable otherwise."""
    path = expand_path(raw, setting)
    if path.is_file():
        return path
    hub_file = hub_reference(str(path))
    if hub_file is not None:
        return fetch_hub_file(hub_file, setting)
    variables = _variables(str(raw))
    how = (f"set environment variable {variables[-1]} (used by {setting}: {raw}) to an existing file"
           if variables else f"set {setting} in the suite to an existing file")
    raise PeftbenchError(f"file not found: {path}: {how}")


def _variables(raw: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _VARIABLE.finditer(str(raw))]


def resolve_root(spec: dict[str, Any]) -> Path:
    """The dataset's root folder; a missing one is a one-line error naming the setting or variable."""
    name, label = spec["name"], spec.get("label") or spec["name"]
    setting = f"`root` of dataset {label!r}"
    root = expand_path(spec["root"], setting)
    if root.is_dir():
        return root
    variables = _variables(spec["root"])
    if variables:
        how = f"set environment variable {variables[-1]} (used by {setting}: {spec['root']}) to the existing folder"
    else:
        kind = DATASET_KINDS.get(name)
        hint = f" or `root: ${{{kind.root_variable}}}`" if kind and kind.root_variable else ""
        how = f"set {setting} in the suite (datasets: - {{name: {name}, root: ...}}){hint}"
    raise PeftbenchError(f"dataset root not found: {root} ({name}): {how}")


class KindDataset(SceneFolderDataset):
    """``SceneFolderDataset`` for one dataset kind: its label file/column, normals as the kind
    needs them (with the kind's hint when missing), and labels-only reading for split drawing."""

    def __init__(self, kind: DatasetKind, root: str | Path, split: str, **kwargs: Any) -> None:
        self.kind = kind
        folders = kind.resolve_split(split)
        unlabelled = all(f in kind.unlabelled_splits for f in folders)
        super().__init__(root, folders, num_classes=kind.num_classes,
                         label_file=None if unlabelled else kind.label_file, label_column=kind.label_column,
                         require_normal=kind.require_normal, **kwargs)

    def _load(self, folder: Path, file: str, scene: str) -> np.ndarray:
        if file == "normal.npy" and not (folder / file).is_file():
            raise PeftbenchError(f"scene {scene}: normal.npy is missing ({folder / file}); {self.kind.normal_hint}")
        return super()._load(folder, file, scene)

    def scene_folder(self, index: int) -> tuple[Path, str]:
        split, name = self.items[int(index) % len(self.items)]
        return self.root / split / name, f"{split}/{name}"

    def load_labels(self, index: int) -> np.ndarray:
        """Full-resolution labels of scene ``index`` (checked like ``load_scene``), without
        reading colours or normals."""
        folder, scene = self.scene_folder(index)
        path = folder / "coord.npy"
        if not path.is_file():
            raise PeftbenchError(f"scene {scene}: coord.npy is missing ({path}); re-run the preprocessing for it")
        n = int(np.load(path, mmap_mode="r").shape[0])
        return self._labels(folder, scene, n)


def prepare_dataset(spec: dict[str, Any], progress: Any = None) -> None:
    """Make sure the data exists: synthetic data is generated (idempotent); for real data the
    root, the kind and the train/val split folders are checked (one line on the first problem)."""
    if spec["name"] == "synthetic":
        root = expand_path(spec["root"], f"root of dataset {spec.get('label') or 'synthetic'!r}")
        write_synthetic_dataset(root, spec["domain"] or "target", spec.get("scenes") or {"train": 16, "val": 8},
                                seed=spec.get("data_seed", 0), points_per_m2=spec.get("points_per_m2"),
                                progress=progress)
        return
    kind = dataset_kind(spec["name"])
    root = resolve_root(spec)
    for key in ("train_split", "val_split"):
        for folder in kind.resolve_split(spec.get(key) or key[:-len("_split")]):
            path = root / folder
            if not path.is_dir() or not any(p.is_dir() for p in path.iterdir()):
                present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
                state = "holds no scene folders" if path.is_dir() else "not found"
                raise PeftbenchError(f"dataset {spec.get('label') or spec['name']!r}: split folder {path} ({key}) "
                                     f"{state} (folders in {root}: {', '.join(present) or 'none'}); fix {key} or root")


def kind_train_transform(kind: DatasetKind, grid_size: float, point_max: int) -> Compose:
    """Sonata's training chain with the kind's extra crop (S3DIS: SphereCrop(sample_rate=0.6) first)."""
    chain = sonata_train_transform(grid_size, point_max)
    if kind.recipe.crop_sample_rate is not None:
        at = next(i for i, t in enumerate(chain.transforms) if isinstance(t, SphereCrop))
        chain.transforms.insert(at, SphereCrop(sample_rate=kind.recipe.crop_sample_rate, mode="random"))
    return chain


def build_split(spec: dict[str, Any], split: str, train: bool, grid_size: float, point_max: int,
                seed: int, augment: bool = True, loop: int = 1, *, scenes: list[str] | None = None,
                labelled: LimitedAnnotation | None = None) -> KindDataset:
    """A split with the kind's train chain (``train and augment``) or the validation chain
    (predictions on the grid, mapped back to every point). ``scenes`` restricts the scene list;
    ``labelled`` (limited annotation) masks labels before the chain and keeps labelled points."""
    kind = dataset_kind(spec["name"])
    if train and augment:
        transform = kind_train_transform(kind, grid_size, point_max)
    else:
        transform = sonata_val_transform(grid_size)
    if labelled is not None:
        transform = Compose([labelled, *transform.transforms])
    root = expand_path(spec["root"], f"root of dataset {spec.get('label') or spec['name']!r}")
    return KindDataset(kind, root, split, transform=transform, scenes=scenes, seed=seed, loop=loop)


def build_train_set(spec: dict[str, Any], efficiency: str, grid_size: float, point_max: int, seed: int,
                    augment: bool = True, loop: int = 1) -> tuple[KindDataset, dict[str, Any]]:
    """The training set under a suite split (``full``, ``scenes-<pct>``, ``points-<n>``) and the
    record of what was used (source file or seeded subset, seed, scenes or per-scene counts, hash)."""
    kind = dataset_kind(spec["name"])
    root = expand_path(spec["root"], f"root of dataset {spec.get('label') or spec['name']!r}")
    everything = KindDataset(kind, root, spec["train_split"])
    chosen = efficiency_split(everything, root, efficiency, split_seed=int(spec.get("data_seed") or 0))
    dataset = build_split(spec, spec["train_split"], True, grid_size, point_max, seed, augment, loop,
                          scenes=chosen.scenes, labelled=chosen.labelled)
    return dataset, chosen.record


def build_test_set(spec: dict[str, Any], split: str | None = None) -> KindDataset:
    """Raw scenes (no transform) of the test split, for fragment voting: the suite's ``val_split``."""
    kind = dataset_kind(spec["name"])
    root = expand_path(spec["root"], f"root of dataset {spec.get('label') or spec['name']!r}")
    return KindDataset(kind, root, split or spec["val_split"])


class _Collate:
    """``collate_points``, or Mix3D merging with probability ``mix_prob`` per batch. The draws come
    from a generator seeded by (seed, epoch, worker id): the same run gives the same merges."""

    def __init__(self, mix_prob: float, seed: int, epoch: int) -> None:
        self.mix_prob, self.seed, self.epoch = float(mix_prob), int(seed), int(epoch)
        self.rng: np.random.Generator | None = None

    def __call__(self, samples: list[dict]) -> dict:
        if self.mix_prob <= 0:
            return collate_points(samples)
        if self.rng is None:
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, self.epoch, info.id if info else 0, 313])
        return mix3d_collate(samples, self.mix_prob, self.rng)


def batches(dataset: SceneFolderDataset, batch_size: int, shuffle: bool, seed: int, epoch: int,
            drop_last: bool, num_workers: int = 0, mix_prob: float = 0.0) -> torch.utils.data.DataLoader:
    """A loader for one epoch; its order, augmentations and Mix3D merges depend only on (seed, epoch)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       drop_last=drop_last, num_workers=num_workers,
                                       collate_fn=_Collate(mix_prob, seed, epoch))
