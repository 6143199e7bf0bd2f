"""Table-driven z-order and Hilbert keys: a few dozen tensor ops per level instead of ~750.

The bitwise encoders (``z_order.py``, ``hilbert.py``: Skilling's algorithm) launch one small
kernel per bit and axis, several thousand per forward pass; on a GPU that host work, not the
arithmetic, is what serialization costs. Here:

* z-order: each axis's bits are spread with a 256-entry table, one byte at a time.
* Hilbert: a finite automaton. Within a cube the curve visits the 8 octants in an order set by
  the cube's orientation state, and each octant's sub-cube has a state set by (state, octant).
  The tables are *derived from* ``hilbert.hilbert_key`` at first use (states = distinct local
  orders of a sub-cube's 4x4x4 cells), so they encode exactly the reference's curve; tests check
  every cell up to depth 6 and random points up to depth 16. The octant of each level is a
  3-bit digit of the z-order key, and two levels are consumed per step (64-entry rows).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from peftbench.backbone.hilbert import hilbert_key

_DERIVE_DEPTH = 10  # deep enough for the breadth-first walk to reach every state (asserted)
MAX_DEPTH = 16


@functools.lru_cache(maxsize=1)
def _spread_table() -> Tensor:
    """``table[b]``: the 8 bits of ``b`` moved to bit positions 0, 3, 6, ..., 21."""
    b = torch.arange(256)
    out = torch.zeros(256, dtype=torch.long)
    for i in range(8):
        out |= ((b >> i) & 1) << (3 * i)
    return out


@functools.lru_cache(maxsize=8)
def _spread_tables(device: str) -> tuple[Tensor, Tensor]:
    """``_spread_table()`` and the axis weights (x above y above z) on ``device``."""
    return _spread_table().to(device), torch.tensor([4, 2, 1], device=device)


def z_order_keys(coord: Tensor, depth: int) -> Tensor:
    """Morton keys of (..., 3) int coords, equal to ``z_order.z_order_key`` (x above y above z).

    The three spread axes share no bit, so weighting and summing them is their bitwise OR.
    """
    table, axis_weights = _spread_tables(str(coord.device))
    c = coord.long() & ((1 << depth) - 1)
    spread = table[c & 255]                    # (..., 3) spread low bytes
    if depth > 8:
        spread = spread | (table[c >> 8] << 24)
    return (spread * axis_weights).sum(-1)


def _local_orders(level: int, cubes: list[tuple[int, int, int]]) -> np.ndarray:
    """(len(cubes), 64): the curve's local 2-level digits of each sub-cube's 4x4x4 cells."""
    d, rest = _DERIVE_DEPTH, _DERIVE_DEPTH - level
    r = torch.arange(4)
    cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(64, 3) << (rest - 2)
    base = torch.tensor(cubes, dtype=torch.long).reshape(-1, 1, 3) << rest
    keys = hilbert_key((base + cells).reshape(-1, 3), d)
    return ((keys >> (3 * (rest - 2))) & 63).reshape(len(cubes), 64).numpy().astype(np.int64)


@functools.lru_cache(maxsize=1)
def _hilbert_automaton() -> tuple[np.ndarray, np.ndarray, dict[bytes, int]]:
    """``(digit[state, octant], child[state, octant], state of each signature)``, breadth-first
    from the whole cube: one representative sub-cube per state, all of a level in one call."""
    states: dict[bytes, int] = {}
    digit: dict[tuple[int, int], int] = {}
    child: dict[tuple[int, int], int] = {}
    frontier = [(0, 0, 0)]
    states[_local_orders(0, frontier)[0].tobytes()] = 0
    for level in range(_DERIVE_DEPTH - 2):
        if not frontier:
            break
        kids = [(2 * x + (o >> 2), 2 * y + ((o >> 1) & 1), 2 * z + (o & 1)) for x, y, z in frontier for o in range(8)]
        here, below = _local_orders(level, frontier), _local_orders(level + 1, kids)
        frontier = []
        for i, local in enumerate(here):
            s = states[local.tobytes()]
            for octant in range(8):
                a, b, c = octant >> 2, (octant >> 1) & 1, octant & 1
                digit[(s, octant)] = int(local.reshape(4, 4, 4)[2 * a, 2 * b, 2 * c]) >> 3
                sig = below[i * 8 + octant].tobytes()
                if sig not in states:
                    states[sig] = len(states)
                    frontier.append(kids[i * 8 + octant])
                child[(s, octant)] = states[sig]
    if frontier:
        raise AssertionError("Hilbert automaton: derive on a deeper grid")
    k = len(states)
    digit_table = np.zeros((k, 8), np.int64)
    child_table = np.zeros((k, 8), np.int64)
    for (s, o), v in digit.items():
        digit_table[s, o] = v
    for (s, o), v in child.items():
        child_table[s, o] = v
    return digit_table, child_table, states


@functools.lru_cache(maxsize=MAX_DEPTH + 1)
def _initial_state(depth: int) -> int:
    """The state of the whole cube at ``depth`` (the curve's top orientation may depend on it)."""
    digit_table, _, states = _hilbert_automaton()
    if depth >= 2:
        r = torch.arange(4) << (depth - 2)
        cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        sig = ((hilbert_key(cells, depth) >> (3 * (depth - 2))) & 63).numpy().astype(np.int64).tobytes()
        return states[sig]
    octants = torch.tensor([(o >> 2, (o >> 1) & 1, o & 1) for o in range(8)])
    top = hilbert_key(octants, 1).numpy()
    return next(s for s in range(len(digit_table)) if (digit_table[s] == top).all())


@functools.lru_cache(maxsize=8)
def _pair_tables(device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Single-level and two-level tables on ``device``, flattened to ``state * width + octants``."""
    digit, child, _ = _hilbert_automaton()
    k = len(digit)
    pair_digit = np.zeros((k, 64), np.int64)
    pair_child = np.zeros((k, 64), np.int64)
    for s in range(k):
        for hi in range(8):
            mid = child[s, hi]
            for lo in range(8):
                pair_digit[s, hi * 8 + lo] = digit[s, hi] * 8 + digit[mid, lo]
                pair_child[s, hi * 8 + lo] = child[mid, lo]
    return tuple(torch.from_numpy(t).reshape(-1).to(device) for t in (digit, child, pair_digit, pair_child))


def hilbert_keys(coord: Tensor, depth: int, octants: Tensor | None = None) -> Tensor:
    """Hilbert keys of (..., 3) int coords, equal to ``hilbert.hilbert_key`` at ``depth``;
    ``octants``: ``z_order_keys(coord, depth)`` when the caller has them already."""
    digit, child, pair_digit, pair_child = _pair_tables(str(coord.device))
    if octants is None:
        octants = z_order_keys(coord, depth)  # level l's octant = bits 3l..3l+2
    state = torch.full_like(octants, _initial_state(depth))
    key = torch.zeros_like(octants)
    level = depth
    if level % 2:  # odd depth: one single level first, then pairs
        level -= 1
        idx = state * 8 + ((octants >> (3 * level)) & 7)
        key, state = digit[idx], child[idx]
    while level > 0:
        level -= 2
        idx = state * 64 + ((octants >> (3 * level)) & 63)
        key = (key << 6) | pair_digit[idx]
        state = pair_child[idx]
    return key
