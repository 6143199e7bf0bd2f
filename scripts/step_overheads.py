#!/usr/bin/env python
"""Two host costs of a step that no op profile names (issue 12): Python's garbage collector and
spconv's allocator callbacks.

cProfile puts 130-345 us of own time on each call of spconv's ``TorchAllocator.empty`` / ``zeros``
(a ``torch.empty`` and a dict insert) and 6.9 ms on one ``free``: time that looks like collections
run by the cyclic garbage collector, charged to whatever allocated when one started. Here, per
workload (``peftbench bench``'s models and steps), in turns:

* ``gc on``: as a trial runs now; ``gc.callbacks`` time every collection, by generation;
* ``gc off``: the collector disabled during the step;
* then ``gc.freeze()`` (everything alive now moved out of the collector's reach) and ``gc on`` again;

and the allocator callbacks timed from inside (wall per call). Session 27 (H200): 18 us a callback
(cProfile's figure is its own overhead), and no steady cost of the collector.

    python scripts/step_overheads.py --workloads frozen:train:3 gem:train:3 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.bench import FROZEN, autocast_for, bench_model, interleaved, step_functions, synthetic_scenes  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.registry import discover  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402

collections: dict[int, list[float]] = defaultdict(list)  # generation -> seconds of each collection
_started: list[float] = []


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        collections[info["generation"]].append(time.perf_counter() - _started.pop())


def gc_off(fn):
    def step() -> None:
        gc.disable()
        try:
            fn()
        finally:
            gc.enable()
    return step


def time_allocator_callbacks() -> dict[str, list[float]]:
    """Wrap spconv's TorchAllocator.empty / zeros: seconds per call, and of the torch call inside."""
    from spconv.pytorch import cppcore

    spent: dict[str, list[float]] = defaultdict(list)
    for name in ("empty", "zeros"):
        original = getattr(cppcore.TorchAllocator, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            out = _original(self, *args, **kwargs)
            spent[_name].append(time.perf_counter() - start)
            return out
        setattr(cppcore.TorchAllocator, name, wrapper)
    return spent


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report_rounds(rounds: dict[str, list[float]], suffix: str, result: dict) -> None:
    for name, ms in rounds.items():
        result["rows"].append({"step": name + suffix, "median_ms": median(ms), "rounds_ms": ms})
        print(f"{name + suffix:32s} {median(ms):8.1f} ms  rounds {[round(m, 1) for m in ms]}", flush=True)


def report_collections(title: str) -> None:
    """Count, total and longest ms by generation (warm-up included: a collection that is not steady shows)."""
    print(f"{title} by generation (count, total ms, longest ms): "
          + ", ".join(f"{g}: {len(t)}, {1000 * sum(t):.1f}, {1000 * max(t):.1f}" for g, t in sorted(collections.items())),
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["frozen:train:3", "gem:train:3"])
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--late-sites", action="store_true",
                        help="also each workload with its levels' sites built at each pooling, not up front")
    parser.add_argument("--json")
    args = parser.parse_args()
    discover()
    device = torch.device(args.device)
    work = [w.split(":") for w in args.workloads]
    scenes = synthetic_scenes(args.points, max(int(b) for _, _, b in work))
    fns = {}
    for method, mode, batch_size in work:
        batch = collate_points(scenes[: int(batch_size)])
        inputs = model_inputs(to_device(batch, device))
        target = batch["segment"].to(device).clamp(min=0)

        def step_of(late_sites: bool):
            model = bench_model(args.backbone, method, device, "fp16").train(mode == "train")
            if late_sites:  # each level's sites built when it is pooled (as before build_sites)
                model.backbone.build_sites = lambda point: None
            infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(device, "fp16"),
                                          grad_to_input=method == FROZEN)
            return train if mode == "train" else infer

        name = f"{method}:{mode}:{batch_size}"
        fns[f"{name} gc on"] = step_of(False)
        fns[f"{name} gc off"] = gc_off(fns[f"{name} gc on"])
        if args.late_sites:
            fns[f"{name} gc on, late sites"] = step_of(True)
    print(f"objects tracked by the collector: {len(gc.get_objects())}, thresholds {gc.get_threshold()}", flush=True)
    gc.callbacks.append(_on_gc)
    spent = time_allocator_callbacks()
    rounds = interleaved(fns, device, args.rounds, args.steps)
    result = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "tracked_objects": len(gc.get_objects()), "rows": []}
    report_rounds(rounds, "", result)
    report_collections("collections")
    for name, times in spent.items():
        if times:
            times = sorted(times)
            print(f"spconv allocator {name}: {len(times)} calls, median {1e6 * median(times):.0f} us, "
                  f"p90 {1e6 * times[int(0.9 * len(times))]:.0f} us, max {1e6 * times[-1]:.0f} us", flush=True)
    result["collections"] = {str(g): {"count": len(t), "ms": 1000 * sum(t), "max_ms": 1000 * max(t)} for g, t in collections.items()}
    result["allocator_us"] = {n: 1e6 * median(t) for n, t in spent.items() if t}
    # then everything alive now frozen out of the collector's reach, gc on again
    collections.clear()
    gc.collect()
    gc.freeze()
    on = {name: fn for name, fn in fns.items() if "gc on" in name}
    report_rounds(interleaved(on, device, args.rounds, args.steps), ", after gc.freeze()", result)
    report_collections("collections after gc.freeze()")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
