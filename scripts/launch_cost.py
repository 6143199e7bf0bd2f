#!/usr/bin/env python
"""Host time to issue one op, by op and by whether its shape is new (issue 12).

Our steps are host-bound and each matmul takes 33-51 us of its own host time under the profiler
(`scripts/kernel_profile.py`), where ~10 us is usual. A step meets new point counts every time, so
every matmul shape is new to cuBLAS's heuristics; this times the issue cost of the same op with a
repeated shape and with a new row count each call, on work too small for the device to be the limit.

    python scripts/launch_cost.py --calls 150 --json launch.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable

import torch


def issue_us(op: Callable[[int], object], calls: int, device: torch.device) -> float:
    """Mean host microseconds to issue ``op(i)`` for i in 0..calls-1 (device drained before and after)."""
    for i in range(5):
        op(i)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(calls):
        op(i)
    issued = time.perf_counter() - start
    torch.cuda.synchronize(device)
    return issued / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    half = torch.float16
    rows, width, out = 4096, 96, 288
    unused = itertools.count(rows + 1)  # row counts no earlier call used (cuBLAS keeps what it chose per shape)
    unused_blocks = itertools.count(rows // 64 + 1)  # the same in multiples of 64 rows
    x = torch.randn(64 * (rows // 64 + 20 * (args.calls + 5)), width, device=device, dtype=half)
    w = torch.randn(out, width, device=device, dtype=half)
    w32 = w.float()
    b = torch.randn(out, device=device, dtype=half)
    norm = torch.nn.LayerNorm(width).to(device)
    cases = {
        "mm": lambda n: torch.mm(x[:n], w.T),
        "linear+bias": lambda n: torch.nn.functional.linear(x[:n], w, b),
        "linear, fp32 weight, autocast": lambda n: _autocast_linear(x[:n], w32),
        "add": lambda n: x[:n] + 1,
        "layer_norm fp32": lambda n: norm(x[:n].float()),
        "empty": lambda n: torch.empty(n, width, device=device, dtype=half),
    }
    shapes = {
        "same shape": lambda: (lambda i: rows),
        "new shape": lambda: (lambda i: next(unused)),
        # also new, but a multiple of 64 rows (another alignment class for cuBLAS)
        "new shape, rows % 64 == 0": lambda: (lambda i: 64 * next(unused_blocks)),
    }
    libraries = [None]
    if hasattr(torch.backends.cuda, "preferred_blas_library"):
        libraries = ["cublas", "cublaslt"]
    results = []
    for library in libraries:
        if library is not None:
            torch.backends.cuda.preferred_blas_library(library)
        for name, op in cases.items():
            if library not in (None, "cublas") and "linear" not in name and name != "mm":
                continue  # the library only changes matmuls
            row = {"op": name, "blas": library}
            for shape, make in shapes.items():
                rows_of = make()
                row[shape] = issue_us(lambda i: op(rows_of(i)), args.calls, device)
            results.append(row)
            print(f"{name:30s} {str(library):9s} " + "   ".join(f"{s} {row[s]:7.1f} us" for s in shapes), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "calls": args.calls, "results": results}, f, indent=1)
    return 0


def _autocast_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cuda", torch.float16):
        return torch.nn.functional.linear(x, w)


if __name__ == "__main__":
    raise SystemExit(main())
