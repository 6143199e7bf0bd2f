"""Morton (z-order) keys for 3-D integer grid coordinates."""

from __future__ import annotations

import torch
from torch import Tensor


def z_order_key(grid_coord: Tensor, depth: int) -> Tensor:
    """Interleave the low ``depth`` bits of x, y, z into one int64 key per point.

    Bit i of x goes to bit 3i+2, of y to 3i+1, of z to 3i (x most significant within
    each triplet), as the reference LUT encoder does for depth <= 16.
    """
    coord = grid_coord.long()
    x, y, z = coord[:, 0], coord[:, 1], coord[:, 2]
    key = torch.zeros_like(x)
    # A loop over bits (<= 16), never over points: stays vectorised on any device.
    for i in range(depth):
        key |= ((x >> i) & 1) << (3 * i + 2)
        key |= ((y >> i) & 1) << (3 * i + 1)
        key |= ((z >> i) & 1) << (3 * i)
    return key
