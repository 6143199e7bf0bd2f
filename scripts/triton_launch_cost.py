#!/usr/bin/env python
"""Host time to issue one Triton launch on a GPU, layer by layer (issue 12).

A GEM training step makes ~600 Triton launches (session 38's profile) and its forward waits on the host. This
issues the Spatial Adapter's forward kernel (``triton_relu_linear``) on 64 rows, too little work for the device to
be the limit, through each layer of the launch path: Triton's ``kernel[grid]``, our ``triton_launch.launch``, the compiled
kernel's ``[grid]``, its launcher object, and a ``torch.add_`` for scale. Host us a launch, median of 5 runs.

    python scripts/triton_launch_cost.py --json launch.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.backbone import triton_launch  # noqa: E402
from peftbench.backbone import triton_relu_linear as relu_linear  # noqa: E402
from scripts.launch_cost import issue_us  # noqa: E402


def median_issue_us(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """The median of 5 runs of ``launch_cost.issue_us``."""
    return sorted(issue_us(lambda i: fn(), calls, device) for _ in range(5))[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows, cols, r = 64, 48, 32
    base = torch.randn(rows, cols, device=device)
    a = torch.randn(rows, r, device=device, dtype=torch.float16)
    weight = torch.randn(cols, r, device=device)
    bias = torch.randn(cols, device=device)
    y = torch.empty_like(base)
    kernel = relu_linear._forward_kernel
    grid = (1, 1)
    kernel_args = (base, a, a.stride(0), weight, bias, y, rows, r, cols)
    constexprs = dict(HAS_BIAS=True, BLOCK=relu_linear.BLOCK_ROWS, BLOCK_COLS=64, RP=32)
    compiled = kernel[grid](*kernel_args, **constexprs)
    named = [constexprs[name] for name in kernel.arg_names[len(kernel_args):]]
    stream = torch.cuda.current_stream().cuda_stream
    compiled[(1, 1, 1)](*kernel_args, *named)
    expected = base + torch.relu(a.float()) @ weight.T + bias
    torch.testing.assert_close(y, expected)  # the layers below launch the same kernel on the same arguments
    rows_out = [
        ("torch add_ (scale)", lambda: base.add_(0.0)),
        ("kernel[grid] (Triton's JIT path)", lambda: kernel[grid](*kernel_args, **constexprs)),
        ("triton_launch.launch (ours)", lambda: triton_launch.launch(kernel, grid, *kernel_args, **constexprs)),
        ("our launch key only", lambda: triton_launch._specialization(kernel_args)),
        ("compiled[grid](*args)", lambda: compiled[(1, 1, 1)](*kernel_args, *named)),
        ("compiled.run(...), no hooks", lambda: compiled.run(1, 1, 1, stream, compiled.function,
                                                             compiled.packed_metadata, None, None, None,
                                                             *kernel_args, *named)),
        ("torch.cuda.current_stream()", lambda: torch.cuda.current_stream().cuda_stream),
    ]
    results = {}
    for name, fn in rows_out:
        try:
            results[name] = median_issue_us(fn, args.calls, device)
        except Exception as error:  # an internal API this Triton lacks: say so, go on
            results[name] = f"{type(error).__name__}: {error}"
        value = results[name]
        print(f"{name:40s} " + (f"{value:7.2f} us" if isinstance(value, float) else value), flush=True)
    torch.testing.assert_close(y, expected)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "triton": triton.__version__,
                       "torch": torch.__version__, "calls": args.calls, "us": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
