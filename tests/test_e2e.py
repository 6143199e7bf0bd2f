"""End to end on a micro suite: pretrain -> Ray Tune trials -> MLflow -> resume -> report."""

from __future__ import annotations

import pytest
import yaml

from peftbench.cli import main
from tests.conftest import MICRO

SUITE = {
    "name": "e2e",
    "backbone": {"config": "tiny", "checkpoint": "pretrain", "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                                          for k, v in MICRO.items()}},
    "pretrain": {"dataset": {"name": "synthetic", "domain": "source", "root": "data/src",
                             "scenes": {"train": 2, "val": 1}, "points_per_m2": 15},
                 "train": {"epochs": 1, "batch_size": 2, "grid_size": 0.1}},
    "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 2, "val": 1},
                  "points_per_m2": 15}],
    "methods": ["linear", {"name": "gem", "settings": {"rank": 2}}],
    "seeds": [0],
    "train": {"epochs": 2, "batch_size": 2, "grid_size": 0.1},
}


@pytest.fixture
def suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


def _runs(uri: str, experiment: str):
    from peftbench import tracking

    client = tracking.client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.parametrize("executor", [["--sequential"], []], ids=["sequential", "ray"])
def test_suite_runs_tracks_resumes_and_reports(suite_file, tmp_path, capsys, executor):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", str(suite_file), "--tracking-uri", uri, *executor]) == 0
    client, runs = _runs(uri, "e2e")
    trials = [r for r in runs if r.data.tags["peftbench.kind"] == "trial"]
    assert sorted(r.data.tags["peftbench.method"] for r in trials) == ["gem", "linear"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 3  # + pretraining stage
    gem = next(r for r in trials if r.data.tags["peftbench.method"] == "gem")
    assert gem.data.params["method.settings.rank"] == "2"
    assert all(r.data.tags.get("peftbench.hardware") for r in trials)  # reports group ratios by it
    assert 0 <= gem.data.metrics["test/mIoU"] <= 1 and gem.data.metrics["params/trainable"] > 0
    assert len(client.get_metric_history(gem.info.run_id, "train/loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(gem.info.run_id)}
    assert {"config.json", "confusion_matrix.json", "method_weights.pt"} <= artifacts
    assert list((tmp_path / ".cache/peftbench/pretrain").glob("tiny-*.pth"))

    capsys.readouterr()
    assert main(["run", str(suite_file), "--tracking-uri", uri, *executor]) == 0
    assert "2 of 2 trials already FINISHED" in capsys.readouterr().out
    assert len(_runs(uri, "e2e")[1]) == 3

    assert main(["report", "e2e", "--tracking-uri", uri]) == 0
    report = tmp_path / "reports" / "e2e"
    summary = (report / "summary.md").read_text()
    assert "| gem |" in summary and "| linear |" in summary
    assert (report / "miou_vs_params.png").stat().st_size > 5000
    kinds = sorted(r.data.tags["peftbench.kind"] for r in _runs(uri, "e2e")[1])
    assert kinds == ["pretrain", "report", "trial", "trial"]  # the report is logged as its own run
