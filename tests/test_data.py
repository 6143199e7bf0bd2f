"""Data: synthetic scenes, the Pointcept-layout reader, Sonata transforms, collate (CPU, fast)."""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from peftbench.data import (
    DOMAINS,
    SYNTHETIC_CLASSES,
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
    SceneFolderDataset,
    SphereCrop,
    ToTensor,
    collate_points,
    concat_batches,
    generate_scene,
    mix3d_collate,
    sonata_train_transform,
    sonata_val_transform,
    split_batch,
    write_synthetic_dataset,
)
from peftbench.data.synthetic import scene_seed
from peftbench.data.transform_base import bounds
from peftbench.data.transforms import _rotated
from peftbench.errors import PeftbenchError

KEYS = ("coord", "color", "normal", "segment")


@lru_cache(maxsize=None)
def scene(domain: str, seed: int) -> dict:
    return generate_scene(domain, np.random.default_rng(seed))


def scenes(domain: str, n: int = 8) -> list[dict]:
    return [scene(domain, s) for s in range(n)]


def voxel_keys(grid: np.ndarray) -> np.ndarray:
    return grid[:, 0] * 10**12 + grid[:, 1] * 10**6 + grid[:, 2]


# ---------------------------------------------------------------- synthetic scenes


def test_scene_is_deterministic_per_seed():
    a, b = generate_scene("source", np.random.default_rng(7)), generate_scene("source", np.random.default_rng(7))
    for key in KEYS:
        assert np.array_equal(a[key], b[key]), key
    c = generate_scene("source", np.random.default_rng(8))
    assert len(c["coord"]) != len(a["coord"]) or not np.array_equal(c["coord"], a["coord"])


@pytest.mark.parametrize("domain", ["source", "target"])
def test_scene_arrays_are_well_formed(domain):
    for data in scenes(domain, 3):
        n = len(data["coord"])
        assert 8_000 < n < 60_000
        assert data["coord"].dtype == np.float32 and data["coord"].shape == (n, 3)
        assert data["color"].dtype == np.uint8 and data["color"].shape == (n, 3)
        assert data["normal"].dtype == np.float32 and data["normal"].shape == (n, 3)
        assert data["segment"].dtype == np.int64 and data["segment"].shape == (n,)
        assert np.allclose(np.linalg.norm(data["normal"], axis=1), 1.0, atol=1e-5)
        assert data["segment"].min() >= -1 and data["segment"].max() < len(SYNTHETIC_CLASSES)
        assert data["coord"][:, 2].min() > -0.05  # nothing below the floor beyond sensor noise
        assert data["color"].std() > 10  # not one flat colour


@pytest.mark.parametrize("domain", ["source", "target"])
def test_every_class_occurs_in_a_handful_of_scenes(domain):
    seen = set()
    for data in scenes(domain):
        seen |= set(np.unique(data["segment"]).tolist())
    assert set(range(len(SYNTHETIC_CLASSES))) <= seen
    assert SYNTHETIC_CLASSES[:3] == ("wall", "floor", "cabinet") and len(SYNTHETIC_CLASSES) == 12


def test_domains_differ_measurably():
    table, floor = SYNTHETIC_CLASSES.index("table"), SYNTHETIC_CLASSES.index("floor")
    wall = SYNTHETIC_CLASSES.index("wall")

    def table_tops(domain):  # highest table point per scene ~ table height
        return [d["coord"][d["segment"] == table, 2].max() for d in scenes(domain) if (d["segment"] == table).any()]

    src, tgt = table_tops("source"), table_tops("target")
    assert len(src) >= 4 and len(tgt) >= 4
    assert max(src) < 0.85 < min(tgt)  # source tables 0.70-0.78 m, target bar tables 0.85-1.05 m

    def floor_noise(domain):  # sensor jitter: spread of floor heights around z=0
        return np.mean([d["coord"][d["segment"] == floor, 2].std() for d in scenes(domain, 4)])

    assert floor_noise("target") > 1.8 * floor_noise("source")

    def wall_red_minus_blue(domain):
        return np.mean([d["color"][d["segment"] == wall].astype(float).mean(0) @ [1, 0, -1] for d in scenes(domain, 4)])

    assert wall_red_minus_blue("source") > 20 and wall_red_minus_blue("target") < -5  # warm vs cool palettes
    assert DOMAINS["source"].points_per_m2 != DOMAINS["target"].points_per_m2


