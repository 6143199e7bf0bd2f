#!/usr/bin/env python
"""Which levels should gather instead of calling spconv (issue 12): each workload's step with
``sparse_conv.GATHER_MAX_SITES`` at each value asked for, in turns in one process, and each value's
step over the first value's, round by round.

A spconv call costs ~0.3 ms of host time whatever its size; the gathered conv (one gather and one
matmul) costs a few ops but reads every k^3 neighbour, present or not. On the bench's rooms (batch 3 x
102,400 points) the encoder's levels hold ~307k, 161k, 35.6k, 8.3k and 2.1k sites (Sonata: 3, 3, 3, 12 and 3
blocks), so 16384 gathers on the last two levels (15 of 24 blocks) and 65536 on the last three.
Also the largest difference of the float32 forward from the first value's (the same conv either way).
``--setting module:NAME`` takes another integer setting the same way (e.g.
``peftbench.backbone.layer_norm:TRITON_MAX_CHANNELS``); ``--set module:NAME=VALUE ...`` holds others for every value.

    python scripts/gather_levels_ab.py --values 0 16384 65536 --workloads frozen:train:3 gem:train:3 --json ab.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.bench import FROZEN, autocast_for, bench_model, interleaved, round_ratios, step_functions, synthetic_scenes  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.registry import discover  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402


def setting_module(setting: str):
    """``(module, NAME)`` of ``module:NAME``, which must exist (a misspelt switch would A/B nothing)."""
    module_name, name = setting.split(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"{module_name} has no setting {name}")
    return module, name


def set_integers(specs: list[str]) -> None:
    """Each ``module:NAME=VALUE`` of ``specs``: that integer setting set to VALUE."""
    for spec in specs:
        setting, value = spec.split("=")
        setattr(*setting_module(setting), int(value))


def with_setting(setting: str, value: int, fn):
    """``fn`` run with the integer ``setting`` (``module:NAME``) at ``value``."""
    module, name = setting_module(setting)

    def step():
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            return fn()
        finally:
            setattr(module, name, saved)
    return step


def fp32_difference(backbone: str, method: str, inputs: dict, device: torch.device, setting: str,
                    values: list[int]) -> float:
    """Largest |logit difference| / largest |logit| of a float32 eval forward, each value against the first. The
    method's all-zero trainable weights (GEM's and LoRA's up-projections at init) are drawn first: at zero its
    branches add nothing, and a setting that changes only them would read 0."""
    model = bench_model(backbone, method, device, "fp32").eval()
    draw = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and not param.any():
                param.normal_(std=0.02, generator=draw)
    outs = []
    for value in values:
        with torch.no_grad():
            generator = torch.Generator(device).manual_seed(0)  # the same order shuffle each time
            outs.append(with_setting(setting, value, lambda: model(dict(inputs), generator))())
    scale = outs[0].abs().max().item()
    return max((out - outs[0]).abs().max().item() / scale for out in outs[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, nargs="+", default=[0, 16384, 65536])
    parser.add_argument("--workloads", nargs="+", default=["frozen:train:3", "gem:train:3", "full:train:3",
                                                           "frozen:infer:3", "gem:infer:3"])
    parser.add_argument("--setting", default="peftbench.backbone.sparse_conv:GATHER_MAX_SITES",
                        help="module:NAME of the integer setting")
    parser.add_argument("--set", nargs="*", default=[], metavar="MODULE:NAME=VALUE",
                        help="integer settings held for every value (e.g. another switch on while this one is timed)")
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    setting_name = args.setting.split(":")[1]
    discover()
    set_integers(args.set)
    device = torch.device(args.device)
    work = [w.split(":") for w in args.workloads]
    scenes = synthetic_scenes(args.points, max(int(b) for _, _, b in work))
    result = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "args": vars(args),
              "rows": []}
    for method, mode, batch_size in work:
        batch = collate_points(scenes[: int(batch_size)])
        inputs = model_inputs(to_device(batch, device))
        target = batch["segment"].to(device).clamp(min=0)
        model = bench_model(args.backbone, method, device, "fp16").train(mode == "train")
        infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(device, "fp16"),
                                      grad_to_input=method == FROZEN)
        fns = {str(v): with_setting(args.setting, v, train if mode == "train" else infer) for v in args.values}
        rounds = interleaved(fns, device, args.rounds, args.steps)
        name = f"{method}:{mode}:{batch_size}"
        difference = fp32_difference(args.backbone, method, inputs, device, args.setting, args.values)
        print(f"{name}: float32 forward, largest difference / largest logit {difference:.1e}", flush=True)
        for value in args.values:
            ms = rounds[str(value)]
            ratio = round_ratios(rounds, str(value), str(args.values[0]))
            result["rows"].append({"workload": name, "setting": args.setting, "value": value, "rounds_ms": ms, **ratio,
                                   "fp32_difference": difference})
            print(f"{name:18s} {setting_name}={value:<7d} {sorted(ms)[len(ms) // 2]:7.1f} ms  "
                  f"/ {args.values[0]}: {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]", flush=True)
        del fns, model, infer, train
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
