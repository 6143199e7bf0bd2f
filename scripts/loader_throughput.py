#!/usr/bin/env python
"""Scenes per second of a suite's training loader (its dataset, recipe, micro-batch), per worker count.

Reads batches as the trainer would, with nothing consuming them, and reports the first-batch
latency of each epoch (workers starting cold) and the steady rate after it, to compare with what
a training step consumes (scenes per batch / step time).

    python scripts/loader_throughput.py suites/gpu_smoke.yaml --workers 2 6 12 --epochs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftbench.data.sources import batches, build_train_set, prepare_dataset  # noqa: E402
from peftbench.schema import build  # noqa: E402
from peftbench.suite import load_suite, trial_specs  # noqa: E402
from peftbench.train.config import TrainConfig  # noqa: E402


def measure(train_set, cfg: TrainConfig, workers: int, epochs: int, seed: int = 0) -> dict:
    first, steady, scenes = [], [], 0
    for epoch in range(epochs):
        last = time.perf_counter()
        for i, batch in enumerate(batches(train_set, cfg.micro_batch, True, seed, epoch, True, workers, cfg.mix_prob)):
            now = time.perf_counter()
            (first if i == 0 else steady).append(now - last)
            last = now
            scenes += cfg.micro_batch
    per_batch = sum(steady) / max(len(steady), 1)
    return {"workers": workers, "batch_size": cfg.micro_batch, "first_batch_s": first,
            "steady_batch_s": per_batch, "steady_scenes_per_s": cfg.micro_batch / per_batch if per_batch else None,
            "batches": len(first) + len(steady)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 6, 12])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    spec = trial_specs(load_suite(args.suite))[0]
    cfg: TrainConfig = build(TrainConfig, spec["train"], "train")
    start = time.perf_counter()
    prepare_dataset(spec["dataset"])
    print(f"dataset ready in {time.perf_counter() - start:.0f} s", flush=True)
    train_set, _ = build_train_set(spec["dataset"], spec.get("split", "full"), cfg.grid_size, cfg.point_max, 0,
                                   cfg.augment)
    rows = []
    for workers in args.workers:
        rows.append(measure(train_set, cfg, workers, args.epochs))
        r = rows[-1]
        print(f"workers {workers:>2}: first batch {', '.join(f'{t:.2f}' for t in r['first_batch_s'])} s, "
              f"then {r['steady_batch_s']:.3f} s/batch = {r['steady_scenes_per_s']:.1f} scenes/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"suite": args.suite, "train_scenes": len(train_set), "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
