"""scripts/amp_check.py runs on CPU with the tiny backbone, without MLflow or Ray, and writes JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_amp_check_on_cpu_without_mlflow_or_ray(tmp_path):
    out = tmp_path / "amp.json"
    args = [str(out), "--backbone", "tiny", "--points", "300", "--batch-sizes", "1", "--methods", "gem",
            "--sweep-dtypes", "bfloat16", "--steps", "0", "--device", "cpu"]
    code = ("import runpy, sys; sys.modules['mlflow'] = None; sys.modules['ray'] = None; "  # importing either fails
            f"sys.argv = ['amp_check.py', *{args!r}]; runpy.run_path({str(ROOT / 'scripts/amp_check.py')!r}, "
            "run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=600)
    report = json.loads(out.read_text())
    accuracy = report["accuracy"]
    assert set(accuracy) == {"float32", "float16", "bfloat16"}
    for dtype in ("float16", "bfloat16"):
        assert accuracy[dtype]["grad_finite"] and 0 <= accuracy[dtype]["grad_rel_err"] < 0.5
        assert accuracy[dtype]["loss_rel_err"] < 0.05 and accuracy[dtype]["step_ms"] > 0
    assert report["suggested_amp_dtype"].split()[0] in ("float16", "bfloat16")
    [row] = report["sweep"]
    assert row["method"] == "gem" and row["batch_size"] == 1 and row["train_ms"] > 0 and row["points"] > 0
