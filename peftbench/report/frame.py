"""MLflow -> tidy pandas DataFrames. Reports read MLflow only; they never re-run anything."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench import tracking
from peftbench.errors import PeftbenchError

# Identity columns of a run, in the order tables and CSVs show them.
RUN_COLUMNS = [
    "run_id", "run_name", "status", "kind", "suite", "method", "dataset", "group", "split", "seed",
    "fingerprint", "start_time", "end_time", "duration_s", "error", "hardware", "gpu_ids",
    "split_source", "report_layout", "stage", "search_choice",
]
HISTORY_COLUMNS = ["run_id", "status", "method", "dataset", "split", "seed", "step", "value"]
# Metric column order: what a reader wants first.
_METRIC_PREFIX_ORDER = ["test/", "params/", "eff/", "time/", "val/", "train/"]
_TAG = "peftbench."


def experiment_names(c: Any) -> list[str]:
    """Names of all active experiments, sorted (for fix-it messages)."""
    names: list[str] = []
    token = None
    while True:
        page = c.search_experiments(max_results=1000, page_token=token)
        names += [e.name for e in page]
        token = page.token
        if not token:
            return sorted(names)


def experiment_id(uri: str, experiment: str) -> str:
    """Id of an existing experiment; PeftbenchError listing the existing names otherwise."""
    uri = tracking.resolve_tracking_uri(uri)
    tracking.check_reachable(uri, must_exist=True)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = experiment_names(c)
        listing = ", ".join(repr(n) for n in names) if names else "(none)"
        raise PeftbenchError(
            f"no MLflow experiment named {experiment!r} at {uri}; existing experiments: {listing} "
            f"(pass one of them as --experiment)"
        )
    return exp.experiment_id


def _metric_sort_key(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(_METRIC_PREFIX_ORDER):
        if name.startswith(prefix):
            return i, name
    return len(_METRIC_PREFIX_ORDER), name


def _row(run: Any) -> dict[str, Any]:
    info, tags, params = run.info, run.data.tags, run.data.params
    start, end = info.start_time, info.end_time
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "kind": tags.get(_TAG + "kind"),
        "suite": tags.get(_TAG + "suite"),
        # Tags are the contract; params are a fallback for runs logged by hand.
        "method": tags.get(_TAG + "method", params.get("method.name")),
        "dataset": tags.get(_TAG + "dataset", params.get("dataset.name")),
        "group": tags.get(_TAG + "dataset_group"),
        "split": tags.get(_TAG + "split", "full"),
        "seed": tags.get(_TAG + "seed", params.get("seed")),
        "fingerprint": tags.get(_TAG + "fingerprint"),
        "start_time": pd.to_datetime(start, unit="ms", utc=True) if start else pd.NaT,
        "end_time": pd.to_datetime(end, unit="ms", utc=True) if end else pd.NaT,
        "duration_s": (end - start) / 1000.0 if start and end else float("nan"),
        "error": tags.get(_TAG + "error"),
        # Older runs lack the hardware tag; the device model or Ray's placement tag still name the GPU.
        "hardware": tags.get(_TAG + "hardware") or _gpu_name(tags.get(_TAG + "device_model"))
        or tags.get(_TAG + "gpu_name"),
        "gpu_ids": tags.get(_TAG + "gpu_ids"),
        "split_source": tags.get(_TAG + "split_source"),  # seeded | official (absent on older runs)
        "report_layout": tags.get(_TAG + "report"),        # the suite's `report:` block as JSON
        "stage": tags.get(_TAG + "stage"),                  # search | final (absent: no search)
        "search_choice": tags.get(_TAG + "search_choice"),  # a final run's chosen setting (JSON)
    }
    row.update(run.data.metrics)
    return row


def _gpu_name(device_model: str | None) -> str | None:
    return None if device_model in (None, "", "cpu") else device_model  # "cpu" says less than nothing


def _runs(uri: str, experiment: str, kind: str | None) -> list[Any]:
    exp_id = experiment_id(uri, experiment)
    flt = f"tags.`{_TAG}kind` = '{kind}'" if kind else ""
    return tracking.iter_runs(tracking.client(tracking.resolve_tracking_uri(uri)), exp_id, flt)


def load_runs(uri: str, experiment: str, kind: str = "trial") -> pd.DataFrame:
    """One row per run (oldest first): identity columns, then every metric's last value.

    ``kind=None``/``""`` loads runs of every kind. Unknown experiment -> PeftbenchError.
    """
    rows = [_row(r) for r in _runs(uri, experiment, kind)]
    df = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    metrics = sorted((c for c in df.columns if c not in RUN_COLUMNS), key=_metric_sort_key)
    df = df[RUN_COLUMNS + metrics]
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df.reset_index(drop=True)


def load_histories(uri: str, experiment: str, metric: str = "val/mIoU") -> pd.DataFrame:
    """Per-step values of ``metric`` for every trial run: one row per (run, step)."""
    return histories_of(uri, load_runs(uri, experiment), metric)


def histories_of(uri: str, runs: pd.DataFrame, metric: str = "val/mIoU") -> pd.DataFrame:
    """Like ``load_histories`` for an already loaded ``load_runs`` frame (one search less)."""
    c = tracking.client(tracking.resolve_tracking_uri(uri))
    rows: list[dict[str, Any]] = []
    for run in runs.itertuples(index=False):
        # Keep runs in load order (oldest first) so panels/legends follow the suite's order.
        history = c.get_metric_history(run.run_id, metric)
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            rows.append({
                "run_id": run.run_id, "status": run.status, "method": run.method,
                "dataset": run.dataset, "split": run.split, "seed": run.seed,
                "step": m.step, "value": m.value,
            })
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def class_names(uri: str, runs: pd.DataFrame) -> dict[str, list[str]]:
    """Class order per dataset, from one finished run's ``confusion_matrix.json``.

    MLflow does not keep the order in which metrics were logged, so ``test/iou/*`` columns alone
    would sort classes alphabetically. Falls back to column order if the artifact is unreadable.
    """
    tracking.import_mlflow()  # lazy and quiet: see peftbench.tracking
    import mlflow.artifacts

    uri = tracking.resolve_tracking_uri(uri)
    out: dict[str, list[str]] = {}
    finished = runs[runs["status"] == "FINISHED"]
    for dataset, group in finished.groupby("dataset", sort=False):
        iou_cols = [c for c in group.columns if c.startswith("test/iou/") and group[c].notna().any()]
        fallback = [c[len("test/iou/"):] for c in iou_cols]
        try:
            with tempfile.TemporaryDirectory(prefix="peftbench-report-") as tmp:
                path = mlflow.artifacts.download_artifacts(
                    run_id=group["run_id"].iloc[-1], artifact_path="confusion_matrix.json",
                    dst_path=tmp, tracking_uri=uri,
                )
                classes = [str(k) for k in json.loads(Path(path).read_text())["classes"]]
        except Exception:  # noqa: BLE001 - missing artifact: fall back, the report still works
            classes = []
        known = [k for k in classes if k in fallback]
        out[str(dataset)] = known + [k for k in fallback if k not in known]
    return out
