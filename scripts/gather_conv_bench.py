#!/usr/bin/env python
"""The CPE's conv per encoder level by spconv, by the gathered conv (gather, then matmul) and by the gathered
conv's Triton kernel (the gather inside the matmul; ``gather_conv.TRITON_CONV``), fp16 autocast: a forward
without gradients and a forward + input gradient (frozen weight, as under a PEFT method), ms a call
(``peftbench bench``'s timing), and each one's largest error against a float32 run. Picks where
``sparse_conv.GATHER_MAX_SITES`` should stand once the kernel exists. ``--sweep``: the kernels' device time per
level and tile setting (``triton_gather_conv.MATMUL_TILES`` / ``WEIGHT_GRAD_TILES``) against gather-then-matmul.

    python scripts/gather_conv_bench.py --sweep --json gconv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peftbench.backbone.gather_conv as gather_conv  # noqa: E402
from peftbench.backbone.sparse_conv import SubMConv3d  # noqa: E402
from peftbench.bench import timed  # noqa: E402
from scripts.conv_backward_bench import level_points  # noqa: E402

MATMUL_TILES = [{"rows": 64, "out": 128, "reduce": 32, "warps": 4}, {"rows": 128, "out": 128, "reduce": 32, "warps": 8},
                {"rows": 64, "out": 64, "reduce": 64, "warps": 4}, {"rows": 128, "out": 64, "reduce": 64, "warps": 4},
                {"rows": 32, "out": 64, "reduce": 32, "warps": 2}, {"rows": 128, "out": 64, "reduce": 16, "warps": 4},
                {"rows": 128, "out": 64, "reduce": 16, "warps": 8}]  # reduction tiles of 16: 48 channels unpadded
WEIGHT_GRAD_TILES = [{"rows": 64, "out": 64, "in": 64, "warps": 4, "programs": 1024, "offsets": 1},
                     {"rows": 128, "out": 64, "in": 64, "warps": 8, "programs": 1024, "offsets": 1},
                     {"rows": 64, "out": 64, "in": 64, "warps": 4, "programs": 4096, "offsets": 1},
                     {"rows": 32, "out": 32, "in": 64, "warps": 2, "programs": 2048, "offsets": 1},
                     {"rows": 64, "out": 64, "in": 64, "warps": 4, "programs": 1024, "offsets": 3},
                     {"rows": 64, "out": 64, "in": 64, "warps": 8, "programs": 1024, "offsets": 3},
                     {"rows": 32, "out": 32, "in": 64, "warps": 2, "programs": 2048, "offsets": 3}]
MODES = {"spconv": ("spconv", 0), "gather": ("gather", 0), "triton": ("gather", 1)}


def run(conv: SubMConv3d, point, feat: torch.Tensor, grad: torch.Tensor | None, half: bool) -> torch.Tensor:
    """The conv's output (``grad`` None, no autograd) or its input gradient."""
    with torch.autocast("cuda", torch.float16, enabled=half), torch.set_grad_enabled(grad is not None):
        if grad is None:
            return conv(point, feat)
        feat = feat.detach().requires_grad_()
        conv(point, feat).backward(grad)
        return feat.grad


def device_ms(fn, calls: int = 10) -> float:
    """Device ms a call: ``calls`` calls between two events (the host queues ahead), best of three."""
    fn()
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / calls)
    return best


