"""Surface primitives of the synthetic scenes: boxes, cylinders and one-sided panels.

Each primitive samples points uniformly (area-proportional, Poisson counts) on its visible
surface with the surface normal, and a solid primitive tells which points it hides (points
of other parts inside it: the floor under a bed, the wall behind a cabinet, a leg's top
inside a table top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

import numpy as np

Vec3 = tuple[float, float, float]
FLOOR_EPS = 0.005  # a bottom face this close to z=0 rests on the floor and is never seen


@dataclass(frozen=True)
class Box:
    """Box with its footprint rotated by ``yaw`` about z (local x = (cos, sin), local y = (-sin, cos))."""

    center: Vec3
    size: Vec3
    label: int
    color: Vec3
    yaw: float = 0.0
    solid: bool = True
    density_scale: float = 1.0


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder (axis along z)."""

    center: tuple[float, float]
    z_range: tuple[float, float]
    radius: float
    label: int
    color: Vec3
    solid: bool = True
    density_scale: float = 1.0


@dataclass(frozen=True)
class Panel:
    """One-sided rectangle ``origin + a*u + b*v`` seen from the side ``normal`` points to.

    ``holes`` are ``(a0, a1, b0, b1)`` in metres along ``u`` and ``v`` where nothing is sampled.
    """

    origin: Vec3
    u: Vec3
    v: Vec3
    normal: Vec3
    label: int
    color: Vec3
    holes: tuple[tuple[float, float, float, float], ...] = ()
    solid: bool = False
    density_scale: float = 1.0


Part = Union[Box, Cylinder, Panel]


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def place(part: Part, x: float, y: float, yaw: float) -> Part:
    """Move a part from its object's local frame into the room: rotate by ``yaw``, then shift."""
    rot = _yaw_matrix(yaw)
    shift = np.array([x, y, 0.0])
    if isinstance(part, Box):
        center = rot @ np.asarray(part.center) + shift
        return replace(part, center=tuple(center), yaw=part.yaw + yaw)
    if isinstance(part, Cylinder):
        center = rot @ np.array([*part.center, 0.0]) + shift
        return replace(part, center=(center[0], center[1]))
    origin = rot @ np.asarray(part.origin) + shift
    return replace(
        part, origin=tuple(origin), u=tuple(rot @ np.asarray(part.u)),
        v=tuple(rot @ np.asarray(part.v)), normal=tuple(rot @ np.asarray(part.normal)),
    )


def sample_part(part: Part, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(n,3)`` and unit normals ``(n,3)`` on the visible surface of ``part``."""
    density = density * part.density_scale
    if isinstance(part, Box):
        return _sample_box(part, density, rng)
    if isinstance(part, Cylinder):
        return _sample_cylinder(part, density, rng)
    return _sample_panel(part, density, rng)


def _sample_box(box: Box, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    half = np.asarray(box.size) / 2.0
    on_floor = box.center[2] - half[2] <= FLOOR_EPS
    coords, normals = [], []
    for axis in range(3):
        a, b = [k for k in range(3) if k != axis]
        area = box.size[a] * box.size[b]
        for sign in (-1.0, 1.0):
            if axis == 2 and sign < 0 and on_floor:
                continue
            n = rng.poisson(area * density)
            local = (rng.random((n, 3)) * 2.0 - 1.0) * half
            local[:, axis] = sign * half[axis]
            normal = np.zeros((n, 3))
            normal[:, axis] = sign
            coords.append(local)
            normals.append(normal)
    rot = _yaw_matrix(box.yaw)
    coord = np.concatenate(coords) @ rot.T + np.asarray(box.center)
    return coord, np.concatenate(normals) @ rot.T


def _sample_cylinder(cyl: Cylinder, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    (cx, cy), (z0, z1), r = cyl.center, cyl.z_range, cyl.radius
    n_side = rng.poisson(2.0 * math.pi * r * (z1 - z0) * density)
    theta = rng.random(n_side) * 2.0 * math.pi
    side_normal = np.stack([np.cos(theta), np.sin(theta), np.zeros(n_side)], axis=1)
    side = np.stack([cx + r * side_normal[:, 0], cy + r * side_normal[:, 1], rng.uniform(z0, z1, n_side)], axis=1)
    coords, normals = [side], [side_normal]
    caps = [(z1, 1.0)] if z0 <= FLOOR_EPS else [(z1, 1.0), (z0, -1.0)]
    for z, sign in caps:
        n = rng.poisson(math.pi * r * r * density)
        rad = r * np.sqrt(rng.random(n))
        ang = rng.random(n) * 2.0 * math.pi
        coords.append(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang), np.full(n, z)], axis=1))
        normals.append(np.tile([0.0, 0.0, sign], (n, 1)))
    return np.concatenate(coords), np.concatenate(normals)


def _sample_panel(panel: Panel, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.asarray(panel.u), np.asarray(panel.v)
    len_u, len_v = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    n = rng.poisson(len_u * len_v * density)
    ab = rng.random((n, 2))
    keep = np.ones(n, dtype=bool)
    for a0, a1, b0, b1 in panel.holes:
        am, bm = ab[:, 0] * len_u, ab[:, 1] * len_v
        keep &= ~((am >= a0) & (am <= a1) & (bm >= b0) & (bm <= b1))
    ab = ab[keep]
    coord = np.asarray(panel.origin) + ab[:, :1] * u + ab[:, 1:] * v
    return coord, np.tile(np.asarray(panel.normal, dtype=float), (len(coord), 1))


def hidden_by(part: Part, coord: np.ndarray, margin: float) -> np.ndarray:
    """Boolean mask of the points of ``coord`` inside solid ``part`` grown by ``margin``."""
    if not part.solid or isinstance(part, Panel):
        return np.zeros(len(coord), dtype=bool)
    if isinstance(part, Cylinder):
        (cx, cy), (z0, z1) = part.center, part.z_range
        radial = (coord[:, 0] - cx) ** 2 + (coord[:, 1] - cy) ** 2
        return (radial <= (part.radius + margin) ** 2) & (coord[:, 2] >= z0 - margin) & (coord[:, 2] <= z1 + margin)
    local = (coord - np.asarray(part.center)) @ _yaw_matrix(part.yaw)  # row form of R^T (p - c)
    return np.all(np.abs(local) <= np.asarray(part.size) / 2.0 + margin, axis=1)


def bounding_box(part: Part) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounds ``(lo, hi)`` of a part (used to skip far-away points quickly)."""
    if isinstance(part, Cylinder):
        (cx, cy), (z0, z1), r = part.center, part.z_range, part.radius
        return np.array([cx - r, cy - r, z0]), np.array([cx + r, cy + r, z1])
    if isinstance(part, Box):
        rot = np.abs(_yaw_matrix(part.yaw))
        half = rot @ (np.asarray(part.size) / 2.0)
        return np.asarray(part.center) - half, np.asarray(part.center) + half
    corners = np.asarray(part.origin) + np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ np.stack([part.u, part.v])
    return corners.min(0), corners.max(0)
