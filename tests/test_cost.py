"""GPU-hours: expected by ``run --dry-run`` (MLflow runs, else bench records, else unknown) and spent per run."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from peftbench import cost
from peftbench.cli import main
from peftbench.hardware import hardware_name
from tests.conftest import micro_suite

SUITE = micro_suite("priced", train_scenes=4, seeds=[0, 1], train={"epochs": 3, "batch_size": 2, "grid_size": 0.1})
BIG_EPOCHS = 50000  # priced, never run: makes the expected hours large enough to compare
STEPS = 2 * BIG_EPOCHS * (4 // 2)  # seeds x epochs x steps per epoch


def _total_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith("total"))


def test_gpu_hours_spent_is_train_time_times_gpus_held():
    assert cost.gpu_hours({"time/train_s": 7200.0, "cost/gpus": 0.5}) == 1.0
    assert cost.gpu_hours({"time/train_s": 7200.0, "cost/gpus": 0.0}) == 0.0
    assert pd.isna(cost.gpu_hours({"time/train_s": 7200.0}))
    runs = pd.DataFrame([{"method": "gem", "time/train_s": 3600.0, "cost/gpus": 8.0},
                         {"method": "gem", "time/train_s": 1800.0, "cost/gpus": 8.0},
                         {"method": "linear", "time/train_s": 3600.0, "cost/gpus": float("nan")}])
    table = cost.gpu_hours_by_method(runs).set_index("method")
    assert table.loc["gem", "gpu_hours"] == 12.0 and table.loc["gem", "runs"] == 2
    assert table.loc["linear", "unknown"] == 1 and table.loc["total", "gpu_hours"] == 12.0


@pytest.mark.slow
def test_dry_run_prices_from_bench_records_then_from_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SUITE))
    (tmp_path / "big.yaml").write_text(yaml.safe_dump({**SUITE, "train": {**SUITE["train"], "epochs": BIG_EPOCHS}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    assert main(["run", "s.yaml", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "unknown: no step time" in out and "unknown" in _total_line(out)
    assert not (tmp_path / "mlflow.db").exists()  # pricing does not create a database

    assert main(["bench", "--backbone", "tiny", "--methods", "linear", "--points", "1500", "--batch-size", "2",
                 "--steps", "1", "--grid-size", "0.1", "--out", "bench.json"]) == 0
    bench_ms = json.loads((tmp_path / "bench.json").read_text())["rows"][0]["train_ms"]
    capsys.readouterr()
    assert main(["run", "big.yaml", "--dry-run", "--tracking-uri", uri, "--bench", "bench.json"]) == 0
    out = capsys.readouterr().out
    here = hardware_name()  # one name for the hardware, as runs record it and bench records it
    assert f"bench records (bench.json on {here})" in out and f"{STEPS} steps" in out
    hours = float(re.search(r"([\d.]+) h", _total_line(out)).group(1))
    assert hours == pytest.approx(STEPS * bench_ms / 3.6e6, abs=0.006) and hours > 0.5

    assert main(["run", "s.yaml", "--sequential", "--tracking-uri", uri]) == 0
    from peftbench.report import load_runs

    runs = load_runs(uri, "priced")
    assert (runs["cost/gpus"] == 0).all()  # CPU runs hold no GPU
    assert cost.gpu_hours_by_method(runs).set_index("method").loc["total", "gpu_hours"] == 0.0
    capsys.readouterr()
    assert main(["run", "big.yaml", "--dry-run", "--tracking-uri", uri, "--bench", "bench.json"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert f"MLflow (2 finished runs on {here})" in out  # finished runs come before bench records
    assert set(runs["hardware"]) == {here}
    step_ms = runs["eff/step_time_ms"].median()
    assert f"{step_ms:.0f} ms/step" in out
    hours = float(re.search(r"([\d.]+) h", _total_line(out)).group(1))
    assert hours == pytest.approx(STEPS * step_ms / 3.6e6, abs=0.006)


def test_a_step_of_accumulated_passes_is_priced_from_the_per_pass_time():
    spec = {"method": {"name": "gem", "label": "gem"}, "backbone": {"config": "sonata"}, "dataset": {},
            "train": {"epochs": 100, "steps_per_epoch": 50, "batch_size": 24, "accumulate": 8, "data_parallel": 1}}
    times = cost.StepTimes("bench records (b.json on H100)", {("gem", "sonata", 3): 450.0})  # batch 3 per pass
    row = cost.expected_cost([spec], 1.0, [times])[0]
    assert row["step_ms"] == 8 * 450.0 and row["hours"] == pytest.approx(5000 * 3.6 / 3600)
    spec["train"]["data_parallel"], spec["train"]["accumulate"] = 8, 1  # 8 GPUs x 3 scenes: one pass per step
    row = cost.expected_cost([spec], 8.0, [times])[0]
    assert row["step_ms"] == 450.0 and row["hours"] == pytest.approx(5000 * 0.45 * 8 / 3600)


def test_steps_are_counted_even_without_a_step_time():
    """The dry run printed "0 steps" for every method of a suite that had never run (no step time)."""
    spec = {"method": {"name": "gem", "label": "gem"}, "backbone": {"config": "tiny"}, "dataset": {},
            "train": {"epochs": 28, "steps_per_epoch": 4, "batch_size": 2}}
    row = cost.expected_cost([spec, spec], 0.0, [])[0]
    assert row["steps"] == 2 * 28 * 4 and row["hours"] is None
    assert f"{2 * 28 * 4} steps" in cost.format_cost([row], 0.0, "cpu")


def test_bench_records_match_by_hardware_name_and_older_cpu_records_match_any_cpu(tmp_path):
    rows = [{"method": "gem", "train_ms": 100.0}]
    args = {"backbone": "tiny", "batch_size": 2}
    records = {"h200.json": {"hardware": "NVIDIA H200", "gpu": "NVIDIA H200", "args": args, "rows": rows},
               "old-cpu.json": {"gpu": None, "args": args, "rows": rows}}  # before the hardware key
    for name, record in records.items():
        (tmp_path / name).write_text(json.dumps(record))
    paths = [str(tmp_path / name) for name in records]
    assert cost.step_times_from_bench(paths, "NVIDIA H200").source == "bench records (h200.json on NVIDIA H200)"
    cpu = "CPU: AMD EPYC (2 threads)"
    assert cost.step_times_from_bench(paths, cpu).source == f"bench records (old-cpu.json on {cpu})"
