#!/usr/bin/env python
"""Why a real trial's step is slower than the bench's: the trainer's own ``train_step`` on real
trial batches held in memory (no loader), in regimes that separate the suspects.

* ``fixed``: one batch over and over (what ``peftbench bench`` times, plus Lovász, scaler, clip);
* ``new``: every batch once, each with a new point count;
* ``again``: the same batches a second time (sizes seen before: per-size caches are warm);
* ``again_nolovasz``: as ``again`` without the Lovász term.

Per regime: median trainer step and CUDA allocator counters (cudaMalloc/cudaFree calls, retries);
then the ops with the most host time in one step of an unseen size and of the same batch again,
new/again under each ``--blas`` library, and the host-sync sites of one step
(``torch.cuda.set_sync_debug_mode``). (spconv's tuner is not counted: spconv 2.3 tunes in C++.)

    python scripts/shape_probe.py suites/gpu_smoke.yaml --method gem --batches 16 --json shape.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftbench.backbone.compiled import compile_blocks  # noqa: E402
from peftbench.backbone.sparse_conv import set_default_backend  # noqa: E402
from peftbench.data.sources import batches, build_train_set, dataset_kind, prepare_dataset  # noqa: E402
from peftbench.registry import build_method  # noqa: E402
from peftbench.schema import build  # noqa: E402
from peftbench.suite import load_suite, trial_specs  # noqa: E402
from peftbench.train.config import TrainConfig  # noqa: E402
from peftbench.train.trainer import Trainer  # noqa: E402
from peftbench.train.trial import build_model, seed_everything  # noqa: E402

def _alloc_counters() -> dict[str, int]:
    stats = torch.cuda.memory_stats() if torch.cuda.is_available() else {}
    return {k: int(stats.get(k, 0)) for k in ("num_device_alloc", "num_device_free", "num_alloc_retries",
                                              "num_sync_all_streams")}


def _sync_sites(trainer: Trainer, batch: dict) -> dict[str, int]:
    """``file:line`` of every host sync of one step (CUDA only)."""
    if not torch.cuda.is_available():
        return {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step([batch])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    return dict(sites.most_common())


def _top_ops(trainer: Trainer, batch: dict, count: int = 15) -> list[list]:
    """``[op, calls, host ms]`` of the ``count`` ops with the most self host time in one step
    (spconv's entry points as ``spconv.<name>`` ranges: they are no torch ops)."""
    patched = []
    try:
        import spconv.pytorch.ops as spops

        for name in ("implicit_gemm", "implicit_gemm_backward", "get_indice_pairs_implicit_gemm"):
            fn = getattr(spops, name)

            def ranged(*a, _fn=fn, _name=name, **k):
                with torch.autograd.profiler.record_function(f"spconv.{_name}"):
                    return _fn(*a, **k)
            patched.append((name, fn))
            setattr(spops, name, ranged)
    except ImportError:
        spops = None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train_step([batch])
    for name, fn in patched:
        setattr(spops, name, fn)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:count]
    return [[e.key, e.count, round(e.self_cpu_time_total / 1000, 2)] for e in ops]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--method", default="gem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--blas", nargs="*", default=[],
                        help="then new/again on unseen batches with torch.backends.cuda.preferred_blas_library(each)")
    parser.add_argument("--json")
    args = parser.parse_args()
    spec = next(s for s in trial_specs(load_suite(args.suite))
                if s["method"]["label"] == args.method and s["seed"] == args.seed)
    spec["backbone"]["conv_backend"] = "auto"
    cfg: TrainConfig = build(TrainConfig, spec["train"], "train")
    seed_everything(args.seed)
    set_default_backend("auto")
    prepare_dataset(spec["dataset"])
    train_set, _ = build_train_set(spec["dataset"], "full", cfg.grid_size, cfg.point_max, args.seed, cfg.augment)
    held: list[dict] = []
    for epoch in range(100):
        for batch in batches(train_set, cfg.micro_batch, True, args.seed, epoch, True, args.workers, cfg.mix_prob):
            held.append(batch)
        if len(held) >= args.batches:
            break
    held = held[:args.batches]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classes = dataset_kind(spec["dataset"]["name"]).classes
    model = build_model(spec, len(classes))
    method = build_method(spec["method"]["name"], spec["method"].get("settings"))
    method.apply(model)
    if cfg.compile:
        compile_blocks(model)
    trainer = Trainer(model, method, cfg, device, len(classes), args.seed)
    trainer.prepare(1000)
    trainer.model.train()
    out: dict = {"suite": args.suite, "method": args.method, "points": [int(b["coord"].shape[0]) for b in held],
                 "regimes": {}}

    def regime(name: str, items: list[dict]) -> None:
        before = _alloc_counters()
        trainer.step_times.clear()
        start = time.perf_counter()
        for b in items:
            trainer.train_step([b])
        wall = time.perf_counter() - start
        after = _alloc_counters()
        ms = [1000 * t for t in trainer.step_times]
        out["regimes"][name] = {"median_ms": float(np.median(ms)), "mean_ms": float(np.mean(ms)), "ms": ms,
                                "wall_s": wall, "alloc": {k: after[k] - before[k] for k in after}}
        print(f"{name:>16}: median {np.median(ms):7.1f} ms, mean {np.mean(ms):7.1f} ms, "
              f"alloc {out['regimes'][name]['alloc']}", flush=True)

    part = (len(held) - 2) // (1 + len(args.blas))  # new / again on part 0, each --blas on its own part
    half = 1 + part
    regime("warmup", [held[0]] * 3)
    regime("fixed", [held[0]] * 8)
    regime("new", held[1:half])
    regime("again", held[1:half])
    lovasz = cfg.lovasz_weight
    cfg.lovasz_weight = 0.0
    regime("again_nolovasz", held[1:half])
    cfg.lovasz_weight = lovasz
    out["ops_new"], out["ops_again"] = _top_ops(trainer, held[-1]), _top_ops(trainer, held[-1])
    for key in ("ops_new", "ops_again"):
        print(key, json.dumps(out[key]), flush=True)
    out["blas_default"] = str(torch.backends.cuda.preferred_blas_library()) if device.type == "cuda" else None
    for i, blas in enumerate(args.blas, start=1):
        torch.backends.cuda.preferred_blas_library(blas)
        regime(f"new_{blas}", held[1 + i * part:1 + (i + 1) * part])
        regime(f"again_{blas}", held[1 + i * part:1 + (i + 1) * part])
    out["sync_sites"] = _sync_sites(trainer, held[1])
    print("sync sites:", json.dumps(out["sync_sites"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
