"""``nn.LayerNorm`` (same parameters and keys; equal numbers up to float32 rounding) whose narrow CUDA rows
take the Triton kernels.

torch's CUDA LayerNorm spends one thread block per row, slow at the widths of Sonata's first levels
(see ``triton_layer_norm``). Elsewhere (CPU, wide rows, no Triton) this is torch's LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.triton_support import triton_kernels

TRITON_MAX_CHANNELS = 128  # widest rows sent to the Triton kernels (0: never)


def triton_function():
    """The kernels' autograd Function, or None without Triton."""
    kernels = triton_kernels("triton_layer_norm")
    return None if kernels is None else kernels.TritonLayerNorm


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under torch.compile, Inductor writes its own fused kernel
        if (x.is_cuda and x.dim() == 2 and x.shape[1] <= TRITON_MAX_CHANNELS and self.weight is not None
                and self.bias is not None and not torch.compiler.is_compiling() and triton_function() is not None):
            return triton_layer_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def triton_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.layer_norm`` of (N, C) rows, its output dtype included: float32 under autocast (LayerNorm is on
    autocast's float32 list), else ``x``'s."""
    out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    return triton_function().apply(x, weight, bias, eps, out_dtype)
