"""``base + relu(a) @ W^T + b`` with the product in float32: a branch's ReLU, up-projection and residual add
(GEM's Spatial Adapter after its conv). On CUDA, one Triton kernel forward instead of four launches, and two and
a sum backward instead of five or six (``triton_relu_linear``; switch ``TRITON_RELU_LINEAR``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftbench.backbone.function_apply import apply
from peftbench.backbone.triton_support import triton_kernels

TRITON_RELU_LINEAR = 1  # 0: torch ops on CUDA too (A/Bs)


def relu_linear_add(base: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``base + relu(a) @ weight.T + bias``: the ReLU of ``a`` (N, r) in its dtype, the product and bias in float32
    (``weight`` (C, r) and ``bias`` are float32, autocast off), the sum in ``base``'s dtype (N, C)."""
    if TRITON_RELU_LINEAR and a.is_cuda and base.dtype == torch.float32 and weight.dtype == torch.float32:
        kernels = triton_kernels("triton_relu_linear")
        if kernels is not None:
            return apply(kernels.ReluLinearAdd, base, a, weight, bias)
    with torch.autocast(a.device.type, enabled=False):
        return base + nn.functional.linear(nn.functional.relu(a).to(weight.dtype), weight, bias).to(base.dtype)
