"""Shared fixtures: a tiny PTv3 and a small random point batch (two scenes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors through its interpreter (read at import)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # setup.sh installs it beside the venv, for the tests only
    TRITON_FOR_TESTS = Path(__file__).resolve().parents[1] / ".venv" / "triton-tests"
    if TRITON_FOR_TESTS.is_dir():
        sys.path.append(str(TRITON_FOR_TESTS))

from peftbench.backbone import backbone_config

MICRO = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 16, 16, 32, 32), enc_num_head=(1, 1, 1, 2, 2),
             enc_patch_size=(32, 32, 32, 32, 32), drop_path=0.0)


@pytest.fixture
def micro_config() -> dict:
    """Sonata's structure (5 stages, 4 orders, 9 input channels) at a test-sized width."""
    return backbone_config("tiny", **MICRO)


def random_scene_batch(sizes=(300, 220), grid=12, seed=0) -> dict:
    """Unique voxels per scene (as after GridSample), features coord+color+normal."""
    gen = torch.Generator().manual_seed(seed)
    coords, grids = [], []
    for n in sizes:
        flat = torch.randperm(grid ** 3, generator=gen)[:n]
        g = torch.stack([flat // grid ** 2, (flat // grid) % grid, flat % grid], dim=1)
        grids.append(g.int())
        coords.append(g.float() * 0.05 + torch.rand(n, 3, generator=gen) * 0.05)
    n = sum(sizes)
    offset = torch.cumsum(torch.tensor(sizes), 0)
    return {"coord": torch.cat(coords), "grid_coord": torch.cat(grids), "offset": offset, "grid_size": 0.05,
            "feat": torch.randn(n, 9, generator=gen), "segment": torch.randint(0, 5, (n,), generator=gen)}


@pytest.fixture
def scene_batch() -> dict:
    return random_scene_batch()


def micro_suite(name: str, train_scenes: int = 2, **keys) -> dict:
    """A suite on the micro backbone (random init) and a tiny synthetic target domain; ``keys`` replace
    top-level sections (methods, seeds, train, ...)."""
    return {"name": name,
            "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in MICRO.items()}},
            "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt",
                          "scenes": {"train": train_scenes, "val": 1}, "points_per_m2": 15}],
            "methods": ["linear"], "seeds": [0], "train": {"epochs": 2, "batch_size": 2, "grid_size": 0.1}, **keys}
