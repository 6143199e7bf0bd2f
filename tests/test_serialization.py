"""Serialization (space-filling-curve codes, orders, shuffling) and patch padding against fixed vectors."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone.patching import cached_patch_padding, patch_padding
from peftbench.backbone.serialization import encode, serialize
from peftbench.backbone.structure import Point
from peftbench.errors import PeftbenchError


# ------------------------------------------------------------------------------ serialization

GRID = torch.tensor([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (2, 0, 0), (300, 5, 7)])
BATCH = torch.tensor([0, 0, 0, 0, 0, 1])
CODES = {
    "z": [4, 2, 1, 7, 32, 201460171],
    "z-trans": [2, 4, 1, 7, 16, 167839181],
    "hilbert": [1, 7, 3, 5, 30, 260631288],
    "hilbert-trans": [7, 1, 3, 5, 8, 198894538],
}


@pytest.mark.parametrize("order", list(CODES))
def test_encode_reference_vectors(order: str) -> None:
    code = encode(GRID, BATCH, depth=9, order=order)
    assert code.dtype == torch.int64
    assert code.tolist() == CODES[order]


@pytest.mark.parametrize("orders", [list(CODES), ["hilbert-trans", "z", "hilbert"], ["z-trans"]])
def test_encode_orders_shares_views_in_any_order(orders: list[str]) -> None:
    """All orders at once (views stacked once, z keys reused by Hilbert) give each order's codes."""
    from peftbench.backbone.serialization import encode_orders

    assert encode_orders(GRID, BATCH, 9, orders).tolist() == [CODES[o] for o in orders]


def test_hilbert_unit_cube() -> None:
    cube = torch.tensor([(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1), (1, 0, 0)])
    assert encode(cube, None, depth=1, order="hilbert").tolist() == list(range(8))


@pytest.mark.parametrize("order", ["hilbert", "hilbert-trans", "z"])
def test_curve_is_bijective_and_hilbert_is_continuous(order: str) -> None:
    depth = 3
    r = torch.arange(2**depth)
    cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    code = encode(cells, None, depth, order)
    assert sorted(code.tolist()) == list(range(8**depth))
    if order.startswith("hilbert"):  # consecutive Hilbert indices are face neighbours
        walk = cells[torch.argsort(code)]
        assert (walk.diff(dim=0).abs().sum(1) == 1).all()


def _point(grid: torch.Tensor, offset: list[int]) -> Point:
    return Point(grid_coord=grid, offset=torch.tensor(offset), feat=torch.zeros(len(grid), 1))


def test_serialize_sets_consistent_order_and_inverse() -> None:
    point = _point(GRID, [5, 6])
    serialize(point, list(CODES), shuffle_orders=False)
    assert point.serialized_depth == 9
    assert point.serialized_code.tolist() == [CODES[o] for o in CODES]
    for order, inverse, code in zip(point.serialized_order, point.serialized_inverse, point.serialized_code):
        assert torch.equal(order[inverse], torch.arange(len(GRID)))
        assert (code[order].diff() > 0).all()


def test_serialize_shuffle_is_reproducible_with_generator() -> None:
    orders = list(CODES)
    perms = []
    for _ in range(2):
        point = _point(GRID, [5, 6])
        serialize(point, orders, shuffle_orders=True, generator=torch.Generator().manual_seed(3))
        rows = [CODES[o] for o in orders]
        perms.append([rows.index(c) for c in point.serialized_code.tolist()])
        for order, inverse in zip(point.serialized_order, point.serialized_inverse):
            assert torch.equal(order[inverse], torch.arange(len(GRID)))
    assert perms[0] == perms[1] and sorted(perms[0]) == [0, 1, 2, 3]
    seen = set()
    for seed in range(60):
        point = _point(GRID, [5, 6])
        serialize(point, orders, shuffle_orders=True, generator=torch.Generator().manual_seed(seed))
        seen.add(tuple(point.serialized_code[:, -1].tolist()))
    assert len(seen) > 1  # the shuffle does shuffle


def test_serialize_rejects_too_deep_grid() -> None:
    with pytest.raises(PeftbenchError, match="depth"):
        serialize(_point(torch.tensor([[70000, 0, 0]]), [1]), ["z"], shuffle_orders=False)


# ------------------------------------------------------------------------------ patch padding


def test_patch_padding_vectors() -> None:
    pad, unpad, cu = patch_padding(torch.tensor([5, 12]), 4)
    assert pad.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 8]
    assert unpad.tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14]
    assert cu.tolist() == [0, 4, 8, 12, 16] and cu.dtype == torch.int32
    assert torch.equal(pad[unpad], torch.arange(12))

    pad, unpad, cu = patch_padding(torch.tensor([3, 11]), 4)
    assert pad.tolist() == list(range(11)) and unpad.tolist() == list(range(11))
    assert cu.tolist() == [0, 3, 7, 11]

    _, _, cu = patch_padding(torch.tensor([8, 10]), 4)
    assert cu.tolist() == [0, 4, 8, 10]


def test_cached_patch_padding_reuses() -> None:
    point = _point(torch.zeros(12, 3, dtype=torch.int32), [5, 12])
    first = cached_patch_padding(point, 4)
    assert cached_patch_padding(point, 4) is first and 4 in point["patch_cache"]
