"""Procedural indoor scenes (two domains) written in Pointcept's per-scene folder layout.

A scene is a room laid out by ``synthetic_room``; its surfaces are sampled at a density in
points/m^2, points hidden inside solid parts are dropped (floor under a bed, wall behind a
cabinet), random holes are cut, colours get shading, a lighting tint and noise, and positions get
sensor jitter along the normal. Everything random flows from one ``numpy.random.Generator``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from peftbench.data.shapes import bounding_box, hidden_by, sample_part
from peftbench.data.synthetic_room import build_room
from peftbench.data.synthetic_style import DOMAINS, IGNORE_LABEL, SYNTHETIC_CLASSES, DomainStyle
from peftbench.errors import PeftbenchError
from peftbench.progress import report_progress

__all__ = ["DOMAINS", "DomainStyle", "SYNTHETIC_CLASSES", "generate_scene", "write_synthetic_dataset", "get_domain"]

GENERATOR_VERSION = 1  # bump when scenes change, so stale datasets on disk are noticed
SCENE_FILES = ("coord.npy", "color.npy", "normal.npy", "segment.npy")


def get_domain(domain: str) -> DomainStyle:
    """The style of a domain by name; unknown names raise a ``PeftbenchError`` listing the valid ones."""
    if domain not in DOMAINS:
        raise PeftbenchError(f"unknown synthetic domain {domain!r}: use one of {', '.join(sorted(DOMAINS))}")
    return DOMAINS[domain]


def _resolve_density(style: DomainStyle, points_per_m2: float | None) -> float:
    density = style.points_per_m2 if points_per_m2 is None else float(points_per_m2)
    if not np.isfinite(density) or density <= 0:
        raise PeftbenchError(f"points_per_m2 must be a positive number of points per m^2, got {points_per_m2!r}")
    return density


def _visible(parts: list, part_of_point: np.ndarray, coord: np.ndarray, margin: float) -> np.ndarray:
    """Points not inside any other solid part (a cheap bounding-box test first, then the exact one)."""
    keep = np.ones(len(coord), dtype=bool)
    for index, part in enumerate(parts):
        if not part.solid:
            continue
        lo, hi = bounding_box(part)
        near = np.flatnonzero(np.all((coord >= lo - margin) & (coord <= hi + margin), axis=1))
        near = near[part_of_point[near] != index]
        keep[near[hidden_by(part, coord[near], margin)]] = False
    return keep


def _cut_holes(coord: np.ndarray, style: DomainStyle, area: float, rng: np.random.Generator) -> np.ndarray:
    """Mask dropping random spherical regions (missed scan areas)."""
    keep = np.ones(len(coord), dtype=bool)
    for _ in range(rng.poisson(style.holes_per_m2 * area)):
        center = coord[rng.integers(len(coord))]
        radius = rng.uniform(*style.hole_radius)
        keep &= np.sum((coord - center) ** 2, axis=1) > radius * radius
    return keep


def _shade(base: np.ndarray, normal: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Per-point colour: base colour lit from above and one side, tinted, plus noise -> uint8."""
    light = np.array([0.3, 0.2, 0.93])
    brightness = 0.85 + 0.1 * normal[:, 2] + 0.05 * (normal @ light)
    tint = np.asarray(style.light_tint) * (1.0 + rng.normal(0.0, style.light_tint_std, 3))
    color = base * brightness[:, None] * tint + rng.normal(0.0, style.point_color_std, base.shape)
    return np.clip(np.rint(color), 0, 255).astype(np.uint8)


def generate_scene(domain: str, rng: np.random.Generator, points_per_m2: float | None = None) -> dict[str, np.ndarray]:
    """One room of ``domain`` as point arrays.

    Returns ``coord`` float32 (N,3) metres, ``color`` uint8 (N,3), ``normal`` float32 (N,3) unit
    length, ``segment`` int64 (N,) with ids into ``SYNTHETIC_CLASSES`` and -1 for unlabelled
    clutter. ``points_per_m2`` defaults to the domain's density.
    """
    style = get_domain(domain)
    density = _resolve_density(style, points_per_m2)
    room = build_room(style, rng)
    coords, normals, part_ids = [], [], []
    for index, part in enumerate(room.parts):
        c, n = sample_part(part, density, rng)
        coords.append(c)
        normals.append(n)
        part_ids.append(np.full(len(c), index))
    coord, normal, part_of_point = np.concatenate(coords), np.concatenate(normals), np.concatenate(part_ids)
    keep = _visible(room.parts, part_of_point, coord, style.occlusion_margin)
    coord, normal, part_of_point = coord[keep], normal[keep], part_of_point[keep]
    keep = _cut_holes(coord, style, len(coord) / density, rng)
    coord, normal, part_of_point = coord[keep], normal[keep], part_of_point[keep]

    labels = np.array([p.label for p in room.parts], dtype=np.int64)
    base_colors = np.array([p.color for p in room.parts], dtype=float)
    color = _shade(base_colors[part_of_point], normal, style, rng)
    jitter = normal * rng.normal(0.0, style.normal_noise_std, (len(coord), 1))
    coord = coord + jitter + rng.normal(0.0, style.iso_noise_std, coord.shape)
    order = rng.permutation(len(coord))  # scan order carries no meaning
    return {
        "coord": coord[order].astype(np.float32),
        "color": color[order],
        "normal": normal[order].astype(np.float32),
        "segment": labels[part_of_point][order],
    }


