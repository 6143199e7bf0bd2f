"""Fold groups (S3DIS 6-fold) are scored from summed confusion matrices, not averaged mIoU."""

from __future__ import annotations

import numpy as np

from peftbench.report import load_runs, write_report
from peftbench.report.folds import add_fold_rows
from peftbench.tracking import TrialRun, ensure_experiment
from peftbench.train.metrics import scores_from_confusion

FOLDS = {
    "area-a": np.array([[8, 2], [0, 0]]),      # class 1 absent: this fold alone has mIoU 0.4
    "area-b": np.array([[1, 0], [1, 8]]),
}


def _log(uri: str, dataset: str, matrix: np.ndarray, status_ok: bool = True) -> None:
    tags = {"peftbench.kind": "trial", "peftbench.method": "gem", "peftbench.dataset": dataset,
            "peftbench.split": "full", "peftbench.seed": "0", "peftbench.dataset_group": "six-fold",
            "peftbench.fingerprint": dataset}
    with TrialRun(uri, "folds", f"gem/{dataset}", tags, {"method.name": "gem"}) as run:
        scores = scores_from_confusion(matrix)
        run.log_metrics({"test/mIoU": scores["mIoU"], "params/trainable": 10, "params/total": 100,
                         "params/trainable_pct": 10.0})
        run.log_dict({"classes": ["floor", "wall"], "matrix": matrix.tolist()}, "confusion_matrix.json")


def test_group_score_sums_confusions(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_experiment(uri, "folds")
    for dataset, matrix in FOLDS.items():
        _log(uri, dataset, matrix)
    runs = add_fold_rows(uri, load_runs(uri, "folds"))
    combined = runs[runs["kind"] == "combined"]
    assert combined["dataset"].tolist() == ["six-fold"]
    expected = scores_from_confusion(sum(FOLDS.values()))["mIoU"]
    mean_of_folds = np.mean([scores_from_confusion(m)["mIoU"] for m in FOLDS.values()])
    assert abs(combined["test/mIoU"].iloc[0] - expected) < 1e-12
    assert abs(expected - mean_of_folds) > 0.05  # the two rules really differ here
    write_report(uri, "folds", tmp_path / "report")
    assert "six-fold" in (tmp_path / "report" / "summary.md").read_text()


def test_incomplete_group_has_no_score(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_experiment(uri, "folds")
    _log(uri, "area-a", FOLDS["area-a"])
    try:
        with TrialRun(uri, "folds", "gem/area-b", {"peftbench.kind": "trial", "peftbench.method": "gem",
                                                 "peftbench.dataset": "area-b", "peftbench.seed": "0",
                                                 "peftbench.dataset_group": "six-fold"}, {}):
            raise RuntimeError("fold crashed")
    except RuntimeError:
        pass
    runs = add_fold_rows(uri, load_runs(uri, "folds"))
    assert (runs["kind"] == "combined").sum() == 0
