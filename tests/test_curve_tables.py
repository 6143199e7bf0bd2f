"""Table-driven curve keys equal the bitwise (reference) encoders on every cell and random points."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone.curve_tables import _hilbert_automaton, hilbert_keys, z_order_keys
from peftbench.backbone.hilbert import hilbert_key
from peftbench.backbone.z_order import z_order_key


def test_automaton_has_the_24_orientations_of_the_3d_curve() -> None:
    digit, child, states = _hilbert_automaton()
    assert len(states) == 24 and digit.shape == child.shape == (24, 8)
    assert all(sorted(row) == list(range(8)) for row in digit.tolist())  # each state visits 8 octants once


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_every_cell(depth: int) -> None:
    r = torch.arange(1 << depth)
    cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    assert torch.equal(hilbert_keys(cells, depth), hilbert_key(cells, depth))
    assert torch.equal(z_order_keys(cells, depth), z_order_key(cells, depth))


@pytest.mark.parametrize("depth", range(6, 17))
def test_random_points_up_to_depth_16(depth: int) -> None:
    coord = torch.randint(0, 1 << depth, (3000, 3), generator=torch.Generator().manual_seed(depth))
    assert torch.equal(hilbert_keys(coord, depth), hilbert_key(coord, depth))
    assert torch.equal(z_order_keys(coord, depth), z_order_key(coord, depth))
    stacked = torch.stack([coord, coord[:, [1, 0, 2]]])  # several orders in one call
    assert torch.equal(hilbert_keys(stacked, depth)[1], hilbert_key(coord[:, [1, 0, 2]], depth))
