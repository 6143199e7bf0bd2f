"""Data-efficiency splits on tiny Pointcept-layout folders: parsing, limited scenes and limited points (seeded and
official lists), and labelled points kept through the train chain (CPU, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftbench.data.datasets import dataset_kind
from peftbench.data.efficiency import LimitedAnnotation, efficiency_split, parse_split
from peftbench.data.sources import KindDataset, build_train_set
from peftbench.data.transforms import Compose, GridSample, RandomDropout
from peftbench.errors import PeftbenchError
from tests.test_datasets import make_dataset, spec


def test_parse_split():
    assert parse_split("full") == ("full", None)
    assert parse_split("scenes-10") == ("scenes", "10") and parse_split("points-200") == ("points", "200")
    for bad in ("scenes-0", "scenes-101", "points-0", "points", "half"):
        with pytest.raises(PeftbenchError):
            parse_split(bad)


def test_limited_scenes_seeded_and_official(tmp_path):
    root = tmp_path / "scannet"
    make_dataset(root, "scannet", {"train": 12, "val": 1}, n=60)
    s = spec("scannet", root)
    everything = KindDataset(dataset_kind("scannet"), root, "train")
    a = efficiency_split(everything, root, "scenes-20", split_seed=0)
    b = efficiency_split(everything, root, "scenes-20", split_seed=0)
    assert a.record == b.record and a.scenes == b.scenes
    assert len(a.scenes) == round(0.2 * 12) == 2 and a.record["source"] == "seeded subset"
    assert len(efficiency_split(everything, root, "scenes-1", 0).scenes) == 1  # at least one scene
    larger = efficiency_split(everything, root, "scenes-50", 0).scenes
    assert set(a.scenes) <= set(larger) and len(larger) == 6  # nested: one seeded permutation
    other = efficiency_split(everything, root, "scenes-50", split_seed=1).scenes
    assert other != larger
    official = root / "tasks" / "scenes" / "20.txt"
    official.parent.mkdir(parents=True)
    official.write_text("scene0007_00\nscene0003_00\n")
    dataset, record = build_train_set(s, "scenes-20", 0.02, 102400, seed=3)
    assert dataset.scene_names == ["scene0003_00", "scene0007_00"]
    assert record["source"] == str(official) and record["scenes"] == ["scene0003_00", "scene0007_00"]
    official.write_text("scene0099_00\n")
    with pytest.raises(PeftbenchError, match=r"20\.txt names 1 scene\(s\) not in split\(s\).*scene0099_00"):
        build_train_set(s, "scenes-20", 0.02, 102400, seed=3)


def test_limited_points_seeded_and_official(tmp_path):
    root = tmp_path / "scannet"
    labels = make_dataset(root, "scannet", {"train": 3, "val": 1}, n=80)
    s = spec("scannet", root)
    _, first = build_train_set(s, "points-20", 0.02, 102400, seed=0)
    _, again = build_train_set(s, "points-20", 0.02, 102400, seed=5)  # trial seed does not matter
    assert first == again and first["source"] == "seeded subset" and first["split_seed"] == 0
    assert first["counts"] == {name: 20 for name in ("scene0000_00", "scene0001_00", "scene0002_00")}
    _, many = build_train_set(s, "points-1000", 0.02, 102400, seed=0)  # fewer labelled: all of them
    assert many["counts"]["scene0000_00"] == int((labels["train/scene0000_00"] >= 0).sum())
    _, other = build_train_set({**s, "data_seed": 1}, "points-20", 0.02, 102400, seed=0)
    assert other["hash"] != first["hash"]
    dataset, _ = build_train_set(s, "points-20", 0.02, 102400, seed=0)
    limited = dataset.transform.transforms[0]
    assert isinstance(limited, LimitedAnnotation)
    for name, index in limited.labelled.items():  # uniformly among labelled points only
        assert len(index) == 20 and (labels[f"train/{name}"][index] >= 0).all()

    official = root / "tasks" / "points" / "points20"
    official.parent.mkdir(parents=True)
    table = {"scene0000_00": torch.tensor([0, 5, 9]), "scene0001_00": np.array([1, 2]),
             "scene0002_00": torch.arange(4), "scene0099_00": torch.tensor([0])}
    torch.save(table, official)
    dataset, record = build_train_set(s, "points-20", 0.02, 102400, seed=0)
    assert record["source"] == str(official)
    assert record["counts"] == {"scene0000_00": 3, "scene0001_00": 2, "scene0002_00": 4}
    raw = dataset.load_scene(0)
    item = dataset.transform.transforms[0](raw, np.random.default_rng(0))
    assert np.flatnonzero(item["segment"] >= 0).tolist() == [i for i in (0, 5, 9) if raw["segment"][i] >= 0]
    torch.save({**table, "scene0001_00": torch.tensor([1, 10_000])}, official)
    dataset, _ = build_train_set(s, "points-20", 0.02, 102400, seed=0)
    with pytest.raises(PeftbenchError, match=r"scene scene0001_00: .*points20 lists point index 10000 but the "
                                             r"scene has \d+ points"):
        dataset[1]


def test_labelled_points_survive_dropout_and_grid_sample(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 4000, 20
    coord = rng.uniform(0, 0.3, (n, 3)).astype(np.float32)  # ~30 points per 5 cm voxel: heavy collisions
    data = {"coord": coord, "color": rng.integers(0, 255, (n, 3)).astype(np.uint8),
            "segment": rng.integers(0, k, n), "name": "s"}
    labelled = np.sort(rng.choice(n, 50, replace=False))
    chain = Compose([LimitedAnnotation({"s": labelled}, "test"), RandomDropout(0.8),
                     GridSample(0.05, mode="train")])
    for seed in range(5):
        out = chain(data, np.random.default_rng(seed))
        assert len(out["coord"]) < 0.3 * n  # most points really were dropped
        kept = out["segment"] >= 0
        assert kept.sum() == len(labelled)
        # the surviving labelled points are exactly the listed ones, with their original labels
        original = {tuple(coord[i]): data["segment"][i] for i in labelled}
        assert {tuple(c): s for c, s in zip(out["coord"][kept], out["segment"][kept])} == original
        assert np.array_equal(np.sort(out["sampled_index"]), np.flatnonzero(kept))


def test_train_items_keep_labelled_points_through_the_whole_chain(tmp_path):
    root = tmp_path / "scannet"
    make_dataset(root, "scannet", {"train": 2, "val": 1}, n=400)
    dataset, record = build_train_set(spec("scannet", root), "points-20", 0.05, 102400, seed=0)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            assert int((item["segment"] >= 0).sum()) == record["counts"][dataset.scene_names[i]] == 20
