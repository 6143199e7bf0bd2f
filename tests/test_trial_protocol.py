"""One trial end to end (no MLflow): schedule logged, best-validation test, split source tagged."""

from __future__ import annotations

import json

import pytest
import yaml

from peftbench.cli import main
from tests.conftest import MICRO

SUITE = {
    "name": "protocol",
    "backbone": {"config": "tiny", "checkpoint": None,
                 "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO.items()}},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 4, "val": 1},
                  "points_per_m2": 15}],
    "splits": ["points-20"],
    "methods": [{"name": "gem", "settings": {"rank": 2}}],
    "seeds": [0],
    "train": {"epochs": 2, "batch_size": 4, "accumulate": 2, "grid_size": 0.1, "test_checkpoint": "best"},
}


@pytest.mark.slow
def test_trial_logs_schedule_best_epoch_and_seeded_split(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    assert main(["run", "suite.yaml", "--dry-run"]) == 0
    assert "4 scenes / batch 4 (2 x 2) = 1 steps per epoch, 2 steps" in capsys.readouterr().out
    assert main(["train", "suite.yaml", "--method", "gem", "--seed", "0", "--out", "out"]) == 0
    console = capsys.readouterr().out
    assert "seeded subset" in console
    result = json.loads(next((tmp_path / "out").glob("*/result.json")).read_text())
    assert result["status"] == "FINISHED"
    assert result["tags"]["peftbench.split_source"] == "seeded"
    metrics = result["metrics"]
    assert metrics["schedule/steps_per_epoch"] == 1 and metrics["schedule/total_steps"] == 2
    assert metrics["schedule/micro_batch"] == 2
    assert metrics["test/checkpoint_epoch"] in (1, 2)
    history = [json.loads(line) for line in next((tmp_path / "out").glob("*/history.jsonl")).read_text().splitlines()]
    best = max(history, key=lambda h: h["val/mIoU"])
    assert metrics["test/checkpoint_epoch"] == best["step"] and metrics["test/mIoU"] == best["val/mIoU"]


@pytest.mark.slow
def test_fewer_training_scenes_than_a_batch_still_train(tmp_path, monkeypatch):
    # `scenes-25` of 4 training scenes is one scene, batch 2: the schedule plans one step per epoch,
    # and that step must be taken (it used to be dropped as a partial batch: loss 0, nothing learnt).
    monkeypatch.chdir(tmp_path)
    suite = {**SUITE, "splits": ["scenes-25"], "methods": ["linear"],
             "train": {"epochs": 2, "batch_size": 2, "grid_size": 0.1}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["train", "suite.yaml", "--method", "linear", "--seed", "0", "--out", "out"]) == 0
    result = json.loads(next((tmp_path / "out").glob("*/result.json")).read_text())
    assert result["metrics"]["schedule/scenes"] == 1 and result["metrics"]["schedule/total_steps"] == 2
    history = [json.loads(line) for line in next((tmp_path / "out").glob("*/history.jsonl")).read_text().splitlines()]
    assert all(h["train/loss"] > 0 for h in history), history
