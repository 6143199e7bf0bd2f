"""``nn.LayerNorm`` (same parameters and keys; equal numbers up to float32 rounding) whose narrow CUDA rows
take the Triton kernels.

torch's CUDA LayerNorm spends one thread block per row, slow at the widths of Sonata's first levels
(see ``triton_layer_norm``). Elsewhere (CPU, wide rows, no Triton) this is torch's LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.function_apply import apply
from peftbench.backbone.triton_support import triton_kernels

TRITON_MAX_CHANNELS = 128  # widest rows sent to the Triton kernels (0: never)


def triton_function():
    """The kernels' autograd Function, or None without Triton."""
    kernels = triton_kernels("triton_layer_norm")
    return None if kernels is None else kernels.TritonLayerNorm


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor, linear_input: bool = False) -> torch.Tensor:
        """``linear_input``: only autocast linears read the output (see ``triton_layer_norm``)."""
        # under torch.compile, Inductor writes its own fused kernel
        if (x.is_cuda and x.dim() == 2 and x.shape[1] <= TRITON_MAX_CHANNELS and self.weight is not None
                and self.bias is not None and not torch.compiler.is_compiling() and triton_function() is not None):
            return triton_layer_norm(x, self.weight, self.bias, self.eps, linear_input)
        return super().forward(x)


def triton_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      linear_input: bool = False) -> torch.Tensor:
    """``F.layer_norm`` of (N, C) rows, its output dtype included: float32 under autocast (LayerNorm is on
    autocast's float32 list), else ``x``'s. ``linear_input`` (only autocast linears read the output, which
    cast it to the autocast dtype): under autocast the kernel writes that dtype itself, without the cast's
    kernel and its backward's on every call; the same numbers up to float32 rounding (tested)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        out_dtype = x.dtype
    else:
        out_dtype = torch.get_autocast_dtype(device) if linear_input else torch.float32
    return apply(triton_function(), x, weight, bias, eps, out_dtype)
