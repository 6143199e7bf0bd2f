"""What makes the two synthetic domains differ: one frozen bag of knobs per domain.

The target domain changes furniture shapes (round tall tables, stools, low wide beds, L-shaped
sofas, wide low bookshelves), colour palettes (greys/pastels, with some classes taking colours
that belong to other classes in the source), point density, noise, holes and clutter, so a
model trained on the source transfers imperfectly. Label semantics stay the same.
Palettes overlap across classes in both domains so colour alone never separates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa",
    "table", "door", "window", "bookshelf", "picture", "desk",
)
CLASS_ID: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(SYNTHETIC_CLASSES)})
IGNORE_LABEL = -1  # unannotated clutter, as in real scans

RGB = tuple[int, int, int]
Range = tuple[float, float]

# Named colours shared by both domains (the overlap across classes is the point).
WOOD_LIGHT, WOOD, WOOD_DARK = (196, 160, 112), (160, 112, 70), (105, 70, 45)
WHITE, OFFWHITE, BEIGE = (228, 226, 220), (214, 206, 190), (205, 188, 160)
GREY_LIGHT, GREY, GREY_DARK, BLACK = (182, 182, 180), (128, 128, 128), (72, 72, 76), (40, 40, 42)
NAVY, RED, GREEN, MUSTARD = (60, 75, 110), (150, 60, 50), (90, 120, 80), (200, 165, 70)
SKY, PINK, MINT, CREAM, LAVENDER = (170, 195, 215), (225, 190, 195), (190, 220, 200), (238, 228, 200), (200, 190, 220)


@dataclass(frozen=True)
class DomainStyle:
    """All knobs of one synthetic domain. Ranges are (low, high), drawn uniformly per instance."""

    name: str
    points_per_m2: float  # default surface sampling density
    room_size: Range  # side lengths of the rectangular room (m)
    wall_height: Range
    normal_noise_std: float  # sensor jitter along the surface normal (m)
    iso_noise_std: float  # small isotropic jitter (m)
    holes_per_m2: float  # random missing regions per m^2 of sampled surface
    hole_radius: Range
    occlusion_margin: float  # points this close inside another solid part are hidden (m)
    point_color_std: float  # per-point colour noise (0..255 units)
    instance_color_std: float  # per-object colour shift around its palette colour
    light_tint: tuple[float, float, float]  # per-channel white balance of the domain
    light_tint_std: float  # per-scene variation of that tint
    palettes: Mapping[str, tuple[RGB, ...]]  # class name (+ "accent", "glass", "clutter") -> colours
    picture_palette: str  # "vivid" or "pastel": pictures get a random colour of that kind
    counts: Mapping[str, tuple[int, int]]  # objects per room, inclusive range
    table_height: Range
    round_table_prob: float
    desk_height: Range
    desk_drawer_side: str  # "right", "left" or "either"
    chair_seat_height: Range
    stool_prob: float  # chairs without a back (round seat)
    stool_seat_height: Range
    bed_height: Range  # mattress top
    bed_width: Range
    headboard_height: Range  # above the floor; 0 = no headboard
    sofa_l_prob: float
    sofa_arms_prob: float
    bookshelf_width: Range
    bookshelf_height: Range
    books_prob: float  # shelves carry books (labelled bookshelf)
    cabinet_height: Range
    cabinet_width: Range
    door_offset: Range  # door panel position along the wall normal (<0 recessed, >0 protruding)
    window_frame_width: Range
    glass_density_scale: float  # glass returns few points
    clutter_count: tuple[int, int]  # small unlabelled objects on tops and the floor


def _frozen(mapping: dict) -> Mapping:
    return MappingProxyType(dict(mapping))


SOURCE = DomainStyle(
    name="source",
    points_per_m2=220.0,
    room_size=(4.0, 8.0),
    wall_height=(2.6, 3.1),
    normal_noise_std=0.003,
    iso_noise_std=0.001,
    holes_per_m2=0.04,
    hole_radius=(0.1, 0.3),
    occlusion_margin=0.03,
    point_color_std=6.0,
    instance_color_std=10.0,
    light_tint=(1.05, 1.0, 0.9),  # warm light
    light_tint_std=0.03,
    palettes=_frozen({
        "wall": (WHITE, OFFWHITE, BEIGE),
        "floor": (WOOD, WOOD_LIGHT, GREY),
        "cabinet": (WOOD, WOOD_LIGHT, WHITE),
        "bed": (WHITE, BEIGE, NAVY, RED),
        "chair": (WOOD, WOOD_DARK, RED, BLACK),
        "sofa": (BEIGE, RED, NAVY, GREY_DARK, GREEN),
        "table": (WOOD, WOOD_LIGHT, WOOD_DARK),
        "door": (WOOD, WOOD_DARK, WHITE),
        "window": (WHITE, OFFWHITE),
        "bookshelf": (WOOD, WOOD_DARK, WHITE),
        "desk": (WOOD, WOOD_LIGHT, WHITE),
        "accent": (WOOD_DARK, BLACK, GREY),
        "glass": (SKY,),
        "clutter": (RED, NAVY, GREEN, MUSTARD, WHITE, BLACK),
    }),
    picture_palette="vivid",
    counts=_frozen({
        "door": (1, 2), "window": (1, 3), "picture": (1, 3), "bed": (0, 1), "sofa": (0, 1),
        "bookshelf": (0, 2), "cabinet": (1, 2), "desk": (0, 1), "table": (1, 1), "chair": (2, 5),
    }),
    table_height=(0.70, 0.78),
    round_table_prob=0.15,
    desk_height=(0.72, 0.78),
    desk_drawer_side="right",
    chair_seat_height=(0.42, 0.48),
    stool_prob=0.05,
    stool_seat_height=(0.45, 0.55),
    bed_height=(0.50, 0.62),
    bed_width=(0.9, 1.6),
    headboard_height=(0.9, 1.2),
    sofa_l_prob=0.05,
    sofa_arms_prob=0.95,
    bookshelf_width=(0.6, 1.0),
    bookshelf_height=(1.8, 2.1),
    books_prob=0.5,
    cabinet_height=(0.75, 1.0),
    cabinet_width=(0.5, 1.2),
    door_offset=(-0.07, -0.03),
    window_frame_width=(0.05, 0.08),
    glass_density_scale=0.15,
    clutter_count=(0, 3),
)

TARGET = DomainStyle(
    name="target",
    points_per_m2=180.0,
    room_size=(3.0, 6.5),
    wall_height=(2.4, 2.8),
    normal_noise_std=0.008,
    iso_noise_std=0.003,
    holes_per_m2=0.12,
    hole_radius=(0.15, 0.45),
    occlusion_margin=0.03,
    point_color_std=12.0,
    instance_color_std=14.0,
    light_tint=(0.93, 1.0, 1.08),  # cool light
    light_tint_std=0.05,
    palettes=_frozen({
        "wall": (SKY, PINK, MINT, GREY_LIGHT),
        "floor": (GREY, GREY_DARK, WOOD_LIGHT),
        "cabinet": (GREY_LIGHT, WHITE, MINT),
        "bed": (GREY, LAVENDER, CREAM),
        "chair": (WOOD_LIGHT, WOOD, MUSTARD),  # chairs take the source tables' wood
        "sofa": (GREY, GREY_LIGHT, PINK, MINT),
        "table": (WHITE, GREY_LIGHT, BLACK),  # tables take the source walls' white
        "door": (GREY, WHITE, SKY),
        "window": (GREY_DARK, BLACK),
        "bookshelf": (WHITE, GREY_LIGHT, BLACK),
        "desk": (WHITE, GREY_LIGHT, WOOD_LIGHT),
        "accent": (GREY_LIGHT, WHITE, BLACK),
        "glass": (GREY_LIGHT,),
        "clutter": (PINK, MINT, SKY, MUSTARD, GREY, WOOD),
    }),
    picture_palette="pastel",
    counts=_frozen({
        "door": (1, 1), "window": (1, 2), "picture": (0, 3), "bed": (0, 1), "sofa": (0, 1),
        "bookshelf": (0, 1), "cabinet": (0, 2), "desk": (0, 1), "table": (1, 2), "chair": (2, 6),
    }),
    table_height=(0.85, 1.05),  # bar-height tables
    round_table_prob=0.7,
    desk_height=(0.70, 0.80),
    desk_drawer_side="either",
    chair_seat_height=(0.44, 0.50),
    stool_prob=0.6,
    stool_seat_height=(0.60, 0.78),
    bed_height=(0.25, 0.38),  # low platform beds
    bed_width=(1.5, 2.0),
    headboard_height=(0.0, 0.7),
    sofa_l_prob=0.6,
    sofa_arms_prob=0.5,
    bookshelf_width=(1.2, 2.0),
    bookshelf_height=(1.1, 1.6),
    books_prob=0.8,
    cabinet_height=(0.8, 2.0),
    cabinet_width=(0.4, 0.9),
    door_offset=(0.0, 0.03),
    window_frame_width=(0.03, 0.05),
    glass_density_scale=0.3,
    clutter_count=(3, 8),
)

DOMAINS: dict[str, DomainStyle] = {"source": SOURCE, "target": TARGET}
