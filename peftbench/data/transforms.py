"""Sonata's point-cloud transforms (semantics of Pointcept's ``transform.py``), reimplemented.

Every transform is a callable ``t(data, rng) -> data`` over a dict of numpy arrays; randomness
comes only from the ``numpy.random.Generator`` passed in, so the same rng state gives the same
output. Per-point arrays (``POINT_KEYS``) are subsampled together; ``sampled_index`` (indices of
points that must survive, e.g. labelled points of limited-annotation training) is remapped.
This module is the one to import from: it re-exports ``Compose``, ``ElasticDistortion`` and
``GridSample`` (kept in their own files) and builds Sonata's train/val chains.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from peftbench.data.elastic import ElasticDistortion
from peftbench.data.grid_sample import GridSample
from peftbench.data.transform_base import POINT_KEYS, Compose, Data, bounds, keep_with_sampled, select_points
from peftbench.errors import PeftbenchError

__all__ = [
    "POINT_KEYS", "Compose", "CenterShift", "RandomDropout", "RandomRotate", "RandomScale", "RandomFlip",
    "RandomJitter", "ElasticDistortion", "ChromaticAutoContrast", "ChromaticTranslation", "ChromaticJitter",
    "GridSample", "SphereCrop", "NormalizeColor", "Copy", "ToTensor", "Collect", "select_points",
    "sonata_train_transform", "sonata_val_transform",
]


class CenterShift:
    """Move the bounding-box centre to x=y=0; with ``apply_z`` the bottom to z=0 (else the z centre stays)."""

    def __init__(self, apply_z: bool = True) -> None:
        self.apply_z = apply_z

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        coord = data["coord"]
        lo, hi = bounds(coord)
        shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if self.apply_z else 0.0])
        return {**data, "coord": (coord - shift).astype(coord.dtype)}


class RandomDropout:
    """With probability ``dropout_application_ratio`` drop a ``dropout_ratio`` share of points
    (the ``sampled_index`` points always stay)."""

    def __init__(self, dropout_ratio: float = 0.2, dropout_application_ratio: float = 1.0) -> None:
        self.dropout_ratio, self.application_ratio = dropout_ratio, dropout_application_ratio

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= self.application_ratio:
            return data
        n = len(data["coord"])
        keep = rng.choice(n, int(n * (1.0 - self.dropout_ratio)), replace=False)
        return select_points(data, keep_with_sampled(data, keep))


def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise PeftbenchError(f"RandomRotate axis must be 'x', 'y' or 'z', got {axis!r}")


class RandomRotate:
    """With probability ``p`` rotate about ``axis`` by an angle uniform in ``angle`` (units of pi),
    around ``center`` (default: the bounding-box centre). Normals rotate too."""

    def __init__(self, angle: Sequence[float] = (-1.0, 1.0), axis: str = "z", center: Sequence[float] | None = None,
                 p: float = 0.5, always_apply: bool = False) -> None:
        _rotation(axis, 0.0)  # validate early
        self.angle, self.axis, self.center = tuple(angle), axis, center
        self.p = 1.0 if always_apply else p

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= self.p:
            return data
        rot = _rotation(self.axis, rng.uniform(*self.angle) * math.pi)
        coord = data["coord"]
        if self.center is None:
            lo, hi = bounds(coord)
            center = (lo + hi) / 2
        else:
            center = np.asarray(self.center)
        out = {**data, "coord": (_rotated(coord - center, rot) + center).astype(coord.dtype)}
        if "normal" in data:
            out["normal"] = _rotated(data["normal"], rot).astype(data["normal"].dtype)
        return out


def _rotated(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """``points @ rot.T`` without BLAS: in a loader worker, BLAS starts a thread per core for this and
    the workers' threads then fight over the cores (measured: a 3-scene batch 0.8 s instead of 0.5 s)."""
    return np.einsum("nj,kj->nk", points, rot)


class RandomScale:
    """Scale coordinates by a factor uniform in ``scale`` (per axis if ``anisotropic``)."""

    def __init__(self, scale: Sequence[float] = (0.95, 1.05), anisotropic: bool = False) -> None:
        self.scale, self.anisotropic = tuple(scale), anisotropic

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        factor = rng.uniform(*self.scale, 3 if self.anisotropic else 1)
        return {**data, "coord": (data["coord"] * factor).astype(data["coord"].dtype)}


