"""``base + relu(a) @ W^T + b`` with the product in float32, on the Triton kernels: a branch's ReLU, up-projection
and add (GEM's Spatial Adapter after its conv; the block's residual sum too). On CUDA, one kernel forward instead
of four launches, and two and a sum backward instead of five or six (``triton_relu_linear``; switch
``TRITON_RELU_LINEAR``). Elsewhere the caller runs its own torch ops.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from peftbench.backbone.function_apply import apply
from peftbench.backbone.triton_support import triton_kernels

TRITON_RELU_LINEAR = 1  # 0: torch ops on CUDA too (A/Bs)


def _kernels_for(base: Tensor, a: Tensor, weight: Tensor) -> ModuleType | None:
    """The kernels' module where they take the call (switched on, CUDA, float32 ``base`` and ``weight``, Triton
    importable), else None."""
    if TRITON_RELU_LINEAR and a.is_cuda and base.dtype == torch.float32 and weight.dtype == torch.float32:
        return triton_kernels("triton_relu_linear")
    return None


def fused_relu_linear_add(base: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None,
                          residual: Tensor | None = None) -> Tensor | None:
    """``base + relu(a) @ weight.T + bias`` on the kernels: ``a`` (N, r) in any float dtype, the product and bias in
    float32 (``weight`` (C, r), ``bias`` (C,) or None), the sum in ``base``'s dtype (N, C); with ``residual``
    (``base``'s shape), ``residual + (base + ...)``. None where the kernels do not take it (``residual`` in
    another dtype than ``base``'s too)."""
    kernels = _kernels_for(base, a, weight)
    if kernels is None or (residual is not None and residual.dtype != base.dtype):
        return None
    return apply(kernels.ReluLinearAdd, base, a, weight, bias, residual)
