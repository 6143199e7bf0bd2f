"""Cross-validation folds in reports: datasets of one ``group`` (e.g. S3DIS 6-fold) are scored by
summing their held-out confusion matrices, as Pointcept's ``test_s3dis_6fold.py`` sums
intersection / union / target — not by averaging per-fold mIoU."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from peftbench import tracking
from peftbench.train.metrics import scores_from_confusion


def _confusion(uri: str, run_id: str) -> tuple[list[str], np.ndarray]:
    tracking.import_mlflow()
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="peftbench-folds-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="confusion_matrix.json",
                                                   dst_path=tmp, tracking_uri=uri)
        data = json.loads(Path(path).read_text())
    return data["classes"], np.asarray(data["matrix"], dtype=np.int64)


def add_fold_rows(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Append one ``kind="combined"`` row per (group, method, split, seed) whose every fold
    finished; its dataset is the group name and its test metrics come from the summed matrix."""
    if "group" not in runs or runs["group"].isna().all():
        return runs
    uri = tracking.resolve_tracking_uri(uri)
    rows = []
    grouped = runs[runs["group"].notna()]
    for group, members in grouped.groupby("group", sort=False):
        folds = members["dataset"].unique().tolist()
        for (method, split, seed), runs_of in members.groupby(["method", "split", "seed"], sort=False):
            done = runs_of[runs_of["status"] == "FINISHED"].drop_duplicates("dataset", keep="last")
            if sorted(done["dataset"]) != sorted(folds):
                continue  # a fold is missing or failed: the group score would be wrong, so none
            matrices = [_confusion(uri, rid) for rid in done["run_id"]]
            classes = matrices[0][0]
            scores = scores_from_confusion(sum(m for _, m in matrices))
            row = done.iloc[-1].to_dict()
            # Its own fingerprint: with the last fold's, de-duplication would drop that fold's run.
            row.update({"kind": "combined", "dataset": group, "run_name": f"{method}/{group}/{split}/s{seed}",
                        "fingerprint": f"{group}/{method}/{split}/s{seed}",
                        "test/mIoU": scores["mIoU"], "test/mAcc": scores["mAcc"], "test/allAcc": scores["allAcc"],
                        **{f"test/iou/{c}": v for c, v in zip(classes, scores["iou"])}})
            rows.append(row)
    return pd.concat([runs, pd.DataFrame(rows)], ignore_index=True) if rows else runs