def sweep(point, channels: int, rank: int = 32) -> list[dict]:
    """Device ms of each part of the conv at this level: gather-then-matmul against the kernels per tile setting.
    Parts: forward and input gradient (C -> C), weight gradients of the CPE (C x C) and of GEM's extra rows (r x C)."""
    import peftbench.backbone.triton_gather_conv as kernels

    n = len(point["grid_coord"])
    table = gather_conv.cached_neighbour_table(point, 3)
    reversed_table = gather_conv.cached_reversed_table(point, 3)
    x = torch.randn(n, channels, device=point["grid_coord"].device, dtype=torch.float16)
    dy = torch.randn(n, channels + rank, device=point["grid_coord"].device, dtype=torch.float16)
    w = torch.randn(channels, 27, channels, device=point["grid_coord"].device, dtype=torch.float16) / 16
    shape, extra_shape = torch.Size([channels, 3, 3, 3, channels]), torch.Size([rank, 3, 3, 3, channels])
    cpe_dy, extra_dy = dy[:, :channels], dy[:, channels:]
    rows = [{"tiles": "gather, then matmul",
             "forward": device_ms(lambda: torch.nn.functional.linear(gather_conv._gather(x, table), w.flatten(1))),
             "input_grad": device_ms(lambda: gather_conv._gather(cpe_dy, reversed_table)
                                     @ w.transpose(0, 1).reshape(-1, channels)),
             "weight_grad": device_ms(lambda: gather_conv.gathered_weight_grad(x, cpe_dy, table, shape)),
             "extra_weight_grad": device_ms(lambda: gather_conv.gathered_weight_grad(x, extra_dy, table, extra_shape))}]
    saved = dict(kernels.MATMUL_TILES), dict(kernels.WEIGHT_GRAD_TILES), kernels.FEW_SITES
    kernels.FEW_SITES = 0  # each setting as given, at every level
    for i in range(max(len(MATMUL_TILES), len(WEIGHT_GRAD_TILES))):
        row = {"tiles": {}}
        if i < len(MATMUL_TILES):
            kernels.MATMUL_TILES.update(MATMUL_TILES[i])
            row["tiles"]["matmul"] = MATMUL_TILES[i]
            row["forward"] = device_ms(lambda: kernels.gather_matmul(x, table, w, transposed=False))
            row["input_grad"] = device_ms(lambda: kernels.gather_matmul(cpe_dy, table, w, transposed=True))
        if i < len(WEIGHT_GRAD_TILES):
            kernels.WEIGHT_GRAD_TILES.update(WEIGHT_GRAD_TILES[i])
            row["tiles"]["weight_grad"] = WEIGHT_GRAD_TILES[i]
            row["weight_grad"] = device_ms(lambda: kernels.gather_weight_grad(x, table, cpe_dy))
            row["extra_weight_grad"] = device_ms(lambda: kernels.gather_weight_grad(x, table, extra_dy))
        rows.append(row)
    kernels.MATMUL_TILES.update(saved[0])
    kernels.WEIGHT_GRAD_TILES.update(saved[1])
    kernels.FEW_SITES = saved[2]
    for row in rows:
        print(f"  {n:>7} x {channels:<4} " + "  ".join(f"{part} {row[part]:.3f}" for part in
                                                     ("forward", "input_grad", "weight_grad", "extra_weight_grad")
                                                     if part in row) + f"  {row['tiles']}", flush=True)
    return [{"level_points": n, "channels": channels, **row} for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="device ms per tile setting instead")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    saved = gather_conv.TRITON_CONV
    for point, channels, key in level_points(args.points, args.batch_size, device):
        if args.sweep:
            rows += sweep(point, channels)
            continue
        n = len(point["grid_coord"])
        feat = torch.randn(n, channels, device=device)
        grad = torch.randn(n, channels, device=device)
        row = {"level_points": n, "channels": channels}
        for mode, (backend, triton) in MODES.items():
            conv = SubMConv3d(channels, channels, 3, bias=False, indice_key=key, backend=backend).to(device)
            conv.train().requires_grad_(False)
            gather_conv.TRITON_CONV = triton
            for part, g in (("forward", None), ("fwd+input_grad", grad)):
                exact = run(conv, point, feat, g, half=False)
                got = run(conv, point, feat, g, half=True)
                row[f"{mode} {part} ms"] = timed(lambda: run(conv, point, feat, g, half=True), device, args.steps)["ms"]
                row[f"{mode} {part} rel_err"] = float((got.float() - exact).abs().max() / exact.abs().max())
        gather_conv.TRITON_CONV = saved
        rows.append(row)
        print(f"{n:>7} x {channels:<4}" + "".join(
            f"  {mode} {row[f'{mode} forward ms']:.3f} / {row[f'{mode} fwd+input_grad ms']:.3f}"
            f" ({row[f'{mode} fwd+input_grad rel_err']:.1e})" for mode in MODES), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