def scene_seed(seed: int, domain: str, split: str, index: int) -> list[int]:
    """Seed of scene ``index`` of a split; crc32, because Python's ``hash`` of str varies per process."""
    return [int(seed), zlib.crc32(domain.encode()), zlib.crc32(split.encode()), int(index)]


def _scene_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SCENE_FILES)


def _write_scene(folder: Path, scene: dict[str, np.ndarray]) -> None:
    """Write into a temporary sibling folder, then rename, so a scene folder is always complete
    (also when parallel trials prepare the same dataset: they write identical bytes)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(tmp / "coord.npy", scene["coord"].astype(np.float32))
        np.save(tmp / "color.npy", scene["color"].astype(np.uint8))
        np.save(tmp / "normal.npy", scene["normal"].astype(np.float32))
        np.save(tmp / "segment.npy", scene["segment"].astype(np.int16))
        if _scene_complete(folder):  # another process got there first
            return
        if folder.exists():  # an incomplete leftover (not written by this function)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _scene_complete(folder):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_meta(meta_path: Path, expected: dict) -> dict:
    """Existing ``meta.json`` must describe the same generator settings, or we would mix datasets."""
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise PeftbenchError(f"{meta_path} is not valid JSON ({err}): delete the folder and re-run") from err
    for key, value in expected.items():
        if meta.get(key) != value:
            raise PeftbenchError(
                f"{meta_path.parent} already holds a synthetic dataset with {key}={meta.get(key)!r}, "
                f"but {key}={value!r} was asked for: use another root folder or delete this one"
            )
    return meta


def write_synthetic_dataset(root: Path, domain: str, splits: dict[str, int], seed: int,
                            points_per_m2: float | None = None, progress: Any = None) -> Path:
    """Write ``root/<split>/scene_<k:04d>/{coord,color,normal,segment}.npy`` and ``root/meta.json``.

    Scene k of a split is seeded from (seed, domain, split, k), so re-running gives byte-identical
    files; complete scenes already there are kept (cheap to call again), scene folders beyond the
    asked count are removed so the reader sees exactly ``splits[split]`` scenes. Returns ``root``.
    """
    style = get_domain(domain)
    density = _resolve_density(style, points_per_m2)
    for split, count in splits.items():
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
            raise PeftbenchError(f"synthetic split {split!r}: scene count must be an integer >= 0, got {count!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected = {"generator_version": GENERATOR_VERSION, "domain": domain, "seed": int(seed), "points_per_m2": density}
    meta = _check_meta(root / "meta.json", expected)
    counts = dict(meta.get("counts", {}))
    for split, count in splits.items():
        split_dir = root / split
        split_dir.mkdir(exist_ok=True)
        missing = [k for k in range(int(count)) if not _scene_complete(split_dir / f"scene_{k:04d}")]
        for done, k in enumerate(missing, 1):
            scene = generate_scene(domain, np.random.default_rng(scene_seed(seed, domain, split, k)), density)
            _write_scene(split_dir / f"scene_{k:04d}", scene)
            report_progress(progress, f"generating {root.name}/{split} (scenes)", done, len(missing))
        for extra in split_dir.glob("scene_*"):
            if extra.is_dir() and extra.name[6:].isdigit() and int(extra.name[6:]) >= count:
                shutil.rmtree(extra)
        counts[split] = int(count)
    meta = {**expected, "classes": list(SYNTHETIC_CLASSES), "ignore_index": IGNORE_LABEL, "counts": counts,
            "layout": "<split>/scene_<k:04d>/{coord,color,normal,segment}.npy"}
    tmp = root / f".meta.{os.getpid()}.json"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, root / "meta.json")
    return root
