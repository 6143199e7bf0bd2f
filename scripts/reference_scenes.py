"""Synthetic rooms for the reference identity check: surfaces sampled and voxelised, as Pointcept-style batches."""

from __future__ import annotations

import math

import numpy as np
import torch


def make_scene(rng: np.random.Generator, voxels: int, grid_size: float) -> dict[str, np.ndarray]:
    """A room (floor, walls, boxes) sampled on its surfaces, voxelised at ``grid_size`` with one
    point per voxel, then ``voxels`` voxels kept: coord, grid_coord and 9 features."""
    side = math.sqrt(voxels * grid_size ** 2 / 2.5) + 0.5   # floor + ~1.5 floors of wall/box area
    lx, ly, h = side * rng.uniform(0.9, 1.2), side * rng.uniform(0.8, 1.0), min(2.5, 0.6 * side)
    planes = [((0, 0, 0), (lx, 0, 0), (0, ly, 0), (0, 0, 1)),
              ((0, 0, 0), (lx, 0, 0), (0, 0, h), (0, 1, 0)),
              ((0, 0, 0), (0, ly, 0), (0, 0, h), (1, 0, 0)),
              ((0, ly, 0), (lx, 0, 0), (0, 0, h), (0, -1, 0))]
    for _ in range(4):  # boxes: top and two sides
        bx, by = rng.uniform(0.1, 0.7) * lx, rng.uniform(0.1, 0.7) * ly
        sx, sy, sz = rng.uniform(0.2, 0.3) * lx, rng.uniform(0.2, 0.3) * ly, rng.uniform(0.3, 0.9)
        planes += [((bx, by, sz), (sx, 0, 0), (0, sy, 0), (0, 0, 1)),
                   ((bx, by, 0), (sx, 0, 0), (0, 0, sz), (0, -1, 0)),
                   ((bx, by, 0), (0, sy, 0), (0, 0, sz), (-1, 0, 0))]
    pts, normals, colors = [], [], []
    for origin, u, v, n in planes:
        area = np.linalg.norm(np.cross(u, v))
        k = int(area / grid_size ** 2 * 3) + 1
        a, b = rng.random((k, 1)), rng.random((k, 1))
        pts.append(np.asarray(origin) + a * np.asarray(u) + b * np.asarray(v))
        normals.append(np.repeat(np.asarray(n, float)[None], k, 0))
        colors.append(np.clip(rng.uniform(0.2, 0.9, 3) + 0.05 * rng.standard_normal((k, 3)), 0, 1))
    coord = np.concatenate(pts) + 0.002 * rng.standard_normal((sum(len(p) for p in pts), 3))
    normal, color = np.concatenate(normals), np.concatenate(colors)
    grid = np.floor((coord - coord.min(0)) / grid_size).astype(np.int64)
    _, first = np.unique(grid, axis=0, return_index=True)
    keep = rng.permutation(first)[:voxels]
    keep.sort()
    coord, grid, normal, color = coord[keep], grid[keep], normal[keep], color[keep]
    grid -= grid.min(0)
    coord = coord - coord.mean(0)
    feat = np.concatenate([coord, color, normal], axis=1)
    return {"coord": coord.astype(np.float32), "grid_coord": grid.astype(np.int32), "feat": feat.astype(np.float32)}


def make_batch(sizes: list[int], grid_size: float, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, n, grid_size) for n in sizes]
    batch = {k: torch.from_numpy(np.concatenate([s[k] for s in scenes])) for k in ("coord", "grid_coord", "feat")}
    batch["offset"] = torch.tensor(np.cumsum([len(s["coord"]) for s in scenes]), dtype=torch.long)
    return batch
