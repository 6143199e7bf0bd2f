"""Sonata's ``GridSample``: voxel subsampling (train/val) and voxel fragments (test).

Voxels: ``grid_coord = floor(coord / grid_size) - min`` over all points of the sample.

- ``mode="train"``: one random point per occupied voxel, plus every point listed in
  ``sampled_index``; kept points stay in their original order. ``return_inverse`` gives, for every
  input point, the position (in the output) of the point kept for its voxel.
- ``mode="test"``: a list of fragments, as many as the largest voxel occupancy M. The points of each
  voxel are put in a random order; fragment i takes, from every voxel of c points, the point
  ``i % c`` of that order. So fragments 0..c-1 hold each point of the voxel exactly once and later
  fragments repeat them (fillers); every fragment has exactly one point per voxel, and ``index``
  names the input points it holds.
"""

from __future__ import annotations

import numpy as np

from peftbench.data.transform_base import POINT_KEYS, Data, bounds, keep_with_sampled, select_points, take_rows
from peftbench.errors import PeftbenchError


def voxelize(coord: np.ndarray, grid_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxels of ``coord``: (grid_coord (N,3) int64, voxel id per point (N,), point order sorted by
    voxel (N,), voxel start positions in that order (V,)). Voxel ids follow the sorted keys."""
    grid = np.floor(np.asarray(coord, dtype=np.float64) / grid_size).astype(np.int64)
    lo, hi = bounds(grid)
    grid -= lo
    dims = hi - lo + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2.0**62:
        key = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]  # exact, no hash collisions
    else:  # absurd extents: fall back to row-unique
        key = np.unique(grid, axis=0, return_inverse=True)[1].reshape(-1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.r_[True, sorted_key[1:] != sorted_key[:-1]]  # the sort is done: no np.unique (a second one)
    start = np.flatnonzero(first)
    voxel = np.empty(len(key), dtype=np.int64)
    voxel[order] = np.cumsum(first) - 1
    return grid, voxel, order, start


class GridSample:
    """Voxel subsampling (``mode="train"``) or voxel fragments (``mode="test"``); see the module doc."""

    def __init__(self, grid_size: float = 0.02, mode: str = "train", return_grid_coord: bool = True,
                 return_inverse: bool = False) -> None:
        if not grid_size > 0:
            raise PeftbenchError(f"GridSample grid_size must be > 0 (metres), got {grid_size!r}")
        if mode not in ("train", "test"):
            raise PeftbenchError(f"GridSample mode must be 'train' or 'test', got {mode!r}")
        self.grid_size, self.mode = float(grid_size), mode
        self.return_grid_coord, self.return_inverse = return_grid_coord, return_inverse

    def __call__(self, data: Data, rng: np.random.Generator) -> Data | list[Data]:
        if len(data["coord"]) == 0:
            raise PeftbenchError(f"GridSample: sample {data.get('name', '?')!r} has no points; remove or fix that scene")
        if self.mode == "test":
            return self._fragments(data, rng)
        grid, voxel, order, start = voxelize(data["coord"], self.grid_size)
        count = np.diff(np.append(start, len(order)))
        chosen = order[start + (rng.random(len(start)) * count).astype(np.int64)]  # one per voxel
        keep = keep_with_sampled(data, chosen)
        out = select_points(data, keep)
        if self.return_grid_coord:
            out["grid_coord"] = take_rows(grid, keep)
        if self.return_inverse:
            out["inverse"] = np.searchsorted(keep, chosen[voxel])
        return out

    def _fragments(self, data: Data, rng: np.random.Generator) -> list[Data]:
        grid, voxel, _, _ = voxelize(data["coord"], self.grid_size)
        # by voxel, random within a voxel: one float sort (2x a lexsort); r / 2 < 1/2 keeps every
        # voxel's keys below the next voxel's after rounding
        order = np.argsort(voxel + 0.5 * rng.random(len(voxel)), kind="stable")
        start = np.flatnonzero(np.r_[True, voxel[order][1:] != voxel[order][:-1]])
        count = np.diff(np.append(start, len(order)))
        fragments = []
        for i in range(int(count.max())):
            index = order[start + i % count]
            part = {k: v for k, v in data.items() if k not in POINT_KEYS and k != "sampled_index"}
            part.update({k: take_rows(data[k], index) for k in POINT_KEYS if k in data})
            part["index"] = index
            if self.return_grid_coord:
                part["grid_coord"] = take_rows(grid, index)
            fragments.append(part)
        return fragments
