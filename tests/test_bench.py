"""``peftbench bench`` rows: fixed point counts, per-method trainable sizes, positive timings."""

from __future__ import annotations

from peftbench.bench import bench_method, format_rows, synthetic_batch
from tests.conftest import MICRO


def test_bench_rows_on_cpu():
    import torch

    batch = synthetic_batch(points=1500, batch_size=2, grid_size=0.1)
    assert batch["offset"].tolist() == [1500, 3000]
    rows = [bench_method("tiny", m, batch, torch.device("cpu"), steps=1, amp=False, overrides=MICRO,
                         settings={"rank": 2} if m == "gem" else None) for m in ("linear", "gem")]
    assert rows[0]["trainable"] < rows[1]["trainable"] < rows[1]["total"]
    assert all(r["points"] == 3000 and r["infer_ms"] > 0 and r["train_ms"] > 0 for r in rows)
    assert "gem" in format_rows(rows)
