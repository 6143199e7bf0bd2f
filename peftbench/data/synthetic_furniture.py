"""Furniture of the synthetic rooms, built from boxes and cylinders in the object's own frame.

Frame convention: the footprint is centred at the origin, x is the width, the back is at -y and
the front at +y (so an object backed against a wall faces into the room), z starts at the floor.
Shapes and colours come from the domain's ``DomainStyle``.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import numpy as np

from peftbench.data.shapes import Box, Cylinder, Part
from peftbench.data.synthetic_style import CLASS_ID, DomainStyle

Top = tuple[float, float, float, float, float]  # (x, y, width, depth, z) of a surface clutter may stand on


@dataclass(frozen=True)
class Furniture:
    parts: tuple[Part, ...]
    size: tuple[float, float]  # footprint width (x) and depth (y), centred at the origin
    height: float
    tops: tuple[Top, ...] = ()


def pick_color(style: DomainStyle, key: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """A palette colour of ``key`` shifted per instance, so instances of a class differ."""
    palette = style.palettes[key]
    base = np.asarray(palette[rng.integers(len(palette))], dtype=float)
    return tuple(np.clip(base + rng.normal(0.0, style.instance_color_std, 3), 0.0, 255.0))


def picture_color(style: DomainStyle, rng: np.random.Generator) -> tuple[float, float, float]:
    """Pictures are anything: a random vivid (source) or pastel (target) colour."""
    if style.picture_palette == "vivid":
        hsv = (rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.9))
    else:
        hsv = (rng.random(), rng.uniform(0.15, 0.35), rng.uniform(0.8, 0.95))
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(*hsv))


def uniform(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def box_at(x: float, y: float, z0: float, sx: float, sy: float, sz: float, label: int, color) -> Box:
    """Box given by its footprint centre, bottom height and size (easier to read than centres)."""
    return Box(center=(x, y, z0 + sz / 2.0), size=(sx, sy, sz), label=label, color=color)


def _four_legs(w: float, d: float, h: float, leg: float, inset: float, label: int, color) -> list[Part]:
    dx, dy = w / 2.0 - inset - leg / 2.0, d / 2.0 - inset - leg / 2.0
    return [box_at(sx * dx, sy * dy, 0.0, leg, leg, h, label, color) for sx in (-1, 1) for sy in (-1, 1)]


def _shift_y(parts: list[Part], dy: float) -> list[Part]:
    out = []
    for p in parts:
        if isinstance(p, Box):
            out.append(replace(p, center=(p.center[0], p.center[1] + dy, p.center[2])))
        else:
            out.append(replace(p, center=(p.center[0], p.center[1] + dy)))
    return out


def build_table(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, h, thick = CLASS_ID["table"], uniform(rng, style.table_height), uniform(rng, (0.03, 0.05))
    top_color = pick_color(style, "table", rng)
    leg_color = pick_color(style, "accent", rng) if rng.random() < 0.5 else top_color
    if rng.random() < style.round_table_prob:
        r = uniform(rng, (0.35, 0.6))
        parts = [
            Cylinder((0.0, 0.0), (h - thick, h), r, label, top_color),
            Cylinder((0.0, 0.0), (0.03, h - thick), uniform(rng, (0.03, 0.06)), label, leg_color),
            Cylinder((0.0, 0.0), (0.0, 0.03), r * 0.55, label, leg_color),
        ]
        return Furniture(tuple(parts), (2 * r, 2 * r), h, ((0.0, 0.0, 1.2 * r, 1.2 * r, h),))
    w, d = uniform(rng, (0.9, 1.8)), uniform(rng, (0.6, 1.0))
    parts = [box_at(0.0, 0.0, h - thick, w, d, thick, label, top_color)]
    parts += _four_legs(w, d, h - thick, uniform(rng, (0.04, 0.07)), uniform(rng, (0.02, 0.08)), label, leg_color)
    return Furniture(tuple(parts), (w, d), h, ((0.0, 0.0, w - 0.1, d - 0.1, h),))


def build_desk(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, h, thick = CLASS_ID["desk"], uniform(rng, style.desk_height), 0.03
    w, d = uniform(rng, (1.0, 1.6)), uniform(rng, (0.55, 0.75))
    color = pick_color(style, "desk", rng)
    side = {"right": 1.0, "left": -1.0}.get(style.desk_drawer_side, float(rng.choice([-1.0, 1.0])))
    block_w = uniform(rng, (0.35, 0.45))
    block_x = side * (w / 2.0 - block_w / 2.0 - 0.01)
    parts: list[Part] = [
        box_at(0.0, 0.0, h - thick, w, d, thick, label, color),
        box_at(block_x, 0.0, 0.0, block_w, d - 0.04, h - thick, label, color),
    ]
    n_drawers = int(rng.integers(2, 5))
    handle_color = pick_color(style, "accent", rng)
    for k in range(n_drawers):  # drawer handles break up the front face
        z = (h - thick) * (k + 0.7) / n_drawers
        parts.append(box_at(block_x, d / 2.0 - 0.01, z, 0.12, 0.04, 0.02, label, handle_color))
    leg, leg_x = 0.05, -side * (w / 2.0 - 0.05)
    parts += [box_at(leg_x, sy * (d / 2.0 - 0.05), 0.0, leg, leg, h - thick, label, color) for sy in (-1, 1)]
    if rng.random() < 0.5:  # modesty panel at the back
        parts.append(box_at(-side * block_w / 2.0, -d / 2.0 + 0.02, h * 0.35, w - block_w - 0.1, 0.02, h * 0.5, label, color))
    return Furniture(tuple(parts), (w, d), h, ((0.0, 0.0, w - 0.15, d - 0.15, h),))


def build_chair(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, color = CLASS_ID["chair"], pick_color(style, "chair", rng)
    leg_color = pick_color(style, "accent", rng) if rng.random() < 0.5 else color
    if rng.random() < style.stool_prob:  # backless stool with a round seat
        sh, r, seat_t = uniform(rng, style.stool_seat_height), uniform(rng, (0.15, 0.2)), 0.04
        parts: list[Part] = [Cylinder((0.0, 0.0), (sh - seat_t, sh), r, label, color)]
        n_legs = int(rng.integers(3, 5))
        for k in range(n_legs):
            a = 2.0 * math.pi * k / n_legs
            parts.append(Cylinder((0.8 * r * math.cos(a), 0.8 * r * math.sin(a)), (0.0, sh - seat_t), 0.015, label, leg_color))
        return Furniture(tuple(parts), (2 * r, 2 * r), sh)
    sh, w, d, seat_t = uniform(rng, style.chair_seat_height), uniform(rng, (0.4, 0.5)), uniform(rng, (0.4, 0.5)), 0.05
    back_t, back_h = uniform(rng, (0.03, 0.05)), uniform(rng, (0.35, 0.5))
    parts = [box_at(0.0, 0.0, sh - seat_t, w, d, seat_t, label, color)]
    parts += _four_legs(w, d, sh - seat_t, uniform(rng, (0.03, 0.045)), 0.01, label, leg_color)
    parts.append(box_at(0.0, -d / 2.0 + back_t / 2.0, sh, w, back_t, back_h, label, color))
    return Furniture(tuple(parts), (w, d), sh + back_h)


def build_bed(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label = CLASS_ID["bed"]
    w, length, top = uniform(rng, style.bed_width), uniform(rng, (1.9, 2.1)), uniform(rng, style.bed_height)
    frame_h = top * 0.45
    frame_color, sheet_color = pick_color(style, "accent", rng), pick_color(style, "bed", rng)
    parts: list[Part] = [
        box_at(0.0, 0.0, 0.0, w, length, frame_h, label, frame_color),
        box_at(0.0, 0.0, frame_h, w - 0.04, length - 0.04, top - frame_h, label, sheet_color),
    ]
    head = uniform(rng, style.headboard_height)
    if head > top + 0.1:
        parts.append(box_at(0.0, -length / 2.0 + 0.03, 0.0, w, 0.06, head, label, frame_color))
    n_pillows = 1 if w < 1.3 else 2
    pillow_color = pick_color(style, "bed", rng)
    for k in range(n_pillows):
        x = (k + 0.5) * w / n_pillows - w / 2.0
        parts.append(box_at(x, -length / 2.0 + 0.3, top, w / n_pillows - 0.15, 0.35, 0.12, label, pillow_color))
    return Furniture(tuple(parts), (w, length), max(head, top + 0.12))


def build_sofa(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, color = CLASS_ID["sofa"], pick_color(style, "sofa", rng)
    w, d, seat_h = uniform(rng, (1.6, 2.4)), uniform(rng, (0.8, 1.0)), uniform(rng, (0.38, 0.45))
    back_h, back_t = uniform(rng, (0.75, 0.9)), uniform(rng, (0.15, 0.25))
    arm_w = uniform(rng, (0.12, 0.22)) if rng.random() < style.sofa_arms_prob else 0.0
    base_h, cushion_h = seat_h - 0.12, 0.12
    inner_w, seat_d = w - 2.0 * arm_w, d - back_t
    seat_y = -d / 2.0 + back_t + seat_d / 2.0
    parts: list[Part] = [
        box_at(0.0, -d / 2.0 + back_t / 2.0, 0.0, w, back_t, back_h, label, color),
        box_at(0.0, seat_y, 0.0, inner_w, seat_d, base_h, label, color),
    ]
    n_cushions = int(rng.integers(2, 4))
    for k in range(n_cushions):
        x = (k + 0.5) * inner_w / n_cushions - inner_w / 2.0
        parts.append(box_at(x, seat_y, base_h, inner_w / n_cushions - 0.02, seat_d - 0.02, cushion_h, label, color))
    depth, ext, side = d, 0.0, 0.0
    if rng.random() < style.sofa_l_prob:  # chaise on one side: an L-shaped footprint
        side, chaise_w, ext = float(rng.choice([-1.0, 1.0])), uniform(rng, (0.6, 0.9)), uniform(rng, (0.6, 0.9))
        cx = side * (inner_w / 2.0 - chaise_w / 2.0)
        parts.append(box_at(cx, d / 2.0 + ext / 2.0, 0.0, chaise_w, ext, base_h, label, color))
        parts.append(box_at(cx, d / 2.0 + ext / 2.0, base_h, chaise_w - 0.02, ext - 0.02, cushion_h, label, color))
        depth = d + ext
    if arm_w > 0.0:
        arm_h = uniform(rng, (0.55, 0.65))
        for sx in (-1.0, 1.0):
            arm_d = d + ext if (ext > 0.0 and sx == side) else d
            parts.append(box_at(sx * (w / 2.0 - arm_w / 2.0), -d / 2.0 + arm_d / 2.0, 0.0, arm_w, arm_d, arm_h, label, color))
    return Furniture(tuple(_shift_y(parts, -ext / 2.0)), (w, depth), back_h)


def build_cabinet(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, color = CLASS_ID["cabinet"], pick_color(style, "cabinet", rng)
    w, d, h = uniform(rng, style.cabinet_width), uniform(rng, (0.4, 0.6)), uniform(rng, style.cabinet_height)
    parts: list[Part] = [box_at(0.0, 0.0, 0.05, w, d, h - 0.05, label, color),  # body over a recessed plinth
                         box_at(0.0, -0.03, 0.0, w - 0.04, d - 0.06, 0.05, label, color)]
    n_doors = 1 if w < 0.6 else 2
    handle_color, door_w = pick_color(style, "accent", rng), w / n_doors - 0.01
    handle_z = h * 0.55 if h > 1.3 else h - 0.15
    for k in range(n_doors):  # door fronts stand 2 cm proud of the body, with a gap between
        x = (k + 0.5) * w / n_doors - w / 2.0
        parts.append(box_at(x, d / 2.0 + 0.01, 0.08, door_w, 0.02, h - 0.11, label, color))
        hx = x + (door_w / 2.0 - 0.05) * (1.0 if k == 0 and n_doors == 2 else -1.0)
        parts.append(box_at(hx, d / 2.0 + 0.035, handle_z - 0.06, 0.02, 0.03, 0.12, label, handle_color))
    tops = ((0.0, 0.0, w * 0.8, d * 0.8, h),) if h < 1.3 else ()
    return Furniture(tuple(parts), (w, d + 0.04), h, tops)


def build_bookshelf(style: DomainStyle, rng: np.random.Generator) -> Furniture:
    label, color = CLASS_ID["bookshelf"], pick_color(style, "bookshelf", rng)
    w, d, h, t = uniform(rng, style.bookshelf_width), uniform(rng, (0.28, 0.4)), uniform(rng, style.bookshelf_height), 0.025
    parts: list[Part] = [
        box_at(sx * (w / 2.0 - t / 2.0), 0.0, 0.0, t, d, h, label, color) for sx in (-1.0, 1.0)
    ]
    parts.append(box_at(0.0, 0.0, h - t, w - 2 * t, d, t, label, color))
    parts.append(box_at(0.0, -d / 2.0 + 0.005, 0.0, w - 2 * t, 0.01, h - t, label, color))
    bays = [(-w / 2.0 + t, w / 2.0 - t)]
    if w > 1.2:  # wide shelves get a middle divider
        parts.append(box_at(0.0, 0.0, 0.0, t, d - 0.01, h - t, label, color))
        bays = [(-w / 2.0 + t, -t / 2.0), (t / 2.0, w / 2.0 - t)]
    n_shelves = max(2, round(h / 0.36))
    gap = (h - t) / n_shelves
    for k in range(n_shelves):
        z = k * gap + (0.05 if k == 0 else 0.0)
        parts.append(box_at(0.0, 0.01, z, w - 2 * t, d - 0.02, t, label, color))
        for x0, x1 in bays:  # runs of books (labelled bookshelf, as in ScanNet)
            if rng.random() >= style.books_prob:
                continue
            x = x0 + rng.uniform(0.0, 0.1)
            while x < x1 - 0.08:
                run = min(rng.uniform(0.08, 0.35), x1 - x)
                book_h = rng.uniform(0.15, max(0.16, min(0.3, gap - 0.05)))
                book_color = pick_color(style, "clutter", rng)
                parts.append(box_at(x + run / 2.0, 0.0, z + t, run, d * rng.uniform(0.6, 0.85), book_h, label, book_color))
                x += run + rng.uniform(0.0, 0.15)
    return Furniture(tuple(parts), (w, d), h)


BUILDERS = {
    "table": build_table, "desk": build_desk, "chair": build_chair, "bed": build_bed,
    "sofa": build_sofa, "cabinet": build_cabinet, "bookshelf": build_bookshelf,
}
