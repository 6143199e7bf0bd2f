#!/usr/bin/env python
"""GEM's Context Adapter core per encoder level (issue 12): the torch core (``latent_attention._LatentAttention``)
against the Triton kernels (``triton_latent_attention``), forward and forward + backward, wall and host ms a
call (``peftbench bench``'s timing) and device ms (CUDA events), at rank 32, 4 latents a scene, 3 scenes; and
the kernels' largest difference from the torch core.

    python scripts/latent_attention_bench.py --json latent.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peftbench.backbone.latent_attention as latent_attention  # noqa: E402
from peftbench.bench import timed  # noqa: E402
from scripts.layer_norm_bench import device_ms  # noqa: E402

LEVEL_POINTS = [307_000, 161_000, 35_600, 8_300, 2_100]  # the bench's encoder levels at batch 3 x 102,400 points


def call(k, v, latents, batch, switch: int, backward: bool):
    latent_attention.TRITON_LATENT = switch
    out, updated = latent_attention.scene_latent_attention(k, v, None, latents, batch, 32 ** -0.5)
    if backward:
        torch.autograd.grad((out.sum(), updated.sum()), (k, v, latents))
    return out, updated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    cells = []
    print(f"{'points':>8}  {'forward wall/host/device ms':>30}  {'fwd+bwd wall/host/device ms':>30}"
          "   (torch -> kernels)")
    for points in LEVEL_POINTS:
        g = torch.Generator(device).manual_seed(points)
        sizes = torch.tensor([points // 3, points // 3, points - 2 * (points // 3)], device=device)
        batch = torch.repeat_interleave(torch.arange(3, device=device), sizes)
        k, v = (torch.randn(points, 32, device=device, generator=g).requires_grad_() for _ in range(2))
        latents = (torch.randn(3, 4, 32, device=device, generator=g) * 0.02).requires_grad_()
        cell = {"points": points}
        for name, switch in (("torch", 0), ("kernels", 1)):
            for mode, backward in (("forward", False), ("backward", True)):
                fn = lambda: call(k, v, latents, batch, switch, backward)  # noqa: E731
                timing = timed(fn, device, steps=20)
                cell[f"{name}_{mode}"] = {**timing, "device_ms": device_ms(fn)}
        ref = call(k, v, latents, batch, 0, False)
        got = call(k, v, latents, batch, 1, False)
        cell["max_abs_difference"] = max((a - b).abs().max().item() for a, b in zip(ref, got))
        cells.append(cell)
        row = [f"{cell[f'torch_{m}'][key]:.3f}->{cell[f'kernels_{m}'][key]:.3f}" for m in ("forward", "backward")
               for key in ("ms", "host_ms", "device_ms")]
        print(f"{points:>8}  {' '.join(row[:3]):>30}  {' '.join(row[3:]):>30}"
              f"   max |diff| {cell['max_abs_difference']:.1e}")
    latent_attention.TRITON_LATENT = 1
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "levels": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
