"""Sonata's test protocol: 13-augmentation fragment voting covers every point, an oracle scores
100 % mIoU, S3DIS 6-fold sums confusion matrices (CPU, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from peftbench.data.datasets import DATASET_KINDS, S3DIS_AREAS
from peftbench.data.grid_sample import voxelize
from peftbench.data.sources import build_test_set
from peftbench.data.transforms import CenterShift
from peftbench.errors import PeftbenchError
from peftbench.train.metrics import confusion_matrix, scores_from_confusion
from peftbench.train.voting import RotateScale, combine_folds, evaluate_voting, test_augmentations, vote_scene

K = 13
COLOR_STEP = 15  # the oracle's colour code: red = label * 15


class Constant(nn.Module):
    """Every point, class 0 with (numerically) probability 1: summed probabilities count passes."""

    def forward(self, data: dict, generator=None) -> torch.Tensor:
        logits = torch.zeros(len(data["coord"]), K)
        logits[:, 0] = 60.0
        return logits


class Oracle(nn.Module):
    """Reads the label back from the colour (feat = coord, colour/255, normal): one-hot logits."""

    def forward(self, data: dict, generator=None) -> torch.Tensor:
        label = torch.round(data["feat"][:, 3] * 255 / COLOR_STEP).long().clamp(0, K - 1)
        return nn.functional.one_hot(label, K).float() * 10


def lattice_scene(seed: int, shape=(14, 10, 6), spacing: float = 0.015) -> dict:
    """Points on a 1.5 cm lattice (never two in one 1 cm voxel, up to 8 in a 2 cm one), jittered
    origin, random labels (all K present, some -1) encoded in the colour."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    keep = rng.random(len(grid)) < 0.8
    coord = (grid[keep] * spacing + rng.uniform(0, 1, 3)).astype(np.float32)
    n = len(coord)
    label = rng.integers(0, K, n)
    label[:K] = np.arange(K)
    label[rng.random(n) < 0.05] = -1
    color = np.zeros((n, 3), np.uint8)
    color[:, 0] = np.where(label >= 0, label, 0) * COLOR_STEP
    color[:, 1:] = rng.integers(0, 256, (n, 2))
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    return {"coord": coord, "color": color, "normal": normal, "segment": label}


def hits_of(probs: torch.Tensor) -> np.ndarray:
    """Passes per point: each pass adds a probability vector summing to 1."""
    total = probs.sum(dim=1).numpy()
    hits = np.rint(total).astype(np.int64)
    assert np.allclose(total, hits, atol=1e-3)
    return hits


def test_thirteen_augmentations():
    augs = test_augmentations()
    assert len(augs) == 13 and sum(a.flip for a in augs) == 1
    assert sorted((a.angle, a.scale) for a in augs if not a.flip) == sorted(
        (a, s) for a in (0.0, 0.5, 1.0, 1.5) for s in (0.95, 1.0, 1.05))
    data = {"coord": np.array([[1.0, 0.0, 0.5]], np.float32), "normal": np.array([[1.0, 0.0, 0.0]], np.float32)}
    quarter = RotateScale(0.5, 1.05)(data)
    assert np.allclose(quarter["coord"], [[0.0, 1.05, 0.525]], atol=1e-6)
    assert np.allclose(quarter["normal"], [[0.0, 1.0, 0.0]], atol=1e-6)
    flip = RotateScale(flip=True)({"coord": np.array([[1.0, 2.0, 3.0]], np.float32)})
    assert np.allclose(flip["coord"], [[-1.0, -2.0, 3.0]])


