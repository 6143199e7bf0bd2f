"""Reader of Pointcept's preprocessed layout: ``root/<split>/<scene>/{coord,color,normal,<label>}.npy``.

Works for ScanNet (``segment20.npy``), ScanNet++ (``segment.npy`` (N,3), column 0), S3DIS
(``segment.npy`` (N,1) int16, splits ``Area_k``) and the synthetic scenes. Every file problem a
user can cause (missing folder or file, shape mismatch, labels out of range) raises a
``PeftbenchError`` that names the scene and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from peftbench.errors import PeftbenchError

IGNORE_INDEX = -1


class SceneFolderDataset(torch.utils.data.Dataset):
    """Scenes of one or more split folders; item ``i`` is ``transform(scene, rng)``.

    The item's rng is ``np.random.default_rng([seed, epoch, i])``: augmentations depend only on
    (seed, epoch, index), also under DataLoader workers (call ``set_epoch`` before iterating;
    persistent workers keep the epoch they were started with). ``loop`` repeats the scene list
    (each repetition gets its own indices, hence its own augmentations).
    """

    def __init__(self, root: str | Path, split: str | Sequence[str], *, num_classes: int,
                 label_file: str | None = "segment.npy", label_column: int | None = None,
                 transform: Callable[[dict, np.random.Generator], object] | None = None,
                 scenes: Sequence[str] | None = None, loop: int = 1, seed: int = 0,
                 require_normal: bool = False) -> None:
        self.root = Path(root)
        self.splits = [split] if isinstance(split, str) else list(split)
        if num_classes < 1:
            raise PeftbenchError(f"num_classes must be >= 1, got {num_classes}")
        if seed < 0:
            raise PeftbenchError(f"seed must be >= 0, got {seed}")
        if loop < 1:
            raise PeftbenchError(f"loop must be >= 1 (how often the scene list repeats per epoch), got {loop}")
        self.num_classes, self.label_file, self.label_column = int(num_classes), label_file, label_column
        self.transform, self.loop, self.seed, self.epoch = transform, int(loop), int(seed), 0
        self.require_normal = require_normal
        self.items = self._find_scenes(scenes)

    def _find_scenes(self, scenes: Sequence[str] | None) -> list[tuple[str, str]]:
        if not self.root.is_dir():
            raise PeftbenchError(
                f"dataset root {self.root} does not exist: point it at the folder that holds the "
                f"<split>/<scene>/ folders (synthetic data: run write_synthetic_dataset / `peftbench data` first)"
            )
        if not self.splits:
            raise PeftbenchError(f"no split given for dataset root {self.root}: name at least one split folder")
        items = []
        for split in self.splits:
            folder = self.root / split
            if not folder.is_dir():
                present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
                raise PeftbenchError(
                    f"split folder {folder} not found (folders in {self.root}: {present or 'none'}): "
                    f"fix the split name or the dataset root"
                )
            names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not names:
                raise PeftbenchError(f"split folder {folder} holds no scene folders: is the data preprocessed?")
            items += [(split, name) for name in names]
        if scenes is not None:
            wanted = set(scenes)
            missing = sorted(wanted - {name for _, name in items})
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise PeftbenchError(
                    f"{len(missing)} requested scene(s) not found in split(s) {self.splits} of {self.root}: "
                    f"{shown}; fix the scene list or the split"
                )
            items = [item for item in items if item[1] in wanted]
            if not items:
                raise PeftbenchError(f"the scene list selects no scene of split(s) {self.splits} in {self.root}")
        return items

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of the next pass depend on this epoch number."""
        self.epoch = int(epoch)

    @property
    def scene_names(self) -> list[str]:
        return [name for _, name in self.items]

    def __len__(self) -> int:
        return len(self.items) * self.loop

    def _load(self, folder: Path, file: str, scene: str) -> np.ndarray:
        path = folder / file
        if not path.is_file():
            raise PeftbenchError(f"scene {scene}: {file} is missing ({path}); re-run the preprocessing for it")
        try:
            return np.load(path)
        except (OSError, ValueError) as err:
            raise PeftbenchError(f"scene {scene}: cannot read {path} ({err}); re-create the file") from err

    def _labels(self, folder: Path, scene: str, n: int) -> np.ndarray:
        if self.label_file is None:  # unlabelled data (e.g. a test split): everything ignored
            return np.full(n, IGNORE_INDEX, dtype=np.int64)
        file = self.label_file
        label = self._load(folder, file, scene)
        if not np.issubdtype(label.dtype, np.integer):
            raise PeftbenchError(f"scene {scene}: {file} holds {label.dtype} values; labels must be integers")
        if label.ndim == 2:
            if self.label_column is not None:
                if not 0 <= self.label_column < label.shape[1]:
                    raise PeftbenchError(
                        f"scene {scene}: label_column {self.label_column} is out of range for {file} "
                        f"with {label.shape[1]} columns"
                    )
                label = label[:, self.label_column]
            elif label.shape[1] == 1:
                label = label[:, 0]
            else:
                raise PeftbenchError(
                    f"scene {scene}: {file} has {label.shape[1]} label columns; set label_column "
                    f"(ScanNet++ uses 0)"
                )
        if label.ndim != 1 or len(label) != n:
            raise PeftbenchError(
                f"scene {scene}: {file} has shape {label.shape} but coord.npy has {n} points; "
                f"the files of a scene must have one row per point"
            )
        label = label.astype(np.int64)
        bad = (label < IGNORE_INDEX) | (label >= self.num_classes)
        if bad.any():
            values = np.unique(label[bad])
            raise PeftbenchError(
                f"scene {scene}: {file} has label values {values[:10].tolist()} outside [0, {self.num_classes}) "
                f"(-1 = ignore); check num_classes and label_file"
            )
        return label

    def load_scene(self, index: int) -> dict:
        """The raw arrays of scene ``index`` (no transform): coord, color, [normal], segment, name."""
        split, name = self.items[int(index) % len(self.items)]
        folder, scene = self.root / split / name, f"{split}/{name}"
        coord = self._load(folder, "coord.npy", scene)
        if coord.ndim != 2 or coord.shape[1] != 3:
            raise PeftbenchError(f"scene {scene}: coord.npy has shape {coord.shape}; expected (N, 3)")
        n = len(coord)
        if n == 0:
            raise PeftbenchError(f"scene {scene}: coord.npy holds no points; re-run its preprocessing or remove "
                                 f"the scene folder {folder}")
        _require_finite(coord, scene, "coord.npy")
        data = {"coord": coord.astype(np.float32, copy=False)}
        files = [("color.npy", True), ("normal.npy", self.require_normal)]
        for file, required in files:
            if not required and not (folder / file).is_file():
                continue
            value = self._load(folder, file, scene)
            if value.shape != (n, 3):
                raise PeftbenchError(
                    f"scene {scene}: {file} has shape {value.shape} but coord.npy has shape {coord.shape}; "
                    f"the files of a scene must have one row per point"
                )
            _require_finite(value, scene, file)
            data[file[:-4]] = value.astype(np.float32, copy=False) if file == "normal.npy" else value
        data["segment"] = self._labels(folder, scene, n)
        data["name"] = name
        return data

    def __getitem__(self, index: int):
        data = self.load_scene(index)
        if self.transform is None:
            return data
        return self.transform(data, np.random.default_rng([self.seed, self.epoch, int(index)]))


def _require_finite(values: np.ndarray, scene: str, file: str) -> None:
    """NaN/Inf inputs give a NaN loss (or, in validation, a silently wrong score): refuse them here."""
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        rows = int((~np.isfinite(values)).any(axis=-1).sum()) if values.ndim > 1 else int((~np.isfinite(values)).sum())
        raise PeftbenchError(f"scene {scene}: {file} has {rows} of {len(values)} points with NaN/Inf values; "
                             f"fix or drop those points in the preprocessing")