def test_colour_alone_does_not_separate_classes():
    """Every class shares its typical colour with another class in the same domain."""
    for style in DOMAINS.values():
        for name in SYNTHETIC_CLASSES:
            if name == "picture":
                continue  # pictures get random colours
            colours = set(style.palettes[name])
            others = set().union(*(style.palettes[o] for o in SYNTHETIC_CLASSES if o not in (name, "picture")))
            assert colours & others, (style.name, name)


def test_unknown_domain_lists_the_valid_ones(tmp_path):
    with pytest.raises(PeftbenchError, match="source.*target"):
        generate_scene("kitchen", np.random.default_rng(0))
    with pytest.raises(PeftbenchError, match="source.*target"):
        write_synthetic_dataset(tmp_path, "kitchen", {"train": 1}, seed=0)


def test_points_per_m2_scales_the_scene():
    sparse = generate_scene("target", np.random.default_rng(3), points_per_m2=60.0)
    dense = generate_scene("target", np.random.default_rng(3), points_per_m2=240.0)
    assert 3.0 < len(dense["coord"]) / len(sparse["coord"]) < 5.0
    with pytest.raises(PeftbenchError, match="points_per_m2"):
        generate_scene("target", np.random.default_rng(3), points_per_m2=0.0)


# ---------------------------------------------------------------- writing and reading


def test_write_read_round_trip_and_rerun(tmp_path):
    root = write_synthetic_dataset(tmp_path / "a", "target", {"train": 2, "val": 1}, seed=5)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["classes"] == list(SYNTHETIC_CLASSES) and meta["counts"] == {"train": 2, "val": 1}
    assert meta["domain"] == "target" and meta["seed"] == 5
    dataset = SceneFolderDataset(root, "train", num_classes=12, require_normal=True)
    assert len(dataset) == 2 and dataset.scene_names == ["scene_0000", "scene_0001"]
    for k in range(2):
        expected = generate_scene("target", np.random.default_rng(scene_seed(5, "target", "train", k)))
        item = dataset[k]
        assert item["name"] == f"scene_{k:04d}"
        for key in KEYS:
            assert np.array_equal(item[key], expected[key]), key
    assert np.load(root / "train" / "scene_0000" / "segment.npy").dtype == np.int16

    first = (root / "val" / "scene_0000" / "coord.npy").stat().st_mtime_ns
    write_synthetic_dataset(root, "target", {"train": 2, "val": 1}, seed=5)  # complete scenes are kept
    assert (root / "val" / "scene_0000" / "coord.npy").stat().st_mtime_ns == first
    other = write_synthetic_dataset(tmp_path / "b", "target", {"val": 1}, seed=5)
    for file in KEYS:
        assert (root / "val/scene_0000" / f"{file}.npy").read_bytes() == (other / "val/scene_0000" / f"{file}.npy").read_bytes()

    write_synthetic_dataset(root, "target", {"train": 1}, seed=5)  # fewer scenes: extras go
    assert sorted(p.name for p in (root / "train").iterdir()) == ["scene_0000"]
    with pytest.raises(PeftbenchError, match="seed"):
        write_synthetic_dataset(root, "target", {"train": 1}, seed=6)


@pytest.fixture
def tiny_root(tmp_path):
    """Two hand-made scenes in the Pointcept layout."""
    rng = np.random.default_rng(0)
    for name, n in (("room_a", 50), ("room_b", 30)):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        np.save(folder / "coord.npy", rng.random((n, 3)).astype(np.float32))
        np.save(folder / "color.npy", rng.integers(0, 256, (n, 3)).astype(np.uint8))
        np.save(folder / "normal.npy", np.tile(np.float32([0, 0, 1]), (n, 1)))
        np.save(folder / "segment.npy", rng.integers(-1, 4, n).astype(np.int16))
    return tmp_path


