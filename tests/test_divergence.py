"""A diverged training ends FAILED with its cause, exit 1, and runs again (issue 11 §1)."""

from __future__ import annotations

import math

import pytest

from peftbench.cli import main
from peftbench.train.config import TrainConfig
from peftbench.train.guard import DivergenceGuard, TrainingDiverged
from tests.reliability_suite import runs, write_suite


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_with_where_and_what_to_change(loss):
    guard = DivergenceGuard(TrainConfig(lr=1e30))
    guard.check(2.5, epoch=0, step=0)
    with pytest.raises(TrainingDiverged, match=rf"loss became {loss} at epoch 3 step 12; lower train.lr \(now 1e\+30\)"):
        guard.check(loss, epoch=2, step=11)


def test_only_consecutive_amp_skips_count():
    guard = DivergenceGuard(TrainConfig(), max_skipped=3)
    for step in range(10):  # skipped every other step: AMP finding its scale, not a divergence
        guard.check(1.0, 0, step, skipped=step % 2 == 0)
    guard.check(1.0, 0, 10, skipped=True)
    guard.check(1.0, 0, 11, skipped=True)
    with pytest.raises(TrainingDiverged, match="non-finite for 3 steps in a row .* up to epoch 1 step 13"):
        guard.check(1.0, 0, 12, skipped=True)


@pytest.mark.slow
def test_diverged_trial_is_failed_with_its_cause_and_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    suite = write_suite(tmp_path, train={"lr": 1.0e30, "epochs": 3})
    assert main(["run", str(suite), "--sequential", "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "FAILED linear/synthetic-target/full/s0: loss became nan at epoch" in out
    [run] = runs(uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["peftbench.error"].startswith("loss became nan at epoch")
    assert "lower train.lr (now 1e+30)" in run.data.tags["peftbench.error"]
    assert "test/mIoU" not in run.data.metrics

    assert main(["run", str(suite), "--sequential", "--tracking-uri", uri]) == 1  # not skipped: runs again
    assert "already FINISHED" not in capsys.readouterr().out
    assert sorted(r.info.status for r in runs(uri)) == ["FAILED", "FAILED"]
