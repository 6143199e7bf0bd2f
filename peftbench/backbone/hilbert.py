"""Hilbert keys for 3-D integer grid coordinates (Skilling's transpose algorithm).

J. Skilling, "Programming the Hilbert curve", AIP Conf. Proc. 707 (2004): the axes are
turned into the "transposed" Hilbert index in place, then its bits are read out
most-significant level first, axis 0 (x) first within each level.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axes_to_transpose(axes: list[Tensor], num_bits: int) -> list[Tensor]:
    """Skilling's AxestoTranspose on per-axis int64 tensors (vectorised over points)."""
    x = [a.clone() for a in axes]
    n = len(x)
    # Inverse undo: from the top level down, invert or exchange the lower bits so that
    # every sub-cube is entered and left in the canonical orientation.
    q = 1 << (num_bits - 1)
    while q > 1:
        p = q - 1
        for i in range(n):
            bit_on = (x[i] & q) != 0
            # bit on: invert the low bits of axis 0
            inverted = x[0] ^ p
            # bit off: exchange the low bits of axis 0 and axis i
            t = (x[0] ^ x[i]) & p
            if i == 0:
                x[0] = torch.where(bit_on, inverted, x[0])
            else:
                x[i] = torch.where(bit_on, x[i], x[i] ^ t)
                x[0] = torch.where(bit_on, inverted, x[0] ^ t)
        q >>= 1
    # Gray decode of the interleaved bit string = prefix XOR: first across axes
    # within a level, then carry the last axis of each higher level down.
    for i in range(1, n):
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = 1 << (num_bits - 1)
    while q > 1:
        t = torch.where((x[n - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    return [xi ^ t for xi in x]


def hilbert_key(grid_coord: Tensor, depth: int) -> Tensor:
    """Hilbert index (``3*depth`` bits, int64) of each row of ``grid_coord`` (N, 3)."""
    coord = grid_coord.long()
    mask = (1 << depth) - 1
    axes = [coord[:, d] & mask for d in range(3)]
    transposed = _axes_to_transpose(axes, depth)
    key = torch.zeros_like(axes[0])
    # Read bits level by level (MSB first), x before y before z within a level.
    for level in range(depth - 1, -1, -1):
        for d in range(3):
            key = (key << 1) | ((transposed[d] >> level) & 1)
    return key
