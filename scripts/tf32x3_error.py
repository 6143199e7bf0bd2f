#!/usr/bin/env python
"""Error of the Context Adapter's projection ``h @ w^T`` with Triton's ``tf32x3`` products against float32 (``ieee``)
and plain ``tf32``, emulated on CPU: TF32 is float32 rounded to 10 mantissa bits; ``tf32x3`` splits each operand into a
TF32 high and low part and sums ``hi*hi + hi*lo + lo*hi`` in float32. Shapes of Sonata's levels (C = 48 / 192 / 512
channels, rank 32), unit-scale normed features, weights at the adapter's init scale; errors against float64.

    python scripts/tf32x3_error.py
"""

from __future__ import annotations

import torch


def tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to nearest even at 10 mantissa bits."""
    bits = x.view(torch.int32)
    return ((bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)


def main() -> int:
    torch.manual_seed(0)
    for channels in (48, 192, 512):
        h = torch.randn(4096, channels)
        w = torch.randn(32, channels) * 0.02
        truth = h.double() @ w.double().T
        h_hi, w_hi = tf32(h), tf32(w)
        h_lo, w_lo = tf32(h - h_hi), tf32(w - w_hi)
        products = {"ieee": h @ w.T, "tf32x3": h_hi @ w_hi.T + (h_hi @ w_lo.T + h_lo @ w_hi.T), "tf32": h_hi @ w_hi.T}
        for name, got in products.items():
            err = (got.double() - truth).abs()
            largest = err.max().item() / truth.abs().max().item()
            median = (err / truth.abs().clamp_min(1e-12)).median().item()
            print(f"C={channels:4d} {name:7s} largest error / largest |out| {largest:.1e}, median relative error {median:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
