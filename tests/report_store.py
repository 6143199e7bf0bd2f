"""A small synthetic MLflow store for report tests: run records only, no training.

Experiment ``bench``: ScanNet-like ``scannet`` (full × 3 seeds, scenes-1 / scenes-10 / points-20
× 2 seeds), ``scannet200`` (one seed, no hardware tag), two S3DIS folds in group ``s3dis-6fold``,
a failed ``prompt`` trial, runs on two kinds of hardware, and a ``report:`` block with a label that
never ran. Experiment ``bench-b``: the same scannet/full trials of linear and gem, one seed, on
another GPU at half a GPU per trial, plus ``sa`` only there, chosen by a search of two runs.
"""

from __future__ import annotations

import json

import numpy as np

from peftbench.tracking import TrialRun, ensure_experiment, resolve_tracking_uri
from peftbench.train.metrics import scores_from_confusion

H200, CPU = "NVIDIA H200", "CPU: AMD EPYC (2 threads)"
PARAMS = {"linear": 24_660, "gem": 1_839_812, "lora": 1_855_572, "prompt": 5_517_396, "sa": 1_153_092}
TOTAL = 108_485_988
# scannet / full test mIoU (%) per seed: gem − linear = 3.0, 3.5, 2.5 (beyond noise);
# lora − linear = 0.5, −1.0, 1.0 (within noise).
FULL = {"linear": [70.0, 71.0, 72.0], "gem": [73.0, 74.5, 74.5], "lora": [70.5, 70.0, 73.0]}
# (hardware, method) -> (latency ms, peak MB, step ms, points/s): gem is +15 % latency on the H200
# and +20 % on the CPU; one ratio across both would be wrong.
EFF = {(H200, "linear"): (50.0, 6400.0, 100.0, 2e5), (H200, "gem"): (57.5, 7100.0, 120.0, 1.6e5),
       (H200, "lora"): (52.8, 7900.0, 110.0, 1.8e5),
       (CPU, "linear"): (500.0, 1000.0, 900.0, 1e4), (CPU, "gem"): (600.0, 1100.0, 1000.0, 9e3),
       (CPU, "lora"): (520.0, 1050.0, 950.0, 9.5e3)}
LIMITED = {"scenes-1": {"linear": 40.0, "gem": 45.0}, "scenes-10": {"linear": 60.0, "gem": 64.0},
           "points-20": {"linear": 65.0, "gem": 69.0}}
LAYOUT = {"baseline": "linear", "tables": [
    {"title": "Table 6a: SA and CA", "rows": ["linear", "gem", "sa-only"], "names": {"gem": "SA + CA"}}]}
FOLDS = {"s3dis-area5": np.array([[8, 2], [0, 5]]), "s3dis-area1": np.array([[5, 0], [1, 8]])}


def log(uri: str, experiment: str, method: str, dataset: str, split: str, seed: int, miou: float | None,
        hardware: str | None = H200, extra: dict | None = None, group: str | None = None,
        confusion: np.ndarray | None = None, eff_of: str | None = None, metrics: dict | None = None) -> None:
    tags = {"peftbench.kind": "trial", "peftbench.suite": "bench", "peftbench.method": method,
            "peftbench.dataset": dataset, "peftbench.split": split, "peftbench.seed": str(seed),
            "peftbench.fingerprint": f"{method}-{dataset}-{split}-{seed}",
            "peftbench.report": json.dumps(LAYOUT), **(extra or {})}
    if hardware:
        tags["peftbench.hardware"] = hardware
    if group:
        tags["peftbench.dataset_group"] = group
    try:
        with TrialRun(uri, experiment, f"{method}/{dataset}/{split}/s{seed}", tags, {}) as run:
            run.log_metrics({"params/trainable": PARAMS[method], "params/total": TOTAL,
                             "params/trainable_pct": 100 * PARAMS[method] / TOTAL})
            run.log_epoch(1, {"val/mIoU": 0.5})
            if miou is None:
                raise RuntimeError("CUDA out of memory (simulated)")
            lat, mem, step, pps = EFF.get((eff_of or hardware, method), (float("nan"),) * 4)
            run.log_metrics({"test/mIoU": miou / 100, "test/mAcc": miou / 100 + 0.1, "test/allAcc": 0.9,
                             "eff/latency_ms": lat, "eff/peak_mem_mb": mem, "eff/step_time_ms": step,
                             "eff/points_per_s": pps, "time/train_s": 3600.0, **(metrics or {})})
            if confusion is not None:
                run.log_dict({"classes": ["floor", "wall"], "matrix": confusion.tolist()}, "confusion_matrix.json")
    except RuntimeError:
        pass


def build(root) -> str:
    """Log both experiments under ``root``; returns the tracking URI."""
    uri = resolve_tracking_uri(f"sqlite:///{root}/mlflow.db")
    for exp in ("bench", "bench-b"):
        ensure_experiment(uri, exp)
    for method, values in FULL.items():
        for seed, miou in enumerate(values):
            hardware = CPU if seed == 2 else H200
            log(uri, "bench", method, "scannet", "full", seed, miou, hardware,
                extra={"peftbench.gpu_ids": "0,1"} if hardware == H200 else None)
    log(uri, "bench", "prompt", "scannet", "full", 0, None)
    for split, values in LIMITED.items():
        source = {"scenes-1": {"peftbench.split_source": "seeded"},
                  "scenes-10": {"peftbench.split_source": "official"}}.get(split)
        for method, miou in values.items():
            for seed in (0, 1):
                log(uri, "bench", method, "scannet", split, seed, miou + seed, extra=source)
    for method in ("linear", "gem"):
        log(uri, "bench", method, "scannet200", "full", 0, 30.0 if method == "linear" else 33.0, hardware=None)
        for dataset, matrix in FOLDS.items():
            log(uri, "bench", method, dataset, "full", 0, 100 * scores_from_confusion(matrix)["mIoU"],
                group="s3dis-6fold", confusion=matrix)
    half = {"cost/gpus": 0.5}  # half a GPU per trial, as logged by the trial
    for method, miou in (("linear", 71.0), ("gem", 72.0)):
        log(uri, "bench-b", method, "scannet", "full", 0, miou, hardware="NVIDIA H100", eff_of=H200, metrics=half)
    # sa went through a search: two search runs, then the final run at the chosen lr.
    for lr, miou in ((0.0006, 60.0), (0.002, 70.0)):
        log(uri, "bench-b", "sa", "scannet", "full", 0, miou, hardware="NVIDIA H100", metrics=half,
            extra={"peftbench.stage": "search", "peftbench.fingerprint": f"sa-search-{lr}"})
    log(uri, "bench-b", "sa", "scannet", "full", 0, 72.5, hardware="NVIDIA H100", eff_of=H200, metrics=half,
        extra={"peftbench.stage": "final", "peftbench.search_choice": json.dumps({"lr": 0.002})})
    return uri
