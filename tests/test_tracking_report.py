"""Tracking (TrialRun -> MLflow sqlite) and reports (MLflow -> tables, figures). CPU, seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench.errors import PeftbenchError
from peftbench.tracking import (
    TrialRun,
    check_reachable,
    client,
    ensure_experiment,
    finished_fingerprints,
    flatten_config,
    resolve_tracking_uri,
)

EXP = "unit"
CLASSES = ["floor", "wall", "chair"]  # deliberately not alphabetical
# (dataset, method, seed) -> test/mIoU; mAcc = mIoU + 0.1, allAcc = mIoU + 0.2
FINISHED = {
    ("synthetic-target", "full", 0): 0.780, ("synthetic-target", "full", 1): 0.786,
    ("synthetic-target", "lora", 0): 0.700, ("synthetic-target", "lora", 1): 0.720,
    ("toy-b", "full", 0): 0.500,
}
PARAMS = {"full": (1_812_480, 1_812_480), "lora": (20_480, 1_832_960), "bitfit": (812, 1_813_292)}


def _trial(uri: str, dataset: str, method: str, seed: int, miou: float | None) -> TrialRun:
    trainable, total = PARAMS[method]
    fp = f"{dataset}-{method}-{seed}"
    tags = {"peftbench.fingerprint": fp, "peftbench.suite": "unit-suite", "peftbench.kind": "trial",
            "peftbench.method": method, "peftbench.dataset": dataset, "peftbench.split": "full",
            "peftbench.seed": str(seed)}
    cfg = {"method": {"name": method, "rank": 8, "targets": ["qkv", "proj"]},
           "dataset": {"name": dataset}, "train": {"epochs": 3}, "seed": seed,
           "note": "x" * 7000}
    run = TrialRun(uri, EXP, f"unit/{dataset}/full/{method}/s{seed}", tags, cfg)
    with run:
        run.log_metrics({"params/trainable": trainable, "params/total": total,
                         "params/trainable_pct": 100 * trainable / total})
        for epoch in range(3):
            run.log_epoch(epoch, {"train/loss": 1.0 / (epoch + 1), "lr": 0.01,
                                  "val/mIoU": (miou or 0.3) * (epoch + 1) / 3})
        if miou is None:
            raise RuntimeError("CUDA out of memory (simulated)")
        per_class = {f"test/iou/{k}": miou + d for k, d in zip(CLASSES, (0.1, 0.0, -0.1))}
        run.log_metrics({"test/mIoU": miou, "test/mAcc": miou + 0.1, "test/allAcc": miou + 0.2,
                         **per_class, "eff/step_time_ms": 12.5})
        run.log_dict({"classes": CLASSES, "matrix": [[5, 1, 0], [0, 6, 1], [1, 0, 4]]},
                     "confusion_matrix.json")
        run.log_bytes(b"\x00weights\xff", "method_weights.pt")
    return run


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    uri = resolve_tracking_uri(f"sqlite:///{root}/db/mlflow.db")
    ensure_experiment(uri, EXP)
    ids = {key: _trial(uri, *key, miou).run_id for key, miou in FINISHED.items()}
    for method in ("lora", "bitfit"):  # lora seed 2 and bitfit fail; bitfit never finishes
        with pytest.raises(RuntimeError, match="out of memory"):
            _trial(uri, "synthetic-target", method, 2, None)
    with pytest.raises(KeyboardInterrupt):
        with TrialRun(uri, EXP, "killed", {"peftbench.kind": "pretrain"}, {}):
            raise KeyboardInterrupt
    return {"uri": uri, "root": root, "ids": ids}


def _status_by_name(uri: str) -> dict[str, str]:
    c = client(uri)
    exp = c.get_experiment_by_name(EXP)
    return {r.info.run_name: r.info.status for r in c.search_runs([exp.experiment_id])}


def test_statuses_and_resume_fingerprints(logged: dict) -> None:
    statuses = _status_by_name(logged["uri"])
    assert statuses["unit/synthetic-target/full/full/s0"] == "FINISHED"
    assert statuses["unit/synthetic-target/full/lora/s2"] == "FAILED"
    assert statuses["unit/synthetic-target/full/bitfit/s2"] == "FAILED"
    assert statuses["killed"] == "KILLED"
    expected = {f"{d}-{m}-{s}" for d, m, s in FINISHED}
    assert finished_fingerprints(logged["uri"], EXP) == expected
    assert finished_fingerprints(logged["uri"], "no-such-experiment") == set()


def test_params_metrics_artifacts_retrievable(logged: dict) -> None:
    c = client(logged["uri"])
    run = c.get_run(logged["ids"][("synthetic-target", "lora", 1)])
    assert run.data.params["method.rank"] == "8"
    assert run.data.params["method.targets"] == '["qkv", "proj"]'
    assert len(run.data.params["note"]) == 6000  # truncated to MLflow's limit, not rejected
    assert run.data.metrics["test/mIoU"] == pytest.approx(0.72)
    history = c.get_metric_history(run.info.run_id, "val/mIoU")
    assert [m.step for m in history] == [0, 1, 2]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.json", "method_weights.pt"} <= artifacts
    # Artifacts live next to the database, not relative to the working directory.
    assert run.info.artifact_uri.startswith(str(logged["root"] / "db" / "mlartifacts"))
    weights = Path(c.download_artifacts(run.info.run_id, "method_weights.pt", str(logged["root"])))
    assert weights.read_bytes() == b"\x00weights\xff"
    failed = [r for r in c.search_runs([run.info.experiment_id])
              if r.info.run_name == "unit/synthetic-target/full/lora/s2"][0]
    assert failed.data.tags["peftbench.error"] == "RuntimeError: CUDA out of memory (simulated)"
    tb = Path(c.download_artifacts(failed.info.run_id, "traceback.txt", str(logged["root"])))
    assert "Traceback" in tb.read_text() and "out of memory" in tb.read_text()


def test_load_runs_and_histories(logged: dict) -> None:
    from peftbench.report import load_histories, load_runs

    runs = load_runs(logged["uri"], EXP)
    assert len(runs) == 7  # 5 finished + 2 failed; the KILLED run is kind=pretrain
    for col in ["run_id", "status", "method", "dataset", "split", "seed", "fingerprint", "suite",
                "start_time", "end_time", "test/mIoU", "test/iou/chair", "params/trainable",
                "params/trainable_pct", "eff/step_time_ms"]:
        assert col in runs.columns, col
    row = runs[runs["fingerprint"] == "synthetic-target-full-1"].iloc[0]
    assert (row["method"], row["seed"], row["status"]) == ("full", 1, "FINISHED")
    assert row["test/mIoU"] == pytest.approx(0.786)
    assert set(runs.loc[runs["status"] == "FAILED", "method"]) == {"lora", "bitfit"}
    assert len(load_runs(logged["uri"], EXP, kind="pretrain")) == 1
    hist = load_histories(logged["uri"], EXP)
    assert list(hist.columns[:2]) == ["run_id", "status"]
    assert len(hist) == 7 * 3 and sorted(hist["step"].unique()) == [0, 1, 2]


def test_summary_table_values(logged: dict) -> None:
    from peftbench.report import load_runs, summary_table

    runs = load_runs(logged["uri"], EXP)
    table = summary_table(runs, ["test/mIoU", "test/mAcc"], method_order=["lora"])
    syn = table[table["dataset"] == "synthetic-target"].set_index("method")
    assert list(syn.index) == ["lora", "full", "bitfit"]  # given order first, then appearance
    assert syn.loc["full", "mIoU"] == "78.3 ± 0.4"
    assert syn.loc["lora", "mIoU"] == "71.0 ± 1.4"
    assert syn.loc["lora", "mAcc"] == "81.0 ± 1.4"
    assert syn.loc["lora", "mIoU_mean"] == pytest.approx(71.0)
    assert (syn.loc["lora", "seeds"], syn.loc["lora", "failed"]) == (2, 1)
    assert syn.loc["bitfit", "mIoU"] == "failed (1)"  # failed runs are visible, not dropped
    assert syn.loc["bitfit", "trainable_params_h"] == "812"
    assert (syn.loc["lora", "trainable_params"], syn.loc["lora", "trainable_params_h"]) == (
        20_480, "0.02M")
    assert syn.loc["full", "trainable_params_h"] == "1.8M"
    assert syn.loc["full", "trainable_pct_h"] == "100.0"
    assert syn.loc["lora", "trainable_pct_h"] == "1.1"
    toy = table[table["dataset"] == "toy-b"].set_index("method")
    assert toy.loc["full", "mIoU"] == "50.0"  # one seed: no ± part
    assert toy.loc["lora", "mIoU"] == "—"  # never run there: shown as missing


def test_write_report(logged: dict, tmp_path: Path) -> None:
    from peftbench.report import write_report

    out = tmp_path / "report"
    paths = write_report(logged["uri"], EXP, out)
    names = {p.name for p in paths}
    stems = ["miou_vs_params", "miou_vs_latency", "miou_vs_memory", "curves", "per_class_iou", "significance",
             "cross_dataset"]
    expected = {"summary.md", "summary.csv", "summary.tex", "runs.csv", "index.html", "efficiency.csv",
                "significance.csv"}
    expected |= {f"{s}.{ext}" for s in stems for ext in ("png", "svg")}
    assert names == expected
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0, p
    for s in ["miou_vs_params", "curves", "per_class_iou"]:
        assert (out / f"{s}.png").stat().st_size > 5_000, s
        assert (out / f"{s}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "| **78.3 ± 0.4** |" in md and "failed (1)" in md and "![" in md
    assert "| method | floor | wall | chair |" in md  # class order from confusion_matrix.json
    assert "CUDA out of memory" in md  # failed runs listed with their error
    tex = (out / "summary.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{78.3 $\pm$ 0.4}" in tex and "synthetic-target" in tex
    assert len((out / "runs.csv").read_text().splitlines()) == 8


def test_unknown_experiment_lists_names(logged: dict) -> None:
    from peftbench.report import load_runs, write_report

    with pytest.raises(PeftbenchError, match=r"no MLflow experiment named 'nope'.*'unit'"):
        load_runs(logged["uri"], "nope")
    with pytest.raises(PeftbenchError, match="no MLflow database"):
        write_report(f"sqlite:///{logged['root']}/missing.db", EXP, logged["root"] / "r")
    ensure_experiment(logged["uri"], "empty")
    with pytest.raises(PeftbenchError, match="has no trial runs"):
        write_report(logged["uri"], "empty", logged["root"] / "r")


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cwd = Path.cwd().resolve()
    assert resolve_tracking_uri(None) == f"sqlite:///{cwd}/mlflow.db"
    assert resolve_tracking_uri(None).startswith("sqlite:////")
    assert resolve_tracking_uri("sqlite:///runs/x.db") == f"sqlite:///{cwd}/runs/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5055/") == "http://127.0.0.1:5055"
    for bad in ["file:///tmp/mlruns", "./mlruns", "/tmp/mlflow.db", "sqlite://", "ftp://host/x"]:
        with pytest.raises(PeftbenchError, match="sqlite"):
            resolve_tracking_uri(bad)
    with pytest.raises(PeftbenchError, match="cannot reach the MLflow server"):
        check_reachable("http://127.0.0.1:9")  # discard port: refused at once


def test_flatten_config() -> None:
    flat = flatten_config({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": "1", "a.c.d": "None", "e": "[1, 2]", "f": "{}"}


def test_imports_without_mlflow() -> None:
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "import peftbench.tracking, peftbench.report\n"
            "from peftbench.tracking import client\n"
            "try:\n    client('sqlite:////tmp/x.db')\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.startswith("PeftbenchError mlflow is not installed"), out.stdout + out.stderr


def test_confusion_matrix_shape(logged: dict) -> None:
    c = client(logged["uri"])
    run_id = logged["ids"][("toy-b", "full", 0)]
    path = Path(c.download_artifacts(run_id, "confusion_matrix.json", str(logged["root"])))
    data = json.loads(path.read_text())
    assert data["classes"] == CLASSES and len(data["matrix"]) == 3
