"""Space-filling-curve serialization of a point batch (PTv3 ``Point.serialization``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from peftbench.backbone.curve_tables import hilbert_keys, z_order_keys
from peftbench.backbone.structure import Point
from peftbench.errors import PeftbenchError

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16


def encode(grid_coord: Tensor, batch: Tensor | None, depth: int, order: str) -> Tensor:
    """int64 curve codes ``batch << (3*depth) | key`` for one ``order``.

    The batch index in the high bits keeps scenes contiguous after sorting.
    """
    return encode_orders(grid_coord, batch, depth, [order])[0]


def encode_orders(grid_coord: Tensor, batch: Tensor | None, depth: int, orders: Sequence[str]) -> Tensor:
    """(len(orders), N) codes. The views (plain, x/y swapped) are stacked once, and their z-order
    keys serve both the z orders and the Hilbert encoder (which reads its octants from them).

    Keys come from the table-driven encoders (``curve_tables``), equal to the bitwise
    ``z_order.z_order_key`` / ``hilbert.hilbert_key`` they are derived from.
    """
    bad = [o for o in orders if o not in ORDERS]
    if bad:
        raise PeftbenchError(f"unknown serialization order {bad[0]!r}; choose from {ORDERS}")
    coord = grid_coord.long()
    trans = sorted({o.endswith("-trans") for o in orders})                  # which views are needed
    views = torch.stack([coord.index_select(1, _xy_swap(str(coord.device))) if t else coord
                         for t in trans])                                     # "-trans": x and y swapped
    z = z_order_keys(views, depth)
    hilbert = hilbert_keys(views, depth, octants=z) if any(o.startswith("hilbert") for o in orders) else None
    code = torch.stack([(z if o.startswith("z") else hilbert)[trans.index(o.endswith("-trans"))] for o in orders])
    if batch is not None:
        code = (batch.long() << (3 * depth)) | code
    return code


@functools.lru_cache(maxsize=8)
def _xy_swap(device: str) -> Tensor:
    """Column index (1, 0, 2) on ``device``: a list index would copy it there, blocking, every call."""
    return torch.tensor([1, 0, 2], device=device)


def serialization_depth(max_coord: int, num_scenes: int) -> int:
    """Bits per axis needed for grid coordinates up to ``max_coord``; validated so codes fit in int64."""
    depth = int(max_coord + 1).bit_length()
    if depth > MAX_DEPTH:
        raise PeftbenchError(
            f"grid_coord max {max_coord} needs depth {depth} > {MAX_DEPTH}: "
            "use a coarser grid_size or crop the scene"
        )
    if 3 * depth + int(num_scenes).bit_length() > 63:
        raise PeftbenchError(
            f"serialization codes overflow int64 (depth {depth}, {num_scenes} scenes): "
            "use fewer scenes per batch or a coarser grid"
        )
    return depth


def serialize(
    point: Point,
    orders: Sequence[str],
    shuffle_orders: bool,
    generator: torch.Generator | None = None,
) -> None:
    """Set ``serialized_{depth,code,order,inverse}`` on ``point`` (k orders x N points).

    With ``shuffle_orders`` the k orders are permuted by ``randperm`` (the reference does
    this at every level, also in eval; pass a seeded ``generator`` for reproducibility).
    """
    grid_coord = point["grid_coord"]
    batch = point["batch"]
    depth = serialization_depth(max(point.grid_max()), point.num_scenes)
    with torch.no_grad():
        code = encode_orders(grid_coord, batch, depth, orders)
        order = torch.argsort(code, dim=1)
        inverse = _inverse_permutation(order)
        if shuffle_orders:
            gen_device = generator.device if generator is not None else "cpu"
            perm = torch.randperm(len(orders), generator=generator, device=gen_device)
            if perm.device.type == "cpu":  # rows by host ints: no blocking copy of the index to the GPU
                code, order, inverse = (torch.stack([t[i] for i in perm.tolist()]) for t in (code, order, inverse))
            else:
                code, order, inverse = code[perm], order[perm], inverse[perm]
    point["serialized_depth"] = depth
    point["serialized_code"] = code
    point["serialized_order"] = order
    point["serialized_inverse"] = inverse


def _inverse_permutation(order: Tensor) -> Tensor:
    """Row-wise inverse of (k, N) permutations: ``order[i][inverse[i]] == arange(N)``."""
    arange = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, arange)
