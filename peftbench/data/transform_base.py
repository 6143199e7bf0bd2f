"""Shared plumbing of the transforms: per-point keys, point selection, ``Compose``."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Data = dict
Transform = Callable[[Data, np.random.Generator], "Data | list[Data]"]

# Arrays with one row per point; everything else (origin_segment, inverse, name, ...) is left as is.
POINT_KEYS = ("coord", "color", "normal", "segment", "instance", "superpoint", "strength", "grid_coord")


def take_rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` for an integer ``index``: ``np.take`` along the rows is 4-6x faster than
    fancy indexing for (N, C) arrays (the same values)."""
    return np.take(values, index, axis=0)


def select_points(data: Data, index: np.ndarray) -> Data:
    """Keep the points ``index`` (sorted, unique integers) of every per-point array; remap ``sampled_index``."""
    out = dict(data)
    for key in POINT_KEYS:
        if key in out:
            out[key] = take_rows(out[key], index)
    if "sampled_index" in data:
        # position of each surviving sampled point in the new arrays
        out["sampled_index"] = np.flatnonzero(np.isin(index, data["sampled_index"]))
    return out


def keep_with_sampled(data: Data, index: np.ndarray) -> np.ndarray:
    """``index`` plus every point listed in ``data['sampled_index']``, sorted and unique."""
    keep = np.zeros(len(data["coord"]), dtype=bool)  # a mask, not np.unique: O(n), ~20x faster
    keep[index] = True
    if "sampled_index" in data:
        keep[np.asarray(data["sampled_index"], dtype=np.int64)] = True
    return np.flatnonzero(keep)


def bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column min and max of an (N, C) array; column by column because numpy's ``min(0)`` over
    a few columns is ~20x slower (the same values)."""
    columns = range(values.shape[1])
    return (np.array([values[:, i].min() for i in columns], dtype=values.dtype),
            np.array([values[:, i].max() for i in columns], dtype=values.dtype))


class Compose:
    """Apply transforms in order; after one returns a list (test-mode fragments), map the rest over it."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: Data, rng: np.random.Generator) -> Data | list[Data]:
        for t in self.transforms:
            data = [t(part, rng) for part in data] if isinstance(data, list) else t(data, rng)
        return data

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"
