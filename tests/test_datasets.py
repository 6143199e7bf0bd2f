"""Real-dataset kinds on tiny folders in each Pointcept layout: counts, labels, class names, errors,
missing roots, `data check`, the paper suites (CPU, fast); the data-efficiency splits in test_data_efficiency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from peftbench.cli import main
from peftbench.data.check import check_dataset, inspect_dataset
from peftbench.data.datasets import DATASET_KINDS, S3DIS_AREAS, dataset_kind, six_fold_splits
from peftbench.data.sources import (
    batches,
    build_split,
    build_test_set,
    expand_path,
    kind_train_transform,
    prepare_dataset,
    resolve_file,
)
from peftbench.data.transforms import SphereCrop
from peftbench.errors import PeftbenchError
from peftbench.train.voting import evaluate_voting

REPO = Path(__file__).resolve().parent.parent
# "kind": (label file, label columns or None for (N,), label dtype)
LAYOUT = {
    "scannet": ("segment20.npy", None, np.int64),
    "scannet200": ("segment200.npy", None, np.int64),
    "scannetpp": ("segment.npy", 3, np.int16),
    "s3dis": ("segment.npy", 1, np.int16),
}


def write_scene(folder: Path, kind: str, n: int, seed: int, normal: bool = True,
                ignore_share: float = 0.1) -> np.ndarray:
    """One scene of ``n`` points in the kind's layout; returns its (N,) labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    k = DATASET_KINDS[kind].num_classes
    coord = rng.uniform([0, 0, 0], [1.5, 1.2, 0.8], (n, 3)).astype(np.float32)
    label = rng.integers(0, k, n).astype(np.int64)
    label[rng.random(n) < ignore_share] = -1
    np.save(folder / "coord.npy", coord)
    np.save(folder / "color.npy", rng.integers(0, 256, (n, 3)).astype(np.uint8))
    if normal:
        nrm = rng.normal(size=(n, 3)).astype(np.float32)
        np.save(folder / "normal.npy", nrm / np.linalg.norm(nrm, axis=1, keepdims=True))
    file, columns, dtype = LAYOUT[kind]
    if kind == "scannet" or kind == "scannet200":  # both label files live in every ScanNet scene
        np.save(folder / "segment20.npy", np.where(label >= 0, label % 20, -1).astype(np.int64))
        np.save(folder / "segment200.npy", label.astype(np.int64))
        return np.where(label >= 0, label % 20, -1) if kind == "scannet" else label
    if columns == 3:  # ScanNet++: up to 3 labels per point, column 0 is the one used
        other = rng.integers(0, k, (n, 2))
        np.save(folder / file, np.concatenate([label[:, None], other], axis=1).astype(dtype))
    else:
        np.save(folder / file, label[:, None].astype(dtype))
    return label


def make_dataset(root: Path, kind: str, splits: dict[str, int], n: int = 300, normal: bool = True) -> dict:
    labels = {}
    for s, (split, count) in enumerate(splits.items()):
        for i in range(count):
            name = f"scene{s:02d}{i:02d}_00" if kind.startswith("scannet") else f"room_{s}_{i}"
            labels[f"{split}/{name}"] = write_scene(root / split / name, kind, n + 17 * i, seed=100 * s + i,
                                                    normal=normal)
    return labels


