#!/usr/bin/env python
"""GEM's Context Adapter, forward and backward as in a training step, per encoder level and per setting of the
kernels that project ``h`` (issue 12): device time from the profiler's kernels (no host time in it), summed over a
batch-3 Sonata encoder's blocks (``--scenes``: its points as so many scenes), for each ``PROJECT_TF32X3`` x
``PROJECT_BLOCK_C`` x ``PROJECT_WARPS`` x ``PROGRAMS``, and for the projections by cuBLAS matmuls
(``PROJECT_IN_KERNEL=0``); each setting's largest difference from the defaults' updated latents and weights'
gradients (relative to the largest value).

    python scripts/context_kernel_sweep.py --json sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peftbench.backbone.latent_attention as latent_attention  # noqa: E402
from scripts.kernel_profile import trace_kernels  # noqa: E402
from scripts.latent_attention_bench import LEVEL_POINTS  # noqa: E402

LEVEL_CHANNELS = (48, 96, 192, 384, 512)  # Sonata's encoder
LEVEL_BLOCKS = (3, 3, 3, 12, 3)
RANK, LATENTS = 32, 4
DEVICE = "cuda"


def level_inputs(points: int, channels: int, device: torch.device, scenes: int = 3) -> dict:
    """One GEM block's Context Adapter inputs at a level of ``scenes`` scenes of equal size: fp16 ``h`` (the block
    adds to it), ``shared_qk``'s two projections, the up-projection, the latents, and the gradients that flow back
    into ``y`` and the latents."""
    g = torch.Generator(device).manual_seed(points)
    sizes = torch.full((scenes,), points // scenes, device=device)
    sizes[-1] += points - int(sizes.sum())

    def normal(*shape, std=1.0, dtype=torch.float32):
        return (torch.randn(*shape, device=device, generator=g) * std).to(dtype)
    return dict(h=normal(points, channels, dtype=torch.float16).requires_grad_(),
                weights=[normal(RANK, channels, std=0.02).requires_grad_() for _ in range(2)],
                up=normal(channels, RANK, std=0.02).requires_grad_(),
                latents=normal(scenes, LATENTS, RANK, std=0.02).requires_grad_(),
                batch=torch.repeat_interleave(torch.arange(scenes, device=device), sizes),
                d_y=normal(points, channels, dtype=torch.float16), d_latents=normal(scenes, LATENTS, RANK))


def train_call(x: dict, kernels) -> tuple[torch.Tensor, ...]:
    """The adapter's forward and backward: the updated latents and the gradients of the projections, the
    up-projection and the latents (float32: ``y`` and ``h``'s gradient are float16 sums with ``h`` and ``y``'s)."""
    y, updated = latent_attention.projected_latent_attention(
        x["h"], x["weights"], x["up"], x["latents"], x["batch"], RANK ** -0.5, True, True, False, kernels, base=x["h"])
    grads = torch.autograd.grad((y, updated), (x["h"], *x["weights"], x["up"], x["latents"]),
                                (x["d_y"], x["d_latents"]))  # h's too: its gradient is in the training step
    return updated, *grads[1:]


def kernel_ms(fn, repeats: int = 5) -> tuple[float, dict[str, float]]:
    """Device ms a call of ``fn`` from the profiler's kernels, and per Triton kernel (names starting with ``_``)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    _, kernels = trace_kernels(prof)
    named: dict[str, float] = {}
    for e in kernels:
        if e["name"].startswith("_"):
            named[e["name"]] = named.get(e["name"], 0.0) + e["dur"] / 1000 / repeats
    return sum(e["dur"] for e in kernels) / 1000 / repeats, named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, nargs="+", default=[264, 528, 1056])
    parser.add_argument("--block-c", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--scenes", type=int, default=3, help="the batch-3 levels' points split into so many "
                        "scenes (the kernels take scenes x 4 latent columns)")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(DEVICE)
    kernels = latent_attention.kernels_take(torch.empty(1, device=device), 1)
    levels = [level_inputs(n, c, device, args.scenes) for n, c in zip(LEVEL_POINTS, LEVEL_CHANNELS)]
    defaults = {name: getattr(kernels, name) for name in ("PROJECT_TF32X3", "PROJECT_BLOCK_C", "PROJECT_WARPS",
                                                          "PROGRAMS")}
    in_kernel = latent_attention.PROJECT_IN_KERNEL
    references = [train_call(x, kernels) for x in levels]
    settings = [dict(PROJECT_IN_KERNEL=0, PROGRAMS=p) for p in args.programs]
    settings += [dict(PROJECT_IN_KERNEL=1, PROJECT_TF32X3=tf, PROJECT_BLOCK_C=bc, PROJECT_WARPS=w, PROGRAMS=p)
                 for tf, bc, w, p in itertools.product((0, 1), args.block_c, args.warps, args.programs)]
    rows = []
    for setting in settings:
        latent_attention.PROJECT_IN_KERNEL = setting["PROJECT_IN_KERNEL"]
        for name, value in {**defaults, **setting}.items():
            if name != "PROJECT_IN_KERNEL":
                setattr(kernels, name, value)
        per_level, named, difference = [], {}, 0.0
        for x, blocks, reference in zip(levels, LEVEL_BLOCKS, references):
            ms, by_kernel = kernel_ms(lambda: train_call(x, kernels))
            per_level.append(round(ms, 4))
            for name, kernel_time in by_kernel.items():
                named[name] = named.get(name, 0.0) + kernel_time * blocks
            got = train_call(x, kernels)
            difference = max(difference, *((a.float() - b.float()).abs().max().item() / b.float().abs().max().item()
                                           for a, b in zip(got, reference)))
        step_ms = sum(ms * blocks for ms, blocks in zip(per_level, LEVEL_BLOCKS))
        rows.append({**setting, "step_ms": round(step_ms, 3), "level_ms": per_level,
                     "kernels_step_ms": {k: round(v, 3) for k, v in sorted(named.items())},
                     "max_relative_difference": difference})
        label = " ".join(f"{k.replace('PROJECT_', '').lower()}={v}" for k, v in setting.items())
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(named.items(), key=lambda kv: -kv[1])[:2])
        print(f"{label:60s} {step_ms:7.2f} ms a step  [{top}]  rel diff {difference:.1e}", flush=True)
    latent_attention.PROJECT_IN_KERNEL = in_kernel
    best = min(rows, key=lambda row: row["step_ms"])
    print(f"fastest: {best}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