def test_reader_missing_folders_name_the_path(tmp_path, tiny_root):
    with pytest.raises(PeftbenchError, match=str(tmp_path / "nowhere")):
        SceneFolderDataset(tmp_path / "nowhere", "train", num_classes=4)
    with pytest.raises(PeftbenchError, match=r"split folder .*val.* not found.*train"):
        SceneFolderDataset(tiny_root, "val", num_classes=4)
    with pytest.raises(PeftbenchError, match="room_z"):
        SceneFolderDataset(tiny_root, "train", num_classes=4, scenes=["room_a", "room_z"])


def test_reader_shape_mismatch_names_scene_and_files(tiny_root):
    np.save(tiny_root / "train/room_b/color.npy", np.zeros((29, 3), np.uint8))
    dataset = SceneFolderDataset(tiny_root, "train", num_classes=4)
    dataset[0]  # room_a is fine
    with pytest.raises(PeftbenchError, match=r"room_b.*color\.npy.*\(29, 3\).*coord\.npy"):
        dataset[1]
    np.save(tiny_root / "train/room_a/segment.npy", np.zeros(49, np.int16))
    with pytest.raises(PeftbenchError, match=r"room_a.*segment\.npy.*coord\.npy has 50"):
        dataset[0]


def test_reader_label_checks(tiny_root):
    seg = np.zeros(50, np.int64)
    seg[[3, 7]] = [9, -4]
    np.save(tiny_root / "train/room_a/segment.npy", seg)
    dataset = SceneFolderDataset(tiny_root, "train", num_classes=4)
    with pytest.raises(PeftbenchError, match=r"room_a.*segment\.npy.*\[-4, 9\]"):
        dataset[0]
    assert set(np.unique(dataset[1]["segment"])) <= {-1, 0, 1, 2, 3}  # -1 passes as ignore

    multi = np.stack([np.arange(30) % 4, np.full(30, 3), np.full(30, -1)], axis=1).astype(np.int16)
    np.save(tiny_root / "train/room_b/segment.npy", multi)
    with pytest.raises(PeftbenchError, match="label_column"):
        SceneFolderDataset(tiny_root, "train", num_classes=4, scenes=["room_b"])[0]
    picked = SceneFolderDataset(tiny_root, "train", num_classes=4, scenes=["room_b"], label_column=1)[0]
    assert picked["segment"].dtype == np.int64 and np.all(picked["segment"] == 3)
    np.save(tiny_root / "train/room_b/segment.npy", multi[:, :1])  # S3DIS-style (N, 1)
    assert np.array_equal(SceneFolderDataset(tiny_root, "train", num_classes=4, scenes=["room_b"])[0]["segment"], np.arange(30) % 4)


def test_reader_optional_normals_scenes_and_loop(tiny_root):
    (tiny_root / "train/room_b/normal.npy").unlink()
    dataset = SceneFolderDataset(tiny_root, "train", num_classes=4, loop=3)
    assert len(dataset) == 6 and "normal" not in dataset[1] and dataset[3]["name"] == "room_b"
    with pytest.raises(PeftbenchError, match=r"room_b.*normal\.npy"):
        SceneFolderDataset(tiny_root, "train", num_classes=4, require_normal=True)[1]
    only_a = SceneFolderDataset(tiny_root, ["train"], num_classes=4, scenes=["room_a"])
    assert only_a.scene_names == ["room_a"]


def draw(data, rng):
    return {"coord": data["coord"], "name": data["name"], "draw": rng.random((1, 3))}


def test_item_rng_depends_on_seed_epoch_index(tiny_root):
    dataset = SceneFolderDataset(tiny_root, "train", num_classes=4, transform=draw, seed=11, loop=2)
    assert np.array_equal(dataset[3]["draw"], np.random.default_rng([11, 0, 3]).random((1, 3)))
    assert not np.array_equal(dataset[1]["draw"], dataset[3]["draw"])  # same scene, other loop index
    before = dataset[0]["draw"]
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0]["draw"], before)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_points)
    draws = torch.cat([batch["draw"] for batch in loader])
    assert torch.equal(draws, torch.cat([torch.from_numpy(dataset[i]["draw"]) for i in range(4)]))


# ---------------------------------------------------------------- transforms


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