@pytest.fixture
def scannet(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "scannet"
    return root, make_dataset(root, "scannet", {"train": 5, "val": 2, "test": 1})


def spec(name: str, root: Path, **extra) -> dict:
    kind = dataset_kind(name)
    return {"name": name, "root": str(root), "label": extra.pop("label", None),
            "train_split": ",".join(kind.train_split), "val_split": ",".join(kind.val_split), "data_seed": 0,
            **extra}


# ---------------------------------------------------------------- kinds, class names, layouts


def test_class_lists_and_recipes():
    counts = {name: kind.num_classes for name, kind in DATASET_KINDS.items() if name != "synthetic"}
    assert counts == {"scannet": 20, "scannet200": 200, "scannetpp": 100, "s3dis": 13}
    for kind in DATASET_KINDS.values():
        assert len(set(kind.classes)) == kind.num_classes, kind.name  # no duplicate names
    assert DATASET_KINDS["scannet200"].classes[:10] == (
        "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair")
    assert DATASET_KINDS["scannet200"].classes[-1] == "mattress"
    assert DATASET_KINDS["scannetpp"].classes[:3] == ("wall", "ceiling", "floor")
    assert DATASET_KINDS["scannetpp"].classes[-1] == "marker"
    assert DATASET_KINDS["s3dis"].classes[-1] == "clutter" and DATASET_KINDS["scannet"].classes[-1] == "otherfurniture"
    recipe = {n: (k.recipe.point_max, k.recipe.crop_sample_rate, k.recipe.test_prevoxel, k.recipe.epochs)
              for n, k in DATASET_KINDS.items() if n != "synthetic"}
    assert recipe == {"scannet": (102400, None, None, 800), "scannet200": (102400, None, None, 800),
                      "scannetpp": (204800, None, 0.01, 800), "s3dis": (204800, 0.6, 0.01, 3000)}
    assert [t.sample_rate for t in kind_train_transform(DATASET_KINDS["s3dis"], 0.02, 204800).transforms
            if isinstance(t, SphereCrop)] == [0.6, None]
    assert DATASET_KINDS["scannetpp"].train_split == ("train_grid1mm_chunk6x6_stride3x3",)
    folds = six_fold_splits()
    assert [f["val_split"] for f in folds] == list(S3DIS_AREAS)
    assert all(f["val_split"] not in f["train_split"].split(",") and len(f["train_split"].split(",")) == 5
               for f in folds)


@pytest.mark.parametrize("kind", ["scannet", "scannet200"])
def test_scannet_layouts_read_their_label_file(tmp_path, kind):
    labels = make_dataset(tmp_path, kind, {"train": 3, "val": 2})
    s = spec(kind, tmp_path)
    prepare_dataset(s)
    train = build_split(s, "train", False, 0.02, 102400, seed=0)
    assert len(train) == 3 and train.scene_names == ["scene0000_00", "scene0001_00", "scene0002_00"]
    for i, name in enumerate(train.scene_names):
        data = train.load_scene(i)
        assert np.array_equal(data["segment"], labels[f"train/{name}"])
        assert data["normal"].shape == data["coord"].shape
        item = train[i]  # the validation chain: 9 feature channels, inverse over every point
        assert item["feat"].shape[1] == 9 and len(item["inverse"]) == len(data["coord"])
    assert train.load_scene(0)["segment"].max() < DATASET_KINDS[kind].num_classes


def test_scannetpp_takes_column_zero(tmp_path):
    labels = make_dataset(tmp_path, "scannetpp", {"train_grid1mm_chunk6x6_stride3x3": 2, "val": 1})
    s = spec("scannetpp", tmp_path)
    prepare_dataset(s)
    train = build_split(s, s["train_split"], True, 0.02, 204800, seed=0)
    data = train.load_scene(1)
    raw = np.load(tmp_path / "train_grid1mm_chunk6x6_stride3x3" / train.scene_names[1] / "segment.npy")
    assert raw.shape[1] == 3 and raw.dtype == np.int16
    assert np.array_equal(data["segment"], raw[:, 0]) and not np.array_equal(data["segment"], raw[:, 1])
    assert data["segment"].dtype == np.int64
    assert np.array_equal(data["segment"], labels[f"train_grid1mm_chunk6x6_stride3x3/{train.scene_names[1]}"])


def test_s3dis_areas_labels_and_aliases(tmp_path):
    labels = make_dataset(tmp_path, "s3dis", {area: 1 + (k % 2) for k, area in enumerate(S3DIS_AREAS)})
    s = spec("s3dis", tmp_path)
    prepare_dataset(s)
    train = build_split(s, "train", False, 0.02, 204800, seed=0)  # alias: the Area 5 protocol
    assert sorted({split for split, _ in train.items}) == ["Area_1", "Area_2", "Area_3", "Area_4", "Area_6"]
    assert len(train) == 1 + 2 + 1 + 2 + 2
    comma = build_split(s, "Area_2, Area_5", False, 0.02, 204800, seed=0)
    assert [split for split, _ in comma.items] == ["Area_2", "Area_2", "Area_5"]
    data = comma.load_scene(2)
    raw = np.load(tmp_path / "Area_5" / comma.items[2][1] / "segment.npy")
    assert raw.shape == (len(data["coord"]), 1) and raw.dtype == np.int16
    assert np.array_equal(data["segment"], labels[f"Area_5/{comma.items[2][1]}"])
    assert build_test_set(s).items == [("Area_5", "room_4_0")]


# ---------------------------------------------------------------- errors name scene and file


def test_errors_name_scene_and_file(scannet):
    root, _ = scannet
    s = spec("scannet", root)
    (root / "train" / "scene0001_00" / "color.npy").unlink()
    with pytest.raises(PeftbenchError, match=r"scene train/scene0001_00: color\.npy is missing"):
        build_split(s, "train", False, 0.02, 102400, 0).load_scene(1)
    np.save(root / "train" / "scene0002_00" / "normal.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(PeftbenchError, match=r"scene train/scene0002_00: normal\.npy has shape \(5, 3\)"):
        build_split(s, "train", False, 0.02, 102400, 0).load_scene(2)
    bad = np.load(root / "train" / "scene0003_00" / "segment20.npy")
    bad[7] = 20
    np.save(root / "train" / "scene0003_00" / "segment20.npy", bad)
    with pytest.raises(PeftbenchError, match=r"scene train/scene0003_00: segment20\.npy has label values \[20\] "
                                             r"outside \[0, 20\)"):
        build_split(s, "train", False, 0.02, 102400, 0).load_scene(3)
    np.save(root / "train" / "scene0004_00" / "segment20.npy", np.zeros(3, np.int64))
    with pytest.raises(PeftbenchError, match=r"scene train/scene0004_00: segment20\.npy has shape \(3,\)"):
        build_split(s, "train", False, 0.02, 102400, 0).load_scene(4)
    with pytest.raises(PeftbenchError, match=r"split folder .*/scannet/training \(train_split\) not found "
                                             r"\(folders in .*: test, train, val\)"):
        prepare_dataset({**s, "train_split": "training"})


def test_s3dis_without_normals_says_parse_normal(tmp_path):
    make_dataset(tmp_path, "s3dis", {area: 1 for area in S3DIS_AREAS}, normal=False)
    dataset = build_split(spec("s3dis", tmp_path), "Area_1", True, 0.02, 204800, 0)
    with pytest.raises(PeftbenchError) as err:
        dataset[0]
    msg = str(err.value)
    assert "scene Area_1/room_0_0: normal.npy is missing" in msg
    assert "9 input channels" in msg and "--parse_normal" in msg


def test_missing_root_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTBENCH_TEST_ROOT", raising=False)
    entry = {"name": "scannet", "root": "${PEFTBENCH_TEST_ROOT}", "label": "scannet", "train_split": "train",
             "val_split": "val"}
    with pytest.raises(PeftbenchError) as err:
        prepare_dataset(entry)
    msg = str(err.value)
    assert "\n" not in msg and "environment variable PEFTBENCH_TEST_ROOT is not set" in msg and "scannet" in msg
    monkeypatch.setenv("PEFTBENCH_TEST_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(PeftbenchError) as err:
        prepare_dataset(entry)
    msg = str(err.value)
    assert "\n" not in msg and f"dataset root not found: {tmp_path / 'nowhere'}" in msg
    assert "PEFTBENCH_TEST_ROOT" in msg
    with pytest.raises(PeftbenchError) as err:
        prepare_dataset({**entry, "root": str(tmp_path / "plain")})
    msg = str(err.value)
    assert "\n" not in msg and "set `root` of dataset 'scannet' in the suite" in msg and "SCANNET_ROOT" in msg
    with pytest.raises(PeftbenchError, match="unknown dataset 'scanet'"):
        prepare_dataset({**entry, "name": "scanet"})


def test_expand_path_and_resolve_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PB_ABS", str(tmp_path / "data"))
    monkeypatch.setenv("PB_REL", "sub")
    assert expand_path("${PB_ABS}/scannet", "x") == tmp_path / "data" / "scannet"
    assert expand_path("/some/cwd/${PB_ABS}", "x") == tmp_path / "data"  # made absolute before expansion
    assert expand_path("base/$PB_REL/x", "x") == Path("base/sub/x")
    ckpt = tmp_path / "data" / "sonata.pth"
    with pytest.raises(PeftbenchError, match=r"file not found: .*sonata\.pth: set environment variable PB_ABS"):
        resolve_file("${PB_ABS}/sonata.pth", "backbone.checkpoint")
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert resolve_file("${PB_ABS}/sonata.pth", "backbone.checkpoint") == ckpt


# ---------------------------------------------------------------- loader, Mix3D


def test_mix_prob_merges_batches(scannet):
    root, _ = scannet
    dataset = build_split(spec("scannet", root), "train", True, 0.05, 102400, seed=0)
    plain = next(iter(batches(dataset, 4, False, 0, 0, True, mix_prob=0.0)))
    mixed = next(iter(batches(dataset, 4, False, 0, 0, True, mix_prob=1.0)))
    assert len(plain["offset"]) == 4 and len(mixed["offset"]) == 2
    assert mixed["offset"][-1] == plain["offset"][-1] and mixed["offset"][0] == plain["offset"][1]


# ---------------------------------------------------------------- data check, CLI, suites


def test_data_check_reports_and_exit_codes(scannet, capsys):
    root, labels = scannet
    text = check_dataset(root, "scannet")
    assert "train: 5 scenes" in text and "val: 2 scenes" in text and "test (unlabelled): 1 scenes" in text
    sizes = [300 + 17 * i for i in range(5)]
    assert f"min {min(sizes)} / median {int(np.median(sizes))} / max {max(sizes)}" in text
    wall = sum(int((v == 0).sum()) for k, v in labels.items() if k.startswith("train/"))
    assert any(line.split()[:2] == ["0", "wall"] and f"{wall:,}" in line for line in text.splitlines())
    assert "refridgerator" in text and "no problems found" in text
    assert "tasks/points: none" in text
    assert main(["data", "check", str(root), "--dataset", "scannet"]) == 0
    capsys.readouterr()
    (root / "val" / "scene0101_00" / "segment20.npy").unlink()
    (root / "train" / "scene0001_00" / "normal.npy").unlink()
    result = inspect_dataset(root, "scannet")
    assert len(result.problems) == 2
    assert any("scene val/scene0101_00: segment20.npy is missing" in p for p in result.problems)
    assert any("1 of 5 scenes of train lack normal.npy (e.g. train/scene0001_00)" in p for p in result.problems)
    assert main(["data", "check", str(root), "--dataset", "scannet"]) == 2
    out = capsys.readouterr().out
    assert "problems (2):" in out and "segment20.npy is missing" in out


def test_data_check_s3dis_missing_area_and_normals(tmp_path):
    make_dataset(tmp_path, "s3dis", {a: 1 for a in S3DIS_AREAS[:5]}, normal=False)
    result = inspect_dataset(tmp_path, "s3dis")
    assert "Area_6: MISSING" in result.text and "clutter" in result.text
    assert any("--parse_normal" in p for p in result.problems) and len(result.problems) == 6


def test_paper_suites_dry_run(capsys):
    assert main(["run", str(REPO / "suites" / "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "63 trials in suite 'paper'" in out
    for name in ("linear/scannet/full/s0", "gem/scannet200/full/s0", "lora/scannetpp/full/s0",
                 "full/s3dis-area5/full/s0", "prompt/s3dis-6fold-Area_6/full/s0", "bitfit/s3dis-6fold-Area_1/full/s0"):
        assert name in out
    assert main(["run", str(REPO / "suites" / "data_efficiency.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "56 trials" in out and "adapter/scannet/points-200/s0" in out and "gem/scannet/scenes-1/s0" in out


def test_paper_suite_without_data_stops_before_any_trial(tmp_path, monkeypatch, capsys):
    from peftbench.suite import load_suite, trial_specs
    from peftbench.tune import run_suite

    for var in ("SCANNET_ROOT", "SCANNETPP_ROOT", "S3DIS_ROOT", "SONATA_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    suite = load_suite(REPO / "suites" / "paper.yaml")
    specs = trial_specs(suite)
    for spec_ in specs:  # the checks the driver runs for every dataset before trials
        with pytest.raises(PeftbenchError) as err:
            prepare_dataset(spec_["dataset"])
        assert "\n" not in str(err.value) and "environment variable" in str(err.value) and "ROOT" in str(err.value)
    monkeypatch.setattr("peftbench.tune.tracking.ensure_experiment", lambda uri, name: "0")
    ran = []
    monkeypatch.setattr("peftbench.tune.tracked_trial", lambda *a, **k: ran.append(a))
    with pytest.raises(PeftbenchError, match="SCANNET_ROOT"):
        run_suite(suite, specs, "sqlite:///unused.db", print, sequential=True)
    assert ran == []


def test_test_protocol_is_validated(tmp_path):
    from peftbench.suite import load_suite

    text = (REPO / "suites" / "paper.yaml").read_text().replace("test_protocol: voting", "test_protocol: vote")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(PeftbenchError, match="test_protocol must be 'single'.*or 'voting'.*'vote'"):
        load_suite(tmp_path / "bad.yaml")


def test_scannet_entry_runs_end_to_end(tmp_path, monkeypatch):
    """A suite entry {name: scannet, root: ...} on a tiny folder: limited annotation, voting test."""
    from conftest import MICRO

    from peftbench.train import trial as trial_module
    from peftbench.train.recorder import LocalRecorder
    from peftbench.train.trial import run_trial

    voted = []

    def voting(*args, **kwargs):
        voted.append(kwargs)
        return evaluate_voting(*args, **kwargs)

    monkeypatch.setattr(trial_module, "evaluate_voting", voting)

    root = tmp_path / "scannet"
    make_dataset(root, "scannet", {"train": 2, "val": 1}, n=250)
    trial = {"kind": "trial", "seed": 0, "split": "points-20", "dataset": spec("scannet", root),
             "method": {"name": "linear", "settings": {}},
             "backbone": {"config": "tiny", "overrides": dict(MICRO), "conv_backend": "torch"},
             "train": {"epochs": 1, "batch_size": 2, "grid_size": 0.05, "point_max": 2000, "mix_prob": 0.8,
                       "test_protocol": "voting"}}
    with LocalRecorder(tmp_path / "out") as recorder:
        final = run_trial(trial, recorder)
    assert 0.0 <= final["test/mIoU"] <= 1.0 and "test/iou/refridgerator" in final
    assert len(voted) == 1 and voted[0]["prevoxel"] is None and voted[0]["grid_size"] == 0.05
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert split["source"] == "seeded subset" and split["counts"] == {"scene0000_00": 20, "scene0001_00": 20}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["resolved"]["split"]["hash"] == split["hash"]
    assert recorder.metrics["split/labelled_points"] == 40
    confusion = json.loads((tmp_path / "out" / "confusion_matrix.json").read_text())["matrix"]
    assert np.asarray(confusion).sum() == int((np.load(root / "val" / "scene0100_00" / "segment20.npy") >= 0).sum())

