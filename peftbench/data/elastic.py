"""Sonata's ``ElasticDistortion``: smooth random displacement fields, numpy only."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from peftbench.data.transform_base import Data, bounds


def _box_blur(grid: np.ndarray, axis: int) -> np.ndarray:
    """Mean over 3 neighbours along ``axis`` (edges repeat), i.e. a [1,1,1]/3 kernel."""
    pad = [(0, 0)] * grid.ndim
    pad[axis] = (1, 1)
    padded = np.pad(grid, pad, mode="edge")
    n = grid.shape[axis]
    return sum(np.take(padded, np.arange(k, k + n), axis=axis) for k in range(3)) / 3.0


def _trilinear(grid: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Interpolate ``grid`` (X,Y,Z,C) at fractional grid positions ``pos`` (N,3)."""
    upper = np.array(grid.shape[:3]) - 1
    pos = np.clip(pos, 0, upper)
    i0 = np.minimum(np.floor(pos).astype(np.int64), upper - 1).clip(0)  # so i0 + 1 <= upper: no corner clamp
    f = pos - i0
    # one flat gather per corner (1.5x faster than indexing by three arrays); same sums in the same order
    flat = grid.reshape(-1, grid.shape[3])
    strides = np.array([grid.shape[1] * grid.shape[2], grid.shape[2], 1])
    base = i0 @ strides
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
    out = np.zeros((len(pos), grid.shape[3]))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (fx if dx else gx) * (fy if dy else gy) * (fz if dz else gz)
                out += w[:, None] * flat.take(base + int(strides @ (dx, dy, dz)), axis=0)
    return out


class ElasticDistortion:
    """With probability ``p``, for each (granularity, magnitude): displace points by smooth noise
    (a random vector grid of that spacing, box-blurred twice per axis, interpolated trilinearly)."""

    def __init__(self, distortion_params: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6)), p: float = 0.95) -> None:
        self.params, self.p = [tuple(x) for x in distortion_params], p

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= self.p:
            return data
        coord = data["coord"].astype(np.float64)
        for granularity, magnitude in self.params:
            lo, hi = bounds(coord)
            dims = ((hi - lo) // granularity).astype(int) + 3
            noise = rng.standard_normal((*dims, 3))
            for _ in range(2):
                for axis in range(3):
                    noise = _box_blur(noise, axis)
            # grid node j sits at lo + (j - 1) * granularity
            coord = coord + _trilinear(noise, (coord - lo) / granularity + 1.0) * magnitude
        return {**data, "coord": coord.astype(data["coord"].dtype)}