# ---------------------------------------------------------------- collate


def sample(n_points, n_original, name):
    inverse = torch.arange(n_original) % n_points
    segment = torch.arange(n_points) + 100 * n_points  # distinct per sample: a missing shift shows
    return {"coord": torch.rand(n_points, 3), "segment": segment, "inverse": inverse, "name": name}


def test_collate_offsets_and_inverse_shift():
    samples = [sample(5, 9, "a"), sample(3, 4, "b"), sample(4, 6, "c")]
    batch = collate_points(samples)
    assert batch["offset"].tolist() == [5, 8, 12] and batch["offset"].dtype == torch.int64
    assert batch["origin_offset"].tolist() == [9, 13, 19]
    assert batch["name"] == ["a", "b", "c"] and batch["coord"].shape == (12, 3)
    expected = torch.cat([s["segment"][s["inverse"]] for s in samples])
    assert torch.equal(batch["segment"][batch["inverse"]], expected)


def test_mix3d_merges_consecutive_pairs():
    samples = [sample(n, n, str(n)) for n in (2, 3, 4, 5, 6)]
    plain = mix3d_collate(samples, mix_prob=0.0, rng=np.random.default_rng(0))
    assert plain["offset"].tolist() == [2, 5, 9, 14, 20]
    mixed = mix3d_collate(samples, mix_prob=1.0, rng=np.random.default_rng(0))
    assert mixed["offset"].tolist() == [5, 14, 20] and mixed["coord"].shape == (20, 3)
    assert mix3d_collate(samples[:4], 1.0, np.random.default_rng(0))["offset"].tolist() == [5, 14]
    draws = [len(mix3d_collate(samples, 0.5, np.random.default_rng(s))["offset"]) for s in range(20)]
    assert set(draws) == {3, 5}


def test_concatenated_batches_equal_one_collate_and_keep_mix3d_merges():
    samples = [sample(5, 9, "a"), sample(3, 4, "b"), sample(4, 6, "c"), sample(2, 2, "d")]
    first, second = collate_points(samples[:2]), collate_points(samples[2:])
    joined = concat_batches([first, second])
    whole = collate_points(samples)
    assert joined.keys() == whole.keys() and joined["name"] == ["a", "b", "c", "d"]
    assert all(torch.equal(joined[k], whole[k]) for k in whole if k != "name")
    mixed = mix3d_collate(samples[2:], 1.0, np.random.default_rng(0))             # c+d merged: one scene
    assert concat_batches([first, mixed])["offset"].tolist() == [5, 8, 14]
    assert concat_batches([first]) is first


def test_loader_over_synthetic_data(tmp_path):
    root = write_synthetic_dataset(tmp_path, "target", {"train": 2}, seed=1)
    dataset = SceneFolderDataset(root, "train", num_classes=12, transform=sonata_train_transform(0.04, 5000), seed=3)
    batch = collate_points([dataset[0], dataset[1]])
    assert batch["offset"].tolist() == [5000, 10000] and batch["feat"].shape == (10000, 9)
    assert batch["segment"].min() >= -1 and batch["segment"].max() < 12
    assert math.isfinite(batch["coord"].abs().max().item())


def test_split_batch_gives_each_scene_its_own_collate():
    """The inverse of collation (evaluation's out-of-memory halves): each part equals the scene
    collated alone (``inverse`` moved back, ``origin_segment`` cut at ``origin_offset``), and the
    parts joined give the batch back."""
    samples = [{**sample(n, n_original, name), "origin_segment": torch.arange(n_original) + 10 * n}
               for n, n_original, name in ((5, 9, "a"), (3, 4, "b"), (4, 6, "c"))]
    batch = collate_points(samples)
    parts = split_batch(batch)
    assert len(parts) == 3
    for part, alone in zip(parts, (collate_points([s]) for s in samples)):
        assert part.keys() == alone.keys() and part["name"] == alone["name"]
        assert all(torch.equal(part[k], alone[k]) for k in alone if k != "name")
    joined = concat_batches(parts)
    assert all(torch.equal(joined[k], batch[k]) for k in batch if k != "name") and joined["name"] == ["a", "b", "c"]
