"""Where a step's host time goes (issue 12): cProfile over timed steps of `peftbench bench`'s
workloads, per function (own time per step, calls per step) and per owner (peftbench file,
spconv, torch ops, waits on the device). The GPU is mostly idle because the host is slow; this
says on what.

    python scripts/host_profile.py --workloads frozen:infer:1 frozen:train:3 gem:train:3 --json out.json

The frozen weights stay float32 (what autocast casts on every call); ``--half-frozen`` adds, per
workload, the same steps with them stored in the autocast dtype as the trainer and ``peftbench
bench`` store them (``store_frozen_weights``), timed back to back.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.bench import AMP_DTYPES, FROZEN, autocast_for, step_functions, synthetic_scenes, timed  # noqa: E402
from peftbench.backbone import backbone_config  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.model import Segmentor  # noqa: E402
from peftbench.registry import build_method  # noqa: E402
from peftbench.train.precision import store_frozen_weights  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402

# builtins that wait for the device (a read of its results), by the name cProfile gives them
WAITS = re.compile(r"_cuda_synchronize|_unique2|_local_scalar_dense|nonzero|'(item|tolist|cpu)' of")


def owner(key: tuple) -> str:
    """Who owns a profiled function: our file, spconv, a torch op (C), or a device wait."""
    path, _line, name = key
    if path == "~":  # builtins: C functions, torch ops among them
        if WAITS.search(name):
            return "wait/sync: " + name.strip("<>").split(" of ")[0].replace("method ", "")
        return "C: torch ops and builtins"
    for mark in ("peftbench/", "scripts/"):
        if mark in path:
            return path[path.index(mark):]
    if "spconv" in path or "cumm" in path:
        return "spconv (python)"
    if "/torch/" in path:
        return "torch (python): " + path[path.rindex("/torch/") + 7:]
    return "other python"


def profile_steps(fn, steps: int, device: torch.device) -> pstats.Stats:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    prof.disable()
    return pstats.Stats(prof)


def summarize(stats: pstats.Stats, steps: int, top: int) -> dict:
    owners: dict[str, float] = defaultdict(float)
    funcs = []
    for key, (_cc, ncalls, tottime, _cum, _callers) in stats.stats.items():
        owners[owner(key)] += tottime
        funcs.append((tottime, ncalls, key))
    funcs.sort(reverse=True)
    total = sum(owners.values())
    return {
        "total_ms_per_step": 1000 * total / steps,
        "owners_ms_per_step": {k: round(1000 * v / steps, 2) for k, v in sorted(owners.items(), key=lambda kv: -kv[1])},
        "top": [{"ms_per_step": round(1000 * t / steps, 3), "calls_per_step": round(n / steps, 1),
                 "function": f"{Path(k[0]).name}:{k[1]}({k[2]})" if k[0] != "~" else k[2]} for t, n, k in funcs[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["frozen:infer:1", "frozen:train:3", "gem:train:3"],
                        help="method:mode:batch")
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--half-frozen", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.half_frozen and (device.type != "cuda" or AMP_DTYPES.get(args.dtype) is None):
        parser.error("--half-frozen needs CUDA autocast in fp16 or bf16 (half weights would meet float32 inputs)")
    work = [w.split(":") for w in args.workloads]
    scenes = synthetic_scenes(args.points, max(int(b) for _, _, b in work))
    results = []
    for method, mode, batch_size in work:
        torch.manual_seed(0)
        model = Segmentor(backbone_config("sonata"), 20)
        build_method("linear" if method == FROZEN else method, None).apply(model)
        model.to(device).train(mode == "train")
        batch = collate_points(scenes[: int(batch_size)])
        inputs = model_inputs(to_device(batch, device))
        target = batch["segment"].to(device).clamp(min=0)
        variants = [("fp32-stored", None)] + ([("half-frozen", args.dtype)] if args.half_frozen else [])
        for variant, cast in variants:
            if cast is not None:
                cast_count = store_frozen_weights(model, AMP_DTYPES[cast])
            infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(device, args.dtype),
                                          grad_to_input=method == FROZEN)
            fn = infer if mode == "infer" else train
            row = {"method": method, "mode": mode, "batch_size": int(batch_size), "variant": variant,
                   **timed(fn, device, args.steps)}
            if cast is not None:
                row["cast_params"] = cast_count
            row.update(summarize(profile_steps(fn, args.steps, device), args.steps, args.top))
            results.append(row)
            print(f"== {method} {mode} b{batch_size} {variant}: {row['ms']:.1f} ms wall, {row['host_ms']:.1f} host, "
                  f"{row['min_ms']:.1f} min; profiled {row['total_ms_per_step']:.1f} ms/step")
            for name, ms in list(row["owners_ms_per_step"].items())[:14]:
                print(f"   {ms:8.2f}  {name}")
            for f in row["top"][:args.top]:
                print(f"   {f['ms_per_step']:8.3f} ms {f['calls_per_step']:7.1f}x  {f['function']}")
            del infer, train
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
