"""Patch layout for attention: the reference's patches, with every full patch in one block.

Attention is independent per patch, so the slots of the padded sequence may be permuted freely
as long as each patch keeps its members. ``PatchLayout`` keeps the reference flash-path patches
(``patching.patch_padding``: a scene with n > K points padded to ceil(n/K)*K by repeating the
points of the patch before; a scene with n <= K one short patch) but stores the full patches of
all scenes first, contiguously, then the short ones. The full patches are then a plain
``view(F, K, ...)`` of the gathered rows: one fused SDPA call with no gather, scatter or host
round-trip per block. The sizes are read from the host once per level (one sync), not per block.

Rows move between points and slots with ``to_slots`` / ``from_slots``, whose backwards gather
with the inverse map instead of ``index_select``'s backward (a zero fill and an ``index_add`` of
every row, with atomic float16 adds on CUDA): each point has one own slot, and only the padding
slots (``repeats``, fewer than ``k`` a scene) repeat a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from peftbench.backbone.function_apply import apply
from peftbench.backbone.structure import Point


@dataclass
class PatchLayout:
    """Slots of one level for patch size ``k``.

    ``pad``: slot -> original point; ``unpad``: original point -> its slot. Slots
    ``[0, num_full*k)`` are ``num_full`` full patches; ``shorts`` lists ``(start, length)`` of
    the short patches after them (scenes with fewer than ``k`` points). ``repeats``: the padding
    slots, whose point has its own slot elsewhere.
    """

    k: int
    pad: Tensor
    unpad: Tensor
    num_full: int
    shorts: list[tuple[int, int]]
    repeats: Tensor
    orders: dict[int, "SlotMap"] = field(default_factory=dict)

    def order(self, point: Point, order_index: int) -> "SlotMap":
        """The slot map of one serialization order, built once per level and order."""
        if order_index not in self.orders:
            gather = point.serialized_order[order_index].index_select(0, self.pad)
            scatter = self.unpad.index_select(0, point.serialized_inverse[order_index])
            self.orders[order_index] = SlotMap(gather, scatter, self.repeats, gather.index_select(0, self.repeats))
        return self.orders[order_index]


@dataclass
class SlotMap:
    """Points <-> slots of one order: ``gather`` (slot -> point), ``scatter`` (point -> its own slot),
    ``repeats`` (padding slots) and ``repeated`` (their points)."""

    gather: Tensor
    scatter: Tensor
    repeats: Tensor
    repeated: Tensor

    def to_slots(self, rows: Tensor) -> Tensor:
        """``rows.index_select(0, gather)``."""
        return apply(_ToSlots, rows, self)

    def from_slots(self, rows: Tensor) -> Tensor:
        """``rows.index_select(0, scatter)``."""
        return apply(_FromSlots, rows, self)


class _ToSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, slots: SlotMap) -> Tensor:  # type: ignore[override]
        ctx.slots = slots
        return rows.index_select(0, slots.gather)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # a point's gradient: its own slot's, plus its padding repeat's if it has one
        slots = ctx.slots
        d_rows = grad.index_select(0, slots.scatter)
        if len(slots.repeats):
            d_rows.index_add_(0, slots.repeated, grad.index_select(0, slots.repeats))
        return d_rows, None


class _FromSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, slots: SlotMap) -> Tensor:  # type: ignore[override]
        ctx.slots = slots
        return rows.index_select(0, slots.scatter)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # each slot reads its point's gradient; a padding slot was not read back: zero
        slots = ctx.slots
        d_rows = grad.index_select(0, slots.gather)
        if len(slots.repeats):
            d_rows.index_fill_(0, slots.repeats, 0)
        return d_rows, None


def patch_layout(counts: list[int], k: int, device: torch.device | str) -> PatchLayout:
    """The layout for scenes of ``counts`` points (host ints) and patch size ``k``."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    long_scenes = [i for i, n in enumerate(counts) if n >= k]
    short_scenes = [i for i, n in enumerate(counts) if 0 < n < k]
    pads, repeats, unpad_shift, slot = [], [], [0] * len(counts), 0
    for i in long_scenes:
        n, padded = counts[i], -(-counts[i] // k) * k
        local = torch.arange(padded, device=device)
        # Slot j reads point j, or point j-K when it falls past the n real points (reference rule).
        pads.append(starts[i] + local - k * (local >= n).long())
        repeats.append(torch.arange(slot + n, slot + padded, device=device))
        unpad_shift[i] = slot - starts[i]
        slot += padded
    num_full, shorts = slot // k, []
    for i in short_scenes:
        pads.append(starts[i] + torch.arange(counts[i], device=device))
        unpad_shift[i] = slot - starts[i]
        shorts.append((slot, counts[i]))
        slot += counts[i]
    total = sum(counts)
    pad = torch.cat(pads) if pads else torch.zeros(0, dtype=torch.long, device=device)
    shift = torch.tensor(unpad_shift, dtype=torch.long).to(device, non_blocking=True)
    scene = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                    torch.tensor(counts).to(device, non_blocking=True), output_size=total)
    unpad = torch.arange(total, device=device) + shift.index_select(0, scene)
    repeats = torch.cat(repeats) if repeats else torch.zeros(0, dtype=torch.long, device=device)
    return PatchLayout(k, pad, unpad, num_full, shorts, repeats)


def scene_counts(point: Point) -> list[int]:
    """Points per scene as host ints, read once per level (the one sync) and kept on the point."""
    if "scene_counts" not in point:
        offset = point["offset"].tolist()
        point["scene_counts"] = [b - a for a, b in zip([0] + offset[:-1], offset)]
    return point["scene_counts"]


def cached_patch_layout(point: Point, k: int) -> PatchLayout:
    """``patch_layout`` memoised in ``point["patch_layouts"][k]`` (shared by the level's blocks)."""
    cache = point.setdefault("patch_layouts", {})
    if k not in cache:
        cache[k] = patch_layout(scene_counts(point), k, point["offset"].device)
    return cache[k]
