"""Sonata's transforms: grid sampling, augmentations, colour, elastic distortion, sphere crop, the train and
val chains (CPU, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftbench.data import (
    CenterShift,
    ChromaticAutoContrast,
    ChromaticJitter,
    ChromaticTranslation,
    Collect,
    Compose,
    ElasticDistortion,
    GridSample,
    NormalizeColor,
    RandomDropout,
    RandomFlip,
    RandomRotate,
    RandomScale,
    SphereCrop,
    ToTensor,
    sonata_train_transform,
    sonata_val_transform,
)
from peftbench.data.transform_base import bounds
from peftbench.data.transforms import _rotated
from peftbench.errors import PeftbenchError
from tests.test_data import scene, voxel_keys


def point_cloud(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.random((n, 3)).astype(np.float32) * [2.0, 1.5, 1.0]
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return {"coord": coord.astype(np.float32), "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "normal": normal, "segment": rng.integers(0, 5, n), "instance": np.arange(n), "name": "pc"}


def test_grid_sample_train_keeps_one_point_per_voxel_and_inverse_maps_into_it():
    data, g = point_cloud(), 0.1
    out = GridSample(g, mode="train", return_grid_coord=True, return_inverse=True)(data, np.random.default_rng(0))
    grid_in = np.floor(data["coord"] / g).astype(np.int64)
    grid_in -= grid_in.min(0)
    n_voxels = len(np.unique(voxel_keys(grid_in)))
    assert len(out["coord"]) == n_voxels < len(data["coord"])
    assert len(np.unique(voxel_keys(out["grid_coord"]))) == n_voxels
    kept = out["instance"]  # original index of every kept point
    assert np.all(np.diff(kept) > 0) and np.array_equal(out["coord"], data["coord"][kept])
    assert np.array_equal(out["grid_coord"], grid_in[kept])
    assert out["inverse"].shape == (len(data["coord"]),)
    assert np.array_equal(out["grid_coord"][out["inverse"]], grid_in)  # every point -> a kept point of its voxel
    other = GridSample(g, mode="train")(data, np.random.default_rng(1))
    assert not np.array_equal(other["instance"], kept)  # the kept point per voxel is random


def test_grid_sample_test_fragments_cover_every_point_once():
    data, g = point_cloud(3000), 0.15
    fragments = GridSample(g, mode="test", return_grid_coord=True)(data, np.random.default_rng(0))
    grid_in = np.floor(data["coord"] / g).astype(np.int64)
    grid_in -= grid_in.min(0)
    keys = voxel_keys(grid_in)
    voxels, voxel_of, count = np.unique(keys, return_inverse=True, return_counts=True)
    assert len(fragments) == count.max()
    primary, by_voxel = [], np.zeros((len(fragments), len(voxels)), dtype=np.int64)
    for i, frag in enumerate(fragments):
        index = frag["index"]
        assert len(index) == len(voxels)  # one point per voxel in every fragment
        assert np.array_equal(np.sort(voxel_of[index]), np.arange(len(voxels)))
        assert np.array_equal(frag["coord"], data["coord"][index]) and np.array_equal(frag["grid_coord"], grid_in[index])
        primary.append(index[count[voxel_of[index]] > i])  # voxel still has unseen points -> a new point
        by_voxel[i, voxel_of[index]] = index
    # fillers cycle: a voxel of c points shows in fragment i the point it showed in fragment i % c
    cycle = np.arange(len(fragments))[:, None] % count[None, :]
    assert np.array_equal(by_voxel, np.take_along_axis(by_voxel, cycle, axis=0))
    assert (count > 2).any() and len(fragments) > 3
    primary = np.concatenate(primary)
    assert np.array_equal(np.sort(primary), np.arange(len(keys)))  # exactly once before the fillers
    assert np.array_equal(np.unique(np.concatenate([f["index"] for f in fragments])), np.arange(len(keys)))
    reshuffled = GridSample(g, mode="test")(data, np.random.default_rng(1))
    assert not np.array_equal(reshuffled[0]["index"], fragments[0]["index"])  # random order within a voxel
    chain = Compose([GridSample(g, mode="test"), CenterShift(apply_z=False), ToTensor(),
                     Collect(keys=("coord", "grid_coord", "index"))])
    collected = chain(data, np.random.default_rng(0))  # steps after a fragmenting one map over fragments
    assert len(collected) == len(fragments) and collected[0]["feat"].shape == (len(voxels), 9)
    assert torch.equal(collected[2]["index"], torch.from_numpy(fragments[2]["index"]))


def test_sampled_index_survives_dropout_and_grid_sample():
    data = point_cloud(4000)
    labelled = np.array([5, 6, 7, 100, 2500, 3999])
    data["sampled_index"] = labelled
    chain = Compose([RandomDropout(dropout_ratio=0.9), GridSample(0.5, mode="train")])
    out = chain(data, np.random.default_rng(0))
    assert len(out["coord"]) < 500
    assert set(labelled) <= set(out["instance"].tolist())
    assert np.array_equal(np.sort(out["instance"][out["sampled_index"]]), labelled)


def test_rotation_flip_scale_move_normals_consistently():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    data = {"coord": v.astype(np.float32), "normal": v.astype(np.float32)}  # normal == position on a sphere
    for t in (RandomRotate((-1, 1), "z", center=(0, 0, 0), p=1.0), RandomRotate((-1, 1), "x", center=(0, 0, 0), p=1.0),
              RandomFlip(p=1.0)):
        out = t(data, np.random.default_rng(3))
        assert not np.allclose(out["coord"], data["coord"])
        assert np.allclose(out["coord"], out["normal"], atol=1e-6)
    scaled = RandomScale((2.0, 2.0))(data, rng)
    assert np.allclose(scaled["coord"], 2 * data["coord"]) and np.array_equal(scaled["normal"], data["normal"])
    shifted = CenterShift(apply_z=True)(data, rng)
    lo, hi = shifted["coord"].min(0), shifted["coord"].max(0)
    assert np.allclose((lo + hi)[:2], 0, atol=1e-6) and abs(lo[2]) < 1e-6


def test_rotation_and_bounds_agree_with_numpy_and_a_rotation_is_a_rotation():
    # the loader's fast paths (no BLAS in the rotation, per-column bounds) give numpy's values
    rng = np.random.default_rng(1)
    points = rng.normal(size=(300, 3))
    angle = 0.7
    rot = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    assert np.allclose(_rotated(points, rot), points @ rot.T, atol=1e-12)
    assert np.allclose(np.linalg.norm(_rotated(points, rot), axis=1), np.linalg.norm(points, axis=1))
    for values in (points.astype(np.float32), rng.integers(-50, 50, size=(300, 3))):
        lo, hi = bounds(values)
        assert lo.dtype == values.dtype and np.array_equal(lo, values.min(0)) and np.array_equal(hi, values.max(0))


def test_colour_transforms_stay_in_range_and_normalize():
    data = point_cloud()
    data["color"] = (60 + data["color"] // 3).astype(np.uint8)  # low contrast, room to move
    for t in (ChromaticAutoContrast(p=1.0), ChromaticTranslation(p=1.0), ChromaticJitter(p=1.0)):
        out = t(data, np.random.default_rng(0))
        assert out["color"].dtype == np.float32 and 0 <= out["color"].min() and out["color"].max() <= 255
        assert not np.allclose(out["color"], data["color"])
    normalized = NormalizeColor()(data, np.random.default_rng(0))
    assert normalized["color"].dtype == np.float32 and np.allclose(normalized["color"] * 255, data["color"])


def test_elastic_distortion_is_smooth_and_bounded():
    data = point_cloud(3000)
    out = ElasticDistortion(((0.2, 0.4),), p=1.0)(data, np.random.default_rng(0))
    shift = (out["coord"] - data["coord"])[:400].astype(np.float64)
    assert 0.005 < np.abs(shift).mean() < 0.4
    pos = data["coord"][:400].astype(np.float64)
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    moved_apart = np.linalg.norm(shift[:, None] - shift[None], axis=2)
    close, far = moved_apart[(dist > 0) & (dist < 0.08)].mean(), moved_apart[dist > 0.6].mean()
    assert close < 0.5 * far  # neighbours move alike: a smooth field, not per-point noise
    assert np.array_equal(out["coord"], ElasticDistortion(((0.2, 0.4),), p=1.0)(data, np.random.default_rng(0))["coord"])


def test_sphere_crop_keeps_the_nearest_points():
    data = point_cloud(1000)
    out = SphereCrop(point_max=200, mode="center")(data, np.random.default_rng(0))
    assert len(out["coord"]) == 200
    mid = (data["coord"].min(0) + data["coord"].max(0)) / 2
    center = data["coord"][np.argmin(np.sum((data["coord"] - mid) ** 2, axis=1))]
    dist = np.sum((data["coord"] - center) ** 2, axis=1)
    assert np.array_equal(np.sort(out["instance"]), np.sort(np.argsort(dist)[:200]))
    assert SphereCrop(point_max=5000)(data, np.random.default_rng(0)) is data


def test_train_chain_is_deterministic_under_a_fixed_rng():
    data = scene("target", 0)
    chain = sonata_train_transform(grid_size=0.04, point_max=6000)
    a, b = chain(dict(data), np.random.default_rng(9)), chain(dict(data), np.random.default_rng(9))
    assert set(a) == {"coord", "grid_coord", "segment", "feat"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert len(a["coord"]) == 6000 and a["feat"].shape == (6000, 9) and a["feat"].dtype == torch.float32
    assert a["grid_coord"].dtype == torch.int64 and a["segment"].dtype == torch.int64
    c = chain(dict(data), np.random.default_rng(10))
    assert len(c["coord"]) != len(a["coord"]) or not torch.equal(c["coord"], a["coord"])


def test_val_chain_and_collect():
    data = scene("source", 0)
    out = sonata_val_transform(grid_size=0.04)(dict(data), np.random.default_rng(0))
    n = len(data["coord"])
    assert out["origin_segment"].shape == (n,) and out["inverse"].shape == (n,)
    agree = (out["segment"][out["inverse"]] == out["origin_segment"]).float().mean()
    assert agree > 0.9  # a voxel's kept label is most of its points' label
    assert torch.allclose(out["feat"][:, :3], out["coord"]) and out["feat"][:, 3:6].max() <= 1.0
    assert torch.allclose(out["feat"][:, 6:], out["feat"][:, 6:] / out["feat"][:, 6:].norm(dim=1, keepdim=True))
    no_normal = {k: v for k, v in data.items() if k != "normal"} | {"name": "scene_x"}
    with pytest.raises(PeftbenchError, match="scene_x.*normal"):
        Collect(keys=("coord",), feat_keys=("coord", "color", "normal"))(no_normal, np.random.default_rng(0))
