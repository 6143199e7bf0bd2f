#!/usr/bin/env python
"""torch's CUDA LayerNorm against ours (``peftbench.backbone.triton_layer_norm``) at the bench's level shapes
(issue 12): device time of the forward, and of forward + backward with frozen and with trainable affine
parameters; float32 rows, as the residual stream is. Picks ``layer_norm.TRITON_MAX_CHANNELS``.

    python scripts/layer_norm_bench.py --json ln.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.backbone import triton_layer_norm as kernels  # noqa: E402
from peftbench.backbone.layer_norm import triton_layer_norm  # noqa: E402

# (channels, rows): Sonata's widths at the sites of the bench's five encoder levels (batch 3 x 102,400 points)
LEVELS = [(48, 307_000), (96, 161_000), (192, 35_600), (384, 8_300), (512, 2_100), (192, 161_000), (384, 35_600)]


def device_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def host_us(fn, calls: int = 2000) -> float:
    """Host time per call of ``fn`` on a tiny input (the device keeps up): the launch overhead."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


class _Empty(torch.autograd.Function):
    """An autograd Function that launches nothing: the Python Function's own cost, forward and backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        return torch.empty_like(dy)


class _LaunchInBackward(torch.autograd.Function):
    """``_Empty`` whose backward launches the bare backward kernel: a Triton launch from autograd's device thread."""

    @staticmethod
    def forward(ctx, x, launch):
        ctx.launch = launch
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        ctx.launch()
        return torch.empty_like(dy), None


def host_costs() -> dict:
    """us per call at 64 x 48: torch's LayerNorm, ours, our kernels' bare Triton launches, an autograd
    Function that launches nothing and one whose backward makes the bare launch (where our backward's extra host
    time goes), and the compiled kernel launched directly, without ``JITFunction.run``."""
    x = torch.randn(64, 48, device="cuda")
    w, b = torch.ones(48, device="cuda"), torch.zeros(48, device="cuda")
    xg, dy = x.clone().requires_grad_(), torch.randn_like(x)
    y, stats = torch.empty_like(x), torch.empty((2, 64), device="cuda")
    rows, block_cols = kernels._blocks(48)
    bare_backward = lambda: kernels._backward_kernel[(1,)](  # noqa: E731
        x, w, dy, y, stats[0], stats[1], x, x, 64, 48, BLOCK_ROWS=rows, BLOCK_COLS=block_cols, AFFINE_GRAD=False)
    costs = {
        "torch forward": host_us(lambda: F.layer_norm(x, (48,), w, b, 1e-5)),
        "ours forward": host_us(lambda: triton_layer_norm(x, w, b, 1e-5)),
        "bare forward launch": host_us(lambda: kernels._forward_kernel[(1,)](
            x, w, b, y, stats[0], stats[1], 64, 48, 1e-5, BLOCK_ROWS=rows, BLOCK_COLS=block_cols)),
        "torch forward + backward": host_us(lambda: torch.autograd.grad(F.layer_norm(xg, (48,), w, b, 1e-5), xg, dy)),
        "ours forward + backward": host_us(lambda: torch.autograd.grad(triton_layer_norm(xg, w, b, 1e-5), xg, dy)),
        "bare backward launch": host_us(bare_backward),
        "empty Function fwd + bwd": host_us(lambda: torch.autograd.grad(_Empty.apply(xg), xg, dy)),
        "Function launching in bwd": host_us(lambda: torch.autograd.grad(_LaunchInBackward.apply(xg, bare_backward),
                                                                         xg, dy)),
    }
    try:  # the compiled kernel launched without JITFunction.run (its argument binding and cache lookup)
        direct = bare_backward()[(1, 1, 1)]
        direct_backward = lambda: direct(  # noqa: E731
            x, w, dy, y, stats[0], stats[1], x, x, 64, 48, rows, block_cols, False)
        costs["direct backward launch"] = host_us(direct_backward)
        costs["Function direct-launching in bwd"] = host_us(
            lambda: torch.autograd.grad(_LaunchInBackward.apply(xg, direct_backward), xg, dy))
    except Exception as error:  # noqa: BLE001 - a diagnostic: Triton's internals differ between versions
        print(f"direct launch unavailable: {error!r}")
    for name, us in costs.items():
        print(f"host per call, {name:26s} {us:7.1f} us")
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    costs = host_costs()
    rows_out = []
    print(f"{'C':>4} {'rows':>8}  {'forward':>17}  {'fwd+bwd frozen':>17}  {'fwd+bwd affine':>17}   (ms: torch / ours)")
    for channels, rows in LEVELS:
        x = torch.randn(rows, channels, device="cuda")
        dy = torch.randn_like(x)
        weight, bias = torch.randn(channels, device="cuda"), torch.randn(channels, device="cuda")
        torch_norm = lambda x, w, b: F.layer_norm(x, (channels,), w, b, 1e-5)  # noqa: E731
        ours_norm = lambda x, w, b: triton_layer_norm(x, w, b, 1e-5)  # noqa: E731
        cell = {"channels": channels, "rows": rows}
        for name, norm in (("torch", torch_norm), ("ours", ours_norm)):
            xg, wg, bg = x.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()
            with torch.no_grad():
                cell[f"{name}_forward"] = device_ms(lambda: norm(x, weight, bias))
            cell[f"{name}_frozen"] = device_ms(lambda: torch.autograd.grad(norm(xg, weight, bias), xg, dy))
            cell[f"{name}_affine"] = device_ms(lambda: torch.autograd.grad(norm(xg, wg, bg), (xg, wg, bg), dy))
        out, ref = triton_layer_norm(x, weight, bias, 1e-5), F.layer_norm(x, (channels,), weight, bias, 1e-5)
        cell["max_abs_difference"] = (out - ref).abs().max().item()
        rows_out.append(cell)
        print(f"{channels:>4} {rows:>8}  " + "  ".join(f"{cell['torch_' + k]:>8.3f} / {cell['ours_' + k]:<6.3f}"
                                                     for k in ("forward", "frozen", "affine"))
              + f"   max |diff| {cell['max_abs_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "host_us": costs, "levels": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