class RandomFlip:
    """Mirror x with probability ``p``, then (independently) y; normals mirror too."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        out = dict(data)
        for axis in (0, 1):
            if rng.random() < self.p:
                for key in ("coord", "normal"):
                    if key in out:
                        out[key] = out[key].copy()
                        out[key][:, axis] = -out[key][:, axis]
        return out


class RandomJitter:
    """Add Gaussian noise (``sigma``) clipped to +-``clip`` to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        if clip <= 0:
            raise PeftbenchError(f"RandomJitter clip must be > 0, got {clip}")
        self.sigma, self.clip = sigma, clip

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        noise = np.clip(self.sigma * rng.standard_normal(data["coord"].shape), -self.clip, self.clip)
        return {**data, "coord": (data["coord"] + noise).astype(data["coord"].dtype)}


def _color(data: Data) -> np.ndarray:
    return np.asarray(data["color"], dtype=np.float32)


class ChromaticAutoContrast:
    """With probability ``p`` stretch colours to the full 0..255 range, blended by ``blend_factor``
    (random if None)."""

    def __init__(self, p: float = 0.2, blend_factor: float | None = None) -> None:
        self.p, self.blend_factor = p, blend_factor

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if "color" not in data or rng.random() >= self.p:
            return data
        color = _color(data)
        lo, hi = (b[None] for b in bounds(color))
        contrast = (color - lo) * (255.0 / np.maximum(hi - lo, 1e-6))
        blend = rng.random() if self.blend_factor is None else self.blend_factor
        return {**data, "color": ((1 - blend) * color + blend * contrast).astype(np.float32)}


class ChromaticTranslation:
    """With probability ``p`` shift all colours by one offset uniform in +-``ratio``*255 per channel."""

    def __init__(self, p: float = 0.95, ratio: float = 0.05) -> None:
        self.p, self.ratio = p, ratio

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if "color" not in data or rng.random() >= self.p:
            return data
        shift = (rng.random((1, 3)) - 0.5) * 255.0 * 2.0 * self.ratio
        return {**data, "color": np.clip(_color(data) + shift, 0.0, 255.0).astype(np.float32)}


class ChromaticJitter:
    """With probability ``p`` add per-point Gaussian colour noise of ``std``*255."""

    def __init__(self, p: float = 0.95, std: float = 0.05) -> None:
        self.p, self.std = p, std

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if "color" not in data or rng.random() >= self.p:
            return data
        noise = rng.standard_normal(data["color"].shape) * self.std * 255.0
        return {**data, "color": np.clip(_color(data) + noise, 0.0, 255.0).astype(np.float32)}


class SphereCrop:
    """Keep at most ``point_max`` points (or ``sample_rate`` of them) nearest to a centre: a random
    point (``mode="random"``) or the point nearest the bounding-box centre (``mode="center"``)."""

    def __init__(self, point_max: int = 80000, sample_rate: float | None = None, mode: str = "random") -> None:
        if mode not in ("random", "center"):
            raise PeftbenchError(f"SphereCrop mode must be 'random' or 'center', got {mode!r}")
        self.point_max, self.sample_rate, self.mode = point_max, sample_rate, mode

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        coord = data["coord"]
        n = len(coord)
        limit = int(self.sample_rate * n) if self.sample_rate is not None else self.point_max
        if n <= limit:
            return data
        if self.mode == "random":
            center = coord[rng.integers(n)]
        else:
            lo, hi = bounds(coord)
            mid = (lo + hi) / 2
            center = coord[np.argmin(np.sum((coord - mid) ** 2, axis=1))]
        dist = np.sum((coord - center) ** 2, axis=1)
        keep = np.sort(np.argpartition(dist, limit - 1)[:limit])
        return select_points(data, keep)


class NormalizeColor:
    """Colours 0..255 -> 0..1 float32 (Sonata: color / 255)."""

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        if "color" not in data:
            return data
        return {**data, "color": (np.asarray(data["color"], dtype=np.float32) / 255.0)}