@pytest.mark.parametrize("aug", [0, 5, 12])
def test_each_pass_covers_every_point(aug):
    """One augmentation, M fragments: a voxel of c points gets exactly M passes in total, each of its
    points floor(M/c) or ceil(M/c) of them (so every point at least once), and nothing else."""
    data = lattice_scene(1)
    augmentation = test_augmentations()[aug]
    probs = vote_scene(Constant(), data, K, grid_size=0.02, augmentations=[augmentation],
                       rng=np.random.default_rng(0))
    hits = hits_of(probs)
    coord = augmentation(CenterShift(apply_z=True)({"coord": data["coord"]}, None))["coord"]
    _, voxel, _, _ = voxelize(coord, 0.02)
    count = np.bincount(voxel)
    fragments = int(count.max())
    assert fragments >= 4  # the test really has several fragments
    assert np.array_equal(np.bincount(voxel, weights=hits).astype(np.int64), np.full(len(count), fragments))
    c = count[voxel]
    assert ((hits == fragments // c) | (hits == -(-fragments // c))).all()
    assert hits.min() >= 1 and hits.sum() == fragments * len(count)


def test_all_thirteen_passes_and_prevoxelisation():
    data = lattice_scene(2)
    probs = vote_scene(Constant(), data, K, grid_size=0.02, rng=np.random.default_rng(0))
    hits = hits_of(probs)
    expected_total = 0
    for augmentation in test_augmentations():
        coord = augmentation(CenterShift(apply_z=True)({"coord": data["coord"]}, None))["coord"]
        _, voxel, _, _ = voxelize(coord, 0.02)
        expected_total += int(np.bincount(voxel).max()) * int(voxel.max() + 1)
    assert hits.sum() == expected_total and hits.min() >= 13
    # Pre-voxelisation at 3 cm merges lattice points; every original point still gets its voxel's votes.
    merged = vote_scene(Constant(), data, K, grid_size=0.05, prevoxel=0.03, rng=np.random.default_rng(0))
    assert merged.shape == (len(data["coord"]), K) and hits_of(merged).min() >= 13
    shifted = CenterShift(apply_z=True)({"coord": data["coord"]}, None)["coord"]
    _, cell, _, _ = voxelize(shifted, 0.03)
    for v in np.unique(cell)[:20]:  # points of one pre-voxel share one prediction
        rows = merged[torch.from_numpy(cell == v)]
        assert torch.allclose(rows, rows[0].expand_as(rows))


@pytest.mark.parametrize("per_pass", [3, 100])
def test_fragments_in_one_pass_vote_as_one_at_a_time(per_pass):
    """Several fragments per forward (the last pass short or all of them at once): the same summed
    probabilities as one forward per fragment, with a real PTv3 (no order shuffle, as one-scene runs)."""
    from peftbench.backbone import backbone_config
    from peftbench.model import Segmentor
    from tests.conftest import MICRO

    torch.manual_seed(0)
    model = Segmentor(backbone_config("tiny", **{**MICRO, "shuffle_orders": False}), K).eval()
    calls = []
    forward = model.forward
    model.forward = lambda data, generator=None: calls.append(len(data["offset"])) or forward(data, generator)
    data = lattice_scene(5, shape=(8, 7, 4))
    augmentations = test_augmentations()[:3]
    one = vote_scene(model, data, K, grid_size=0.02, augmentations=augmentations, rng=np.random.default_rng(0))
    passes_one, calls[:] = list(calls), []
    grouped = vote_scene(model, data, K, grid_size=0.02, augmentations=augmentations, rng=np.random.default_rng(0),
                         fragments_per_pass=per_pass)
    assert set(passes_one) == {1} and sum(calls) == len(passes_one) and max(calls) == min(per_pass, len(passes_one))
    assert len(calls) < len(passes_one)
    torch.testing.assert_close(grouped, one, atol=1e-4, rtol=1e-4)


class Scenes:
    def __init__(self, scenes: list[dict]) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict:
        return self.scenes[i]


@pytest.mark.parametrize("prevoxel", [None, 0.01])
def test_oracle_scores_full_marks_and_a_wrong_model_does_not(prevoxel):
    scenes = Scenes([lattice_scene(3, shape=(10, 8, 5)), lattice_scene(4, shape=(9, 9, 4))])
    scores, confusion = evaluate_voting(Oracle(), scenes, K, grid_size=0.02, prevoxel=prevoxel, seed=0)
    assert scores["mIoU"] == pytest.approx(1.0) and scores["allAcc"] == pytest.approx(1.0)
    assert confusion.sum() == sum(int((s["segment"] >= 0).sum()) for s in scenes.scenes)
    wrong, _ = evaluate_voting(Constant(), scenes, K, grid_size=0.02, prevoxel=prevoxel, seed=0)
    assert wrong["mIoU"] < 0.2


def test_voting_on_an_s3dis_folder(tmp_path):
    """evaluate_voting over the reader's raw scenes (S3DIS layout, the recipe's 1 cm pre-voxelisation)."""
    for k, area in enumerate(S3DIS_AREAS):
        scene = lattice_scene(10 + k, shape=(8, 8, 4))
        folder = tmp_path / area / "room_1"
        folder.mkdir(parents=True)
        for key in ("coord", "color", "normal"):
            np.save(folder / f"{key}.npy", scene[key])
        np.save(folder / "segment.npy", scene["segment"][:, None].astype(np.int16))
    spec = {"name": "s3dis", "root": str(tmp_path), "val_split": "Area_5"}
    dataset = build_test_set(spec)
    prevoxel = DATASET_KINDS["s3dis"].recipe.test_prevoxel
    scores, confusion = evaluate_voting(Oracle(), dataset, K, grid_size=0.02, prevoxel=prevoxel)
    assert prevoxel == 0.01 and scores["mIoU"] == pytest.approx(1.0)
    assert confusion.sum() == int((np.load(tmp_path / "Area_5" / "room_1" / "segment.npy") >= 0).sum())


def test_six_fold_sums_intersection_union_target():
    rng = np.random.default_rng(0)
    folds = {}
    for area in S3DIS_AREAS:
        pred, target = torch.from_numpy(rng.integers(0, K, 500)), torch.from_numpy(rng.integers(-1, K, 500))
        folds[area] = (confusion_matrix(pred, target, K), pred, target)
    scores, total = combine_folds({a: f[0] for a, f in folds.items()})
    pred = torch.cat([f[1] for f in folds.values()])
    target = torch.cat([f[2] for f in folds.values()])
    valid = target >= 0
    inter = torch.bincount(target[valid][pred[valid] == target[valid]], minlength=K).double()
    union = torch.bincount(pred[valid], minlength=K) + torch.bincount(target[valid], minlength=K) - inter
    assert scores["mIoU"] == pytest.approx(float((inter / (union + 1e-10)).mean()))
    assert scores == scores_from_confusion(total)
    # not the mean of the per-fold mIoUs
    mean_of_folds = np.mean([scores_from_confusion(f[0])["mIoU"] for f in folds.values()])
    assert not math.isclose(scores["mIoU"], mean_of_folds, rel_tol=1e-9)
    with pytest.raises(PeftbenchError, match=r"missing \['Area_6'\]"):
        combine_folds({a: f[0] for a, f in folds.items() if a != "Area_6"})
    with pytest.raises(PeftbenchError, match="one shape"):
        combine_folds([np.zeros((K, K)), np.zeros((K - 1, K - 1))])


def test_fragments_per_pass_is_a_whole_number_of_fragments():
    from peftbench.train.config import TrainConfig

    assert TrainConfig(test_fragments_per_pass=8).test_fragments_per_pass == 8
    with pytest.raises(PeftbenchError, match="test_fragments_per_pass must be an integer >= 1"):
        TrainConfig(test_fragments_per_pass=0)


class OutOfMemoryAbove(nn.Module):
    """``Constant`` that runs out of GPU memory (a stand-in) on more than ``limit`` fragments a pass."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, []

    def forward(self, data: dict, generator=None) -> torch.Tensor:
        self.calls.append(len(data["offset"]))
        if len(data["offset"]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return Constant()(data)


def test_a_voting_pass_out_of_gpu_memory_is_split_in_halves():
    """8 fragments a pass on a model that fits 2: the first pass splits 8 -> 4 -> 2, later passes
    start at 2, and every point gets the votes of one fragment a pass."""
    data = lattice_scene(1)
    augmentations = test_augmentations()[:3]
    one = vote_scene(Constant(), data, K, grid_size=0.02, augmentations=augmentations, rng=np.random.default_rng(0))
    model = OutOfMemoryAbove(2)
    with pytest.warns(RuntimeWarning, match="out of GPU memory on 8 voting fragments in one forward; going on with 4"):
        split = vote_scene(model, data, K, grid_size=0.02, augmentations=augmentations, rng=np.random.default_rng(0),
                           fragments_per_pass=8)
    assert model.calls[:3] == [8, 4, 2] and 8 not in model.calls[3:] and 4 not in model.calls[3:]
    assert torch.equal(split, one)
    with pytest.raises(PeftbenchError, match="out of GPU memory on one voting fragment of .* more memory"), \
            pytest.warns(RuntimeWarning, match="going on with 2"):
        vote_scene(OutOfMemoryAbove(0), data, K, grid_size=0.02, augmentations=augmentations,
                   rng=np.random.default_rng(0), fragments_per_pass=4)
