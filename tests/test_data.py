"""Data: synthetic scenes, the Pointcept-layout reader, collate (CPU, fast); the transforms in test_transforms."""

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
    SceneFolderDataset,
    collate_points,
    concat_batches,
    generate_scene,
    mix3d_collate,
    sonata_train_transform,
    split_batch,
    write_synthetic_dataset,
)
from peftbench.data.synthetic import scene_seed
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