class Copy:
    """Copy arrays to new keys, e.g. ``{"segment": "origin_segment"}`` before subsampling."""

    def __init__(self, keys_dict: dict[str, str] | None = None) -> None:
        self.keys_dict = dict(keys_dict or {"coord": "origin_coord", "segment": "origin_segment"})

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        out = dict(data)
        for src, dst in self.keys_dict.items():
            if src not in data:
                raise PeftbenchError(f"Copy: the sample has no {src!r} to copy to {dst!r} (keys: {sorted(data)})")
            value = data[src]
            out[dst] = value.copy() if isinstance(value, np.ndarray) else value
        return out


def _to_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.integer):
            return torch.from_numpy(value.astype(np.int64, copy=False))
        if np.issubdtype(value.dtype, np.floating):
            return torch.from_numpy(value.astype(np.float32, copy=False))
        if value.dtype == np.bool_:
            return torch.from_numpy(value)
        return value
    if isinstance(value, dict):
        return {k: _to_tensor(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_tensor(v) for v in value]
    return value  # names, numbers, strings stay as they are


class ToTensor:
    """numpy arrays -> torch tensors: integers int64, floats float32, bools bool; others unchanged."""

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        return _to_tensor(data)


class Collect:
    """Keep ``keys`` (plus ``name`` if present) and build ``feat`` by concatenating ``feat_keys``
    along the last axis as float32 (Sonata: coord, color, normal = 9 channels)."""

    def __init__(self, keys: Sequence[str], feat_keys: Sequence[str] = ("coord", "color", "normal")) -> None:
        self.keys, self.feat_keys = tuple(keys), tuple(feat_keys)

    def __call__(self, data: Data, rng: np.random.Generator) -> Data:
        missing = [k for k in (*self.keys, *self.feat_keys) if k not in data]
        if missing:
            hint = " (no normal.npy? use feat_keys without 'normal' or add normals)" if "normal" in missing else ""
            raise PeftbenchError(f"Collect: sample {data.get('name', '?')!r} lacks {missing}{hint}")
        out = {k: data[k] for k in self.keys}
        if "name" in data:
            out["name"] = data["name"]
        feats = [data[k] for k in self.feat_keys]
        if all(isinstance(f, torch.Tensor) for f in feats):
            out["feat"] = torch.cat([f.float().reshape(len(f), -1) for f in feats], dim=-1)
        else:
            out["feat"] = np.concatenate([np.asarray(f, np.float32).reshape(len(f), -1) for f in feats], axis=-1)
        return out


def sonata_train_transform(grid_size: float = 0.02, point_max: int = 102400) -> Compose:
    """Sonata's ScanNet training chain (§8.3), with the grid size and crop as parameters."""
    return Compose([
        CenterShift(apply_z=True),
        RandomDropout(dropout_ratio=0.2, dropout_application_ratio=1.0),
        RandomRotate(angle=(-1, 1), axis="z", center=(0, 0, 0), p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        RandomScale(scale=(0.9, 1.1)),
        RandomFlip(p=0.5),
        RandomJitter(sigma=0.005, clip=0.02),
        ElasticDistortion(distortion_params=((0.2, 0.4), (0.8, 1.6)), p=0.95),
        ChromaticAutoContrast(p=0.2, blend_factor=None),
        ChromaticTranslation(p=0.95, ratio=0.05),
        ChromaticJitter(p=0.95, std=0.05),
        GridSample(grid_size=grid_size, mode="train", return_grid_coord=True),
        SphereCrop(point_max=point_max, mode="random"),
        CenterShift(apply_z=False),
        NormalizeColor(),
        ToTensor(),
        Collect(keys=("coord", "grid_coord", "segment"), feat_keys=("coord", "color", "normal")),
    ])


def sonata_val_transform(grid_size: float = 0.02) -> Compose:
    """Sonata's validation chain: predictions on the grid, mapped back to all points by ``inverse``."""
    return Compose([
        CenterShift(apply_z=True),
        Copy(keys_dict={"segment": "origin_segment"}),
        GridSample(grid_size=grid_size, mode="train", return_grid_coord=True, return_inverse=True),
        CenterShift(apply_z=False),
        NormalizeColor(),
        ToTensor(),
        Collect(keys=("coord", "grid_coord", "segment", "origin_segment", "inverse"),
                feat_keys=("coord", "color", "normal")),
    ])
