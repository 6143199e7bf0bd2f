#!/usr/bin/env python
"""A step's host work per method without a GPU (issue 12): ``peftbench bench``'s steps on Sonata's structure at a
width where the CPU's arithmetic is small beside its host work, timed in turns against the frozen row.

A GPU step of GEM waits on the host (session 38: its forward's kernels busy 48 of 89 ms), and on a lent GPU the
host's share is what moves most between machines. Here the model keeps every block, level, order and patch of
Sonata's encoder (5 stages, 3-3-3-12-3 blocks) at 16 channels and one head a level (``--channels``), GEM at rank 8,
and a few points a scene, so that a step is mostly Python, op dispatch and autograd: the work a GPU host does.
GEM's kernels are taken as on CUDA, and their launches counted but not run (``step_ops.take_kernels_on_cpu``), so
the Triton launches themselves are left out (the launcher's call alone 4.8 us on an H100 host, session 38); AdamW is
fused as on CUDA. Not as on a GPU: no autocast, torch's LayerNorm and the gathered conv's torch ops in place of their
kernels, and a CPU op's dispatch instead of a CUDA launch. On this 2-core CPU, 120 turns put a setting's ratio within
~4 % (a setting with no effect in evaluation, ``gather_conv:FACTORED_WEIGHTS``, read 0.958 there), so it tells GEM's
host work from frozen's (~1.3x in evaluation, ~1.5x in training), not a setting worth 1-2 %.

    python scripts/host_proxy.py --methods gem lora --json host.json
    python scripts/host_proxy.py --setting peftbench.backbone.block:FOLD_RESIDUAL --values 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from peftbench.backbone import sparse_conv  # noqa: E402
from peftbench.bench import (FROZEN, autocast_for, bench_model, interleaved, step_functions,  # noqa: E402
                             synthetic_scenes)
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.registry import discover  # noqa: E402
from peftbench.train.trainer import model_inputs  # noqa: E402
from gather_levels_ab import with_setting  # noqa: E402
from step_ops import take_kernels_on_cpu  # noqa: E402

# the methods' ranks at most the width (the same code a block whatever the rank)
NARROW = {"gem": {"rank": 8}, "sa": {"rank": 8}, "ca": {"rank": 8}, "lora": {"r": 8}, "adapter": {"bottleneck": 8}}


class FusedAdamW(torch.optim.AdamW):
    """AdamW fused as the trainer builds it on CUDA (``step_functions`` fuses on CUDA only): its per-parameter host
    work is the CUDA path's."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **{**kwargs, "fused": True})


def turn_ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """Median and quartiles over the turns of ``numerator``'s step ms over ``denominator``'s in the same turn (of
    single steps, the extremes ``round_ratios`` gives say little)."""
    ratios = np.asarray(times[numerator]) / np.asarray(times[denominator])
    q25, median, q75 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["gem"])
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=("train", "infer"))
    parser.add_argument("--channels", type=int, default=16, help="every level's width (one head a level)")
    parser.add_argument("--points", type=int, default=60, help="points a scene")
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--turns", type=int, default=100, help="steps of each workload, one at a time in turns")
    parser.add_argument("--setting", help="MODULE:NAME, an integer setting each method's step takes in turns")
    parser.add_argument("--values", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is imported (first in take_kernels_on_cpu)
    sys.path.append(str(ROOT / ".venv" / "triton-tests"))
    torch.set_num_threads(1)  # the host's one thread; small ops gain nothing from more
    discover()
    sparse_conv.set_default_backend("gather")  # the conv's autograd node a CUDA step takes
    launches = take_kernels_on_cpu(run=False)
    torch.optim.AdamW = FusedAdamW  # step_functions builds its optimizer by this name
    overrides = {"enc_channels": (args.channels,) * 5, "enc_num_head": (1,) * 5}
    batch = collate_points(synthetic_scenes(args.points, args.batch_size))
    inputs, target = model_inputs(batch), batch["segment"].clamp(min=0)
    cpu = torch.device("cpu")
    fns, launched = {}, {}
    for method in (FROZEN, *args.methods):
        settings = NARROW.get(method)
        for mode in args.modes:
            for value in args.values if args.setting and method != FROZEN else [None]:
                # a model for each value: one model's steps back to back run faster (a fixed order's bias above)
                model = bench_model("sonata", method, cpu, "fp32", settings, overrides).train(mode == "train")
                infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(cpu, "fp32"),
                                              grad_to_input=method == FROZEN)
                step = train if mode == "train" else infer
                name = f"{method}:{mode}" + ("" if value is None else f"@{value}")
                fns[name] = step if value is None else with_setting(args.setting, value, step)
                fns[name]()
                launches.clear()
                fns[name]()
                launched[name] = sum(launches.values())
    # a step at a time in turns, the order drawn anew each turn: this CPU's speed drifts by up to ~20 % from one second
    # to the next, and with a fixed order a setting that does nothing read 0.92-0.94 (a step after one of the same
    # method and mode runs faster)
    times = interleaved(fns, cpu, args.turns, steps=1, warmup=0, order_seed=0)
    rows = []
    for name, ms in times.items():
        method, mode = name.split("@")[0].split(":")
        row = {"workload": name, "median_ms": float(np.median(ms)), "ms": ms,
               "over_frozen": turn_ratios(times, name, f"{FROZEN}:{mode}"), "launches_not_run": launched[name]}
        if "@" in name:  # against the setting's first value
            row["over_first_value"] = turn_ratios(times, name, f"{method}:{mode}@{args.values[0]}")
        rows.append(row)
        print(f"{name:16s} {row['median_ms']:8.2f} ms  " + "  ".join(
            f"{key.replace('over_', '/ ')} {r['median']:.3f} [{r['q25']:.3f}, {r['q75']:.3f}]"
            for key, r in row.items() if key.startswith("over_")) + f"  ({launched[name]} launches not run)",
            flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
