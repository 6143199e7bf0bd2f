"""Room layout of a synthetic scene: floor, four walls, doors/windows/pictures on the walls,
furniture on the floor without overlaps, and a little unlabelled clutter.

The room spans x in [0, Lx], y in [0, Ly], floor at z = 0, no ceiling (as in a scan).
Placement is rejection sampling against simple bookkeeping: axis-aligned floor rectangles and
per-wall (u0, u1, z0, z1) spans; an object that finds no place after a few tries is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from peftbench.data.shapes import Cylinder, Panel, Part, place
from peftbench.data.synthetic_furniture import BUILDERS, Furniture, box_at, pick_color, picture_color, uniform
from peftbench.data.synthetic_style import CLASS_ID, IGNORE_LABEL, DomainStyle

TRIES = 30
Rect = tuple[float, float, float, float]  # (x0, y0, x1, y1) on the floor


@dataclass(frozen=True)
class Wall:
    origin: tuple[float, float]  # start corner
    direction: tuple[float, float]  # unit vector along the wall (u axis)
    normal: tuple[float, float]  # unit vector into the room
    length: float
    yaw: float  # the yaw that turns an object's local +y into ``normal``

    def point(self, u: float, n: float) -> tuple[float, float]:
        """Floor position ``u`` metres along the wall and ``n`` metres into the room."""
        return (self.origin[0] + u * self.direction[0] + n * self.normal[0],
                self.origin[1] + u * self.direction[1] + n * self.normal[1])


def make_walls(lx: float, ly: float) -> list[Wall]:
    half_pi = math.pi / 2.0
    return [
        Wall((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), lx, 0.0),
        Wall((lx, 0.0), (0.0, 1.0), (-1.0, 0.0), ly, half_pi),
        Wall((lx, ly), (-1.0, 0.0), (0.0, -1.0), lx, 2 * half_pi),
        Wall((0.0, ly), (0.0, -1.0), (1.0, 0.0), ly, 3 * half_pi),
    ]


@dataclass
class RoomLayout:
    """Every part of a room in world coordinates, with the object (instance) each belongs to."""

    size: tuple[float, float, float]
    parts: list[Part] = field(default_factory=list)
    instance: list[int] = field(default_factory=list)

    def add(self, parts: list[Part]) -> None:
        object_id = max(self.instance, default=-1) + 1
        self.parts.extend(parts)
        self.instance.extend([object_id] * len(parts))


def footprint(x: float, y: float, size: tuple[float, float], yaw: float, grow: float = 0.0) -> Rect:
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    hx, hy = c * size[0] / 2 + s * size[1] / 2 + grow, s * size[0] / 2 + c * size[1] / 2 + grow
    return (x - hx, y - hy, x + hx, y + hy)


class _Space:
    """Which floor rectangles and wall spans are taken."""

    def __init__(self, lx: float, ly: float) -> None:
        self.lx, self.ly = lx, ly
        self.floor: list[Rect] = []
        self.spans: dict[int, list[Rect]] = {k: [] for k in range(4)}

    def floor_free(self, rect: Rect, clearance: float = 0.0) -> bool:
        """``rect`` lies in the room and, grown by ``clearance``, overlaps nothing placed."""
        x0, y0, x1, y1 = rect
        if x0 < 0.0 or y0 < 0.0 or x1 > self.lx or y1 > self.ly:
            return False
        x0, y0, x1, y1 = x0 - clearance, y0 - clearance, x1 + clearance, y1 + clearance
        return all(x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0 for a0, b0, a1, b1 in self.floor)

    def wall_free(self, wall: int, span: Rect) -> bool:
        u0, z0, u1, z1 = span
        return all(u1 <= a0 or a1 <= u0 or z1 <= b0 or b1 <= z0 for a0, b0, a1, b1 in self.spans[wall])


def _against_wall(space: _Space, walls: list[Wall], item: Furniture, rng: np.random.Generator,
                  front_clearance: float = 0.0) -> tuple[Wall, float, float] | None:
    """Find a wall slot for ``item`` (plus free floor in front of it); returns (wall, u, gap)."""
    w, d = item.size
    for _ in range(TRIES):
        k = int(rng.integers(4))
        wall = walls[k]
        if wall.length < w + 0.1:
            continue
        u, gap = uniform(rng, (w / 2 + 0.05, wall.length - w / 2 - 0.05)), uniform(rng, (0.0, 0.01))
        x, y = wall.point(u, gap + (d + front_clearance) / 2)
        rect = footprint(x, y, (w, d + front_clearance), wall.yaw)
        span = (u - w / 2, 0.0, u + w / 2, item.height)
        if space.floor_free(rect, clearance=0.05) and space.wall_free(k, span):
            space.floor.append(rect)
            space.spans[k].append(span)
            return wall, u, gap
    return None


def _add_furniture(room: RoomLayout, item: Furniture, x: float, y: float, yaw: float, tops: list) -> None:
    room.add([place(p, x, y, yaw) for p in item.parts])
    tops.extend((top, x, y, yaw) for top in item.tops)


def _chair_slots(table: Furniture, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(x, y, outward angle) around a table in its local frame, at the table's edge."""
    w, d = table.size
    if isinstance(table.parts[0], Cylinder):
        n, phase = int(rng.integers(3, 6)), rng.uniform(0, 2 * math.pi)
        angles = [phase + 2 * math.pi * k / n for k in range(n)]
        return [(w / 2 * math.cos(a), w / 2 * math.sin(a), a) for a in angles]
    slots = []
    n_long = max(1, int(w // 0.6))
    for k in range(n_long):
        x = (k + 0.5) * w / n_long - w / 2
        slots += [(x, d / 2, math.pi / 2), (x, -d / 2, -math.pi / 2)]
    if d >= 0.6:
        slots += [(w / 2, 0.0, 0.0), (-w / 2, 0.0, math.pi)]
    return slots


def _place_table(room: RoomLayout, space: _Space, style: DomainStyle, rng: np.random.Generator,
                 chairs_left: int, tops: list) -> int:
    """A free-standing table with chairs around it; returns how many chairs it used."""
    table = BUILDERS["table"](style, rng)
    for _ in range(TRIES):
        yaw = rng.uniform(0, 2 * math.pi) if table.size[0] == table.size[1] else \
            int(rng.integers(4)) * math.pi / 2 + rng.normal(0.0, 0.05)
        x, y = uniform(rng, (0.0, space.lx)), uniform(rng, (0.0, space.ly))
        zone = footprint(x, y, table.size, yaw, grow=0.5)  # room for the chairs
        if not space.floor_free(zone):
            continue
        space.floor.append(zone)
        _add_furniture(room, table, x, y, yaw, tops)
        slots = _chair_slots(table, rng)
        used = [slots[i] for i in rng.permutation(len(slots))[: max(0, chairs_left)]]
        c, s = math.cos(yaw), math.sin(yaw)
        for sx, sy, angle in used:
            chair = BUILDERS["chair"](style, rng)
            out = angle + yaw
            dist = chair.size[1] / 2 - uniform(rng, (0.0, 0.12))
            cx = x + c * sx - s * sy + dist * math.cos(out)
            cy = y + s * sx + c * sy + dist * math.sin(out)
            _add_furniture(room, chair, cx, cy, out + math.pi / 2 + rng.normal(0.0, 0.15), tops)
        return len(used)
    return 0


def _place_free(room: RoomLayout, space: _Space, item: Furniture, rng: np.random.Generator, tops: list) -> None:
    for _ in range(TRIES):
        x, y, yaw = uniform(rng, (0.0, space.lx)), uniform(rng, (0.0, space.ly)), rng.uniform(0, 2 * math.pi)
        rect = footprint(x, y, item.size, yaw)
        if space.floor_free(rect, clearance=0.05):
            space.floor.append(rect)
            _add_furniture(room, item, x, y, yaw, tops)
            return


def _wall_item_slot(space: _Space, walls: list[Wall], rng: np.random.Generator, width: float,
                    z0: float, z1: float) -> tuple[int, float] | None:
    for _ in range(TRIES):
        k = int(rng.integers(4))
        if walls[k].length < width + 0.4:
            continue
        u = uniform(rng, (width / 2 + 0.2, walls[k].length - width / 2 - 0.2))
        span = (u - width / 2 - 0.05, z0 - 0.05, u + width / 2 + 0.05, z1 + 0.05)
        if space.wall_free(k, span):
            space.spans[k].append(span)
            return k, u
    return None


def _door(style: DomainStyle, rng: np.random.Generator, width: float, height: float) -> list[Part]:
    """Door in the wall's local frame (x along the wall, y = into the room, opening centred at x=0)."""
    label, color = CLASS_ID["door"], pick_color(style, "door", rng)
    offset, thick = uniform(rng, style.door_offset), 0.04
    trim_color, trim = pick_color(style, "accent", rng) if rng.random() < 0.3 else color, uniform(rng, (0.05, 0.08))
    side = float(rng.choice([-1.0, 1.0]))
    parts: list[Part] = [
        box_at(0.0, offset - thick / 2, 0.0, width - 0.02, thick, height - 0.005, label, color),
        box_at(side * (width / 2 - 0.09), offset + 0.025, 0.95, 0.12, 0.05, 0.025, label, trim_color),
    ]
    reveal = 0.04  # the trim sits a little outside the opening
    for sx in (-1.0, 1.0):
        parts.append(box_at(sx * (width / 2 + reveal + trim / 2), 0.0075, 0.0, trim, 0.015, height + reveal + trim, label, trim_color))
    parts.append(box_at(0.0, 0.0075, height + reveal, width + 2 * (reveal + trim), 0.015, trim, label, trim_color))
    if offset < -0.005:  # a recessed door shows the wall's thickness around the opening
        wall, wall_color = CLASS_ID["wall"], pick_color(style, "wall", rng)
        parts.append(Panel((-width / 2, offset, 0.0), (0.0, -offset, 0.0), (0.0, 0.0, height), (1.0, 0.0, 0.0), wall, wall_color))
        parts.append(Panel((width / 2, offset, 0.0), (0.0, -offset, 0.0), (0.0, 0.0, height), (-1.0, 0.0, 0.0), wall, wall_color))
        parts.append(Panel((-width / 2, offset, height), (width, 0.0, 0.0), (0.0, -offset, 0.0), (0.0, 0.0, -1.0), wall, wall_color))
    return parts


def _window(style: DomainStyle, rng: np.random.Generator, width: float, z0: float, z1: float) -> tuple[list[Part], float]:
    """Window frame, glass and sill in the wall's local frame; returns parts and frame width."""
    label, color = CLASS_ID["window"], pick_color(style, "window", rng)
    fw, depth = uniform(rng, style.window_frame_width), 0.05
    parts: list[Part] = [
        box_at(-width / 2 + fw / 2, 0.005, z0, fw, depth, z1 - z0, label, color),
        box_at(width / 2 - fw / 2, 0.005, z0, fw, depth, z1 - z0, label, color),
        box_at(0.0, 0.005, z0, width - 2 * fw, depth, fw, label, color),
        box_at(0.0, 0.005, z1 - fw, width - 2 * fw, depth, fw, label, color),
        Panel((-width / 2 + fw, -0.03, z0 + fw), (width - 2 * fw, 0.0, 0.0), (0.0, 0.0, z1 - z0 - 2 * fw),
              (0.0, 1.0, 0.0), label, pick_color(style, "glass", rng), density_scale=style.glass_density_scale),
    ]
    if width > 1.1 and rng.random() < 0.6:  # mullion
        parts.append(box_at(0.0, 0.005, z0 + fw, fw * 0.8, depth, z1 - z0 - 2 * fw, label, color))
    if rng.random() < 0.6:  # sill
        parts.append(box_at(0.0, 0.06, z0 - 0.03, width + 0.1, 0.12, 0.03, label, color))
    return parts, fw


def _picture(style: DomainStyle, rng: np.random.Generator, width: float, z0: float, height: float) -> list[Part]:
    label, thick = CLASS_ID["picture"], uniform(rng, (0.015, 0.04))
    parts: list[Part] = [box_at(0.0, thick / 2, z0, width, thick, height, label, picture_color(style, rng))]
    if rng.random() < 0.6:  # frame, a little proud of the canvas
        fc, fw, ft = pick_color(style, "accent", rng), 0.03, thick + 0.01
        parts += [box_at(sx * (width / 2 + fw / 2), ft / 2, z0 - fw, fw, ft, height + 2 * fw, label, fc) for sx in (-1, 1)]
        parts += [box_at(0.0, ft / 2, z, width, ft, fw, label, fc) for z in (z0 - fw, z0 + height)]
    return parts


def _clutter(style: DomainStyle, rng: np.random.Generator, x: float, y: float, z0: float) -> Part:
    color = pick_color(style, "clutter", rng)
    if rng.random() < 0.5:
        return box_at(x, y, z0, uniform(rng, (0.08, 0.35)), uniform(rng, (0.08, 0.3)), uniform(rng, (0.05, 0.35)), IGNORE_LABEL, color)
    return Cylinder((x, y), (z0, z0 + uniform(rng, (0.08, 0.35))), uniform(rng, (0.03, 0.12)), IGNORE_LABEL, color)


def _count(style: DomainStyle, name: str, rng: np.random.Generator, scale: float = 1.0) -> int:
    """Objects of ``name`` in this room: the style's range, scaled up for big rooms."""
    lo, hi = style.counts[name]
    return int(round(int(rng.integers(lo, hi + 1)) * scale))


def build_room(style: DomainStyle, rng: np.random.Generator) -> RoomLayout:
    """Lay out one room of ``style``: every part in world coordinates."""
    lx, ly, height = uniform(rng, style.room_size), uniform(rng, style.room_size), uniform(rng, style.wall_height)
    room, space, walls, tops = RoomLayout((lx, ly, height)), _Space(lx, ly), make_walls(lx, ly), []
    holes: dict[int, list] = {k: [] for k in range(4)}

    for _ in range(_count(style, "door", rng)):
        width, door_h = uniform(rng, (0.8, 1.0)), uniform(rng, (2.0, 2.15))
        slot = _wall_item_slot(space, walls, rng, width + 0.3, 0.0, door_h + 0.15)
        if slot is None:
            continue
        k, u = slot
        wall = walls[k]
        room.add([place(p, *wall.point(u, 0.0), wall.yaw) for p in _door(style, rng, width, door_h)])
        holes[k].append((u - width / 2, u + width / 2, 0.0, door_h))
        space.floor.append(footprint(*wall.point(u, 0.45), (width + 0.2, 0.9), wall.yaw))  # keep the swing free

    furniture_scale = min(2.0, max(1.0, lx * ly / 25.0))  # counts are for a ~25 m^2 room
    wall_scale = min(2.0, max(1.0, (lx + ly) / 10.0))
    chairs_left = _count(style, "chair", rng, furniture_scale)
    for name in ("bed", "sofa", "table", "bookshelf", "cabinet", "desk"):
        if name == "table":  # free-standing, placed before the wall-backed rest takes the room
            for _ in range(_count(style, "table", rng, furniture_scale)):
                chairs_left -= _place_table(room, space, style, rng, chairs_left, tops)
            continue
        for _ in range(_count(style, name, rng, furniture_scale)):
            item = BUILDERS[name](style, rng)
            desk_chair = name == "desk" and chairs_left > 0
            slot = _against_wall(space, walls, item, rng, front_clearance=0.7 if desk_chair else 0.0)
            if slot is None:
                continue
            wall, u, gap = slot
            _add_furniture(room, item, *wall.point(u, gap + item.size[1] / 2), wall.yaw, tops)
            if desk_chair:
                chair = BUILDERS["chair"](style, rng)
                n = gap + item.size[1] + chair.size[1] / 2 - uniform(rng, (0.0, 0.15))
                yaw = wall.yaw + math.pi + rng.normal(0.0, 0.2)
                _add_furniture(room, chair, *wall.point(u + uniform(rng, (-0.2, 0.2)), n), yaw, tops)
                chairs_left -= 1
    for _ in range(max(0, chairs_left)):
        _place_free(room, space, BUILDERS["chair"](style, rng), rng, tops)

    for _ in range(_count(style, "window", rng, wall_scale)):
        width, sill = uniform(rng, (0.8, 1.6)), uniform(rng, (0.8, 1.0))
        top = min(height - 0.2, sill + uniform(rng, (1.0, 1.5)))
        slot = _wall_item_slot(space, walls, rng, width, sill - 0.05, top)
        if slot is None:
            continue
        k, u = slot
        parts, fw = _window(style, rng, width, sill, top)
        room.add([place(p, *walls[k].point(u, 0.0), walls[k].yaw) for p in parts])
        holes[k].append((u - width / 2 + fw, u + width / 2 - fw, sill + fw, top - fw))
    for _ in range(_count(style, "picture", rng, wall_scale)):
        width, pic_h = uniform(rng, (0.3, 1.0)), uniform(rng, (0.3, 0.8))
        z0 = min(uniform(rng, (1.3, 1.7)) - pic_h / 2, height - 0.15 - pic_h)
        slot = _wall_item_slot(space, walls, rng, width, z0, z0 + pic_h)
        if slot is not None:
            k, u = slot
            room.add([place(p, *walls[k].point(u, 0.0), walls[k].yaw) for p in _picture(style, rng, width, z0, pic_h)])

    for _ in range(_count_range(style.clutter_count, rng)):
        if tops and rng.random() < 0.7:
            (tx, ty, tw, td, tz), x, y, yaw = tops[int(rng.integers(len(tops)))]
            item = _clutter(style, rng, tx + uniform(rng, (-tw / 2, tw / 2)), ty + uniform(rng, (-td / 2, td / 2)), tz)
            room.add([place(item, x, y, yaw)])
        else:
            x, y = uniform(rng, (0.2, lx - 0.2)), uniform(rng, (0.2, ly - 0.2))
            if space.floor_free(footprint(x, y, (0.4, 0.4), 0.0)):
                space.floor.append(footprint(x, y, (0.4, 0.4), 0.0))
                room.add([_clutter(style, rng, x, y, 0.0)])

    floor_color = pick_color(style, "floor", rng)
    room.add([Panel((0.0, 0.0, 0.0), (lx, 0.0, 0.0), (0.0, ly, 0.0), (0.0, 0.0, 1.0), CLASS_ID["floor"], floor_color)])
    wall_color = pick_color(style, "wall", rng)
    for k, wall in enumerate(walls):
        ox, oy = wall.origin
        u = (wall.direction[0] * wall.length, wall.direction[1] * wall.length, 0.0)
        room.add([Panel((ox, oy, 0.0), u, (0.0, 0.0, height), (*wall.normal, 0.0), CLASS_ID["wall"],
                        wall_color, holes=tuple(holes[k]))])
    return room


def _count_range(span: tuple[int, int], rng: np.random.Generator) -> int:
    return int(rng.integers(span[0], span[1] + 1))
