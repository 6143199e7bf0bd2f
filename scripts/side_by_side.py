#!/usr/bin/env python
"""The bench's ratios with every workload timed in turns in one process (issue 12).

`peftbench bench` and `scripts/reference_bench.py` time each workload in its own block, in two
processes; on a lent GPU machine one workload's step moves ~15 % between processes and the hosts of
two machines differ more (the reference's batch-1 inference read 71-122 ms in six calls), so a
ratio of two such medians moves by ~0.2 between calls. Here the reference's workloads, ours and
every method's take turns, a few steps each per round (``peftbench.bench.interleaved``), and each
ratio is taken round by round: median, min and max over the rounds.

    python scripts/side_by_side.py --reference .reference/sonata --batch-sizes 1 3 --methods gem lora \\
        --rounds 7 --steps 3 --json side.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))

from peftbench.bench import (FROZEN, autocast_for, bench_model, interleaved, round_ratios,  # noqa: E402
                             step_functions, synthetic_scenes)
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.registry import discover  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402
from gather_levels_ab import set_integers  # noqa: E402
from reference_bench import load_reference, reference_model  # noqa: E402


def step_fns(batch: dict, device: torch.device, dtype: str, ref_model, backbone: str, methods: list[str]) -> dict:
    """Every timed function of one batch, by name: ``ref:<workload>`` and ``<method>:<mode>``."""
    inputs = model_inputs(to_device(batch, device))
    target = batch["segment"].to(device).clamp(min=0)
    autocast = lambda: autocast_for(device, dtype)  # noqa: E731
    fns = {}
    for workload in ("infer", "frozen", "full"):  # the reference: one model per workload, in its mode
        model, head, forward = reference_model(ref_model, backbone, workload, device)
        infer, train = step_functions(model, list(head.parameters()), forward, inputs, target, autocast,
                                      grad_to_input=workload == "frozen", fused_optimizer=False)
        model.train(workload != "infer")
        fns[f"ref:{workload}"] = infer if workload == "infer" else train
    for method in (FROZEN, "full", *methods):
        for mode in ("infer", "train") if method != "full" else ("train",):
            model = bench_model(backbone, method, device, dtype).train(mode == "train")
            infer, train = step_functions(model, [], model, inputs, target, autocast, grad_to_input=method == FROZEN)
            fns[f"{method}:{mode}"] = infer if mode == "infer" else train
    return fns


COMPARISONS = [("inference", f"{FROZEN}:infer", "ref:infer"), ("frozen backbone + gradient flow", f"{FROZEN}:train",
               "ref:frozen"), ("full fine-tuning", "full:train", "ref:full")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=str(ROOT / ".reference" / "sonata"))
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--methods", nargs="*", default=["gem", "lora", "adapter", "prompt"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps a function runs per round")
    parser.add_argument("--device")
    parser.add_argument("--json")
    parser.add_argument("--set", nargs="*", default=[], metavar="MODULE:NAME=VALUE",
                        help="integer settings made first, e.g. "
                        "peftbench.backbone.latent_attention:PROJECT_IN_KERNEL=1")
    args = parser.parse_args()
    set_integers(args.set)
    discover()
    args.methods = [m for m in args.methods if m not in (FROZEN, "full")]  # always there, as the baselines
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ref_model = load_reference(Path(args.reference), device)
    scenes = synthetic_scenes(args.points, max(args.batch_sizes))
    results = []
    for batch_size in args.batch_sizes:
        fns = step_fns(collate_points(scenes[:batch_size]), device, args.dtype, ref_model, args.backbone, args.methods)
        rounds = interleaved(fns, device, args.rounds, args.steps)
        pairs = COMPARISONS + [(f"{m} / frozen, {mode}", f"{m}:{mode}", f"{FROZEN}:{mode}")
                               for m in args.methods for mode in ("train", "infer")]
        for label, ours, theirs in pairs:
            ratio = round_ratios(rounds, ours, theirs)
            results.append({"batch_size": batch_size, "workload": label, "numerator": ours, "denominator": theirs,
                            **ratio, "numerator_ms": rounds[ours], "denominator_ms": rounds[theirs]})
            print(f"b{batch_size} {label:40s} {ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]  "
                  f"({sorted(rounds[ours])[len(rounds[ours]) // 2]:.1f} / "
                  f"{sorted(rounds[theirs])[len(rounds[theirs]) // 2]:.1f} ms)", flush=True)
        del fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        Path(args.json).write_text(json.dumps({"gpu": gpu, "args": vars(args), "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
