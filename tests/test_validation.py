"""Bad input found before any trial (and by --dry-run): one line naming file and key, exit 2, no
experiment created. Cases from issue 11 §1-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftbench.cli import main
from peftbench.data.check import inspect_dataset
from peftbench.data.layout import SceneFolderDataset
from peftbench.errors import PeftbenchError
from peftbench.suite import load_suite
from tests.reliability_suite import MICRO_SUITE, write_suite


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_fails(capsys, *argv: str) -> str:
    """`peftbench ARGV` exits 2 with one line on stderr and creates no MLflow store."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("peftbench: error: ") and "\n" not in err, err
    assert not list(__import__("pathlib").Path.cwd().glob("mlflow.db"))
    return err


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", 0, "epochs must be an integer >= 1, got 0"),
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("grid_size", 0, "grid_size must be a number > 0, got 0.0"),
    ("num_workers", -1, "num_workers must be an integer >= 0, got -1"),
    ("lr", -0.1, "lr must be a number > 0, got -0.1"),
    ("lr", float("nan"), "lr must be a number > 0, got nan"),
    ("pct_start", 1.5, "pct_start must be a number between 0 and 1"),
])
def test_train_values_out_of_range_are_refused_naming_file_and_key(in_tmp, capsys, key, value, expected):
    path = write_suite(in_tmp, train={key: value})
    with pytest.raises(PeftbenchError, match="suite.yaml: train: " + expected.replace("(", r"\(")):
        load_suite(path)
    assert expected in _run_fails(capsys, "run", str(path), "--dry-run")


def test_per_method_override_out_of_range_names_the_method_entry(in_tmp):
    path = write_suite(in_tmp, methods=[{"name": "linear", "train": {"epochs": 0}}])
    with pytest.raises(PeftbenchError, match=r"methods\[0\]\.train: epochs must be an integer >= 1"):
        load_suite(path)


def test_method_setting_of_the_wrong_type_is_refused(in_tmp, capsys):
    path = write_suite(in_tmp, methods=[{"name": "gem", "settings": {"rank": "eight"}}])
    err = _run_fails(capsys, "run", str(path), "--dry-run")
    assert "suite.yaml: methods[0].settings.rank: expected int, got 'eight'" in err


@pytest.mark.parametrize("change, expected", [
    ({"backbone": {"config": "tiny-typo"}}, "backbone.config: unknown backbone config 'tiny-typo'; available:"),
    ({"backbone": {"config": "tiny", "overrides": {"enc_depht": [1]}}}, "the backbone cannot be built"),
    ({"datasets": [{"name": "scannet-typo", "root": "data"}]}, "unknown dataset 'scannet-typo'; available:"),
    ({"resources": {"cpus_per_trial": 4096}}, "resources.cpus_per_trial is 4096 but this machine has"),
])
def test_dry_run_and_run_refuse_before_any_experiment(in_tmp, capsys, change, expected):
    path = write_suite(in_tmp, **change)
    assert expected in _run_fails(capsys, "run", str(path), "--dry-run")
    assert expected in _run_fails(capsys, "run", str(path))


def _micro_checkpoint(path, rename: dict[str, str] | None = None, reshape: str | None = None):
    from peftbench.backbone import PointTransformerV3, backbone_config

    state = PointTransformerV3(**backbone_config("tiny", **MICRO_SUITE["backbone"]["overrides"])).state_dict()
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, path)
    return state


def test_checkpoint_problems_are_one_line_before_any_trial(in_tmp, capsys):
    backbone = dict(MICRO_SUITE["backbone"])
    (in_tmp / "notes.pth").write_text("this is not a checkpoint\n")
    err = _run_fails(capsys, "run", str(write_suite(in_tmp, backbone={**backbone, "checkpoint": "notes.pth"})))
    assert "notes.pth is not a PyTorch checkpoint" in err

    key = next(iter(_micro_checkpoint(in_tmp / "ok.pth")))
    _micro_checkpoint(in_tmp / "renamed.pth", rename={key: key.replace("embedding", "embed")})
    err = _run_fails(capsys, "run", str(write_suite(in_tmp, backbone={**backbone, "checkpoint": "renamed.pth"})),
                     "--dry-run")
    assert "does not fit the backbone" in err and "1 missing" in err and "Possible renames" in err
    _micro_checkpoint(in_tmp / "shape.pth", reshape=key)
    err = _run_fails(capsys, "run", str(write_suite(in_tmp, backbone={**backbone, "checkpoint": "shape.pth"})))
    assert "wrong shape" in err and key in err

    assert main(["run", str(write_suite(in_tmp, backbone={**backbone, "checkpoint": "ok.pth"})), "--dry-run"]) == 0


def test_dry_run_notes_missing_real_data_but_lists_the_trials(in_tmp, capsys, monkeypatch):
    monkeypatch.delenv("SCANNET_ROOT", raising=False)
    path = write_suite(in_tmp, datasets=[{"name": "scannet", "root": "${SCANNET_ROOT}"}])
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "note: not checked before a run:" in out and "SCANNET_ROOT" in out and "1 trials" in out
    assert "SCANNET_ROOT" in _run_fails(capsys, "run", str(path))


def _scene(root, name: str, coord: np.ndarray) -> None:
    folder = root / "train" / name
    folder.mkdir(parents=True)
    np.save(folder / "coord.npy", coord.astype(np.float32))
    np.save(folder / "color.npy", np.zeros((len(coord), 3), np.uint8))
    np.save(folder / "segment.npy", np.zeros(len(coord), np.int64))


@pytest.mark.parametrize("coord, expected", [
    (np.zeros((0, 3)), "scene train/bad: coord.npy holds no points"),
    (np.array([[0, 0, 0], [np.nan, 1, 1], [np.inf, 0, 0]]), "scene train/bad: coord.npy has 2 of 3 points with NaN/Inf"),
])
def test_reader_and_data_check_refuse_empty_and_non_finite_scenes(tmp_path, coord, expected):
    _scene(tmp_path, "bad", coord)
    _scene(tmp_path, "good", np.random.default_rng(0).random((10, 3)))
    dataset = SceneFolderDataset(tmp_path, "train", num_classes=2)
    assert len(dataset[1]["coord"]) == 10
    with pytest.raises(PeftbenchError, match=expected):
        dataset[0]
    result = inspect_dataset(tmp_path, "synthetic")
    assert not result.ok and any(expected in p for p in result.problems)
    assert "no problems found" not in result.text
