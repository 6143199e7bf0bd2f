"""Bottleneck adapter: ``up(relu(down(x)))`` once per encoder block, with biases.

Default reproduces the paper's Table 1 size (``gem-paper.md`` §4): one adapter per block after the
MLP residual (Pfeiffer-style, ``x = x + adapter(x)``), bottleneck 192 on all 24 encoder blocks,
2,782,788 trainable with the ScanNet-20 head (Table 10's tight budget: bottleneck=1, 46,140).
``placement`` also offers the AdaptFormer form beside the MLP and a branch beside attention.
The up-projection is zero-initialised, so at init the model is exactly the frozen backbone.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.errors import PeftbenchError

# placement -> the block slot the adapter fills (see peftbench/backbone/block.py)
PLACEMENT_SLOTS = {
    "post_mlp": "post_mlp",            # sequential: x = x + adapter(x) after the MLP residual
    "parallel_mlp": "mlp_branches",    # AdaptFormer: beside the MLP, same input norm2(x)
    "parallel_attn": "attn_branches",  # beside attention, same input norm1(x)
}


@dataclasses.dataclass
class AdapterConfig(MethodConfig):
    bottleneck: int = 192         # hidden width r of the adapter
    placement: str = "post_mlp"   # post_mlp | parallel_mlp | parallel_attn
    scale: float = 1.0            # output multiplier (AdaptFormer uses 0.1)


class BottleneckAdapter(nn.Module):
    """down (d->r, bias) -> ReLU -> up (r->d, bias), times ``scale``; zero output at init."""

    def __init__(self, channels: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, channels)
        self.scale = scale
        # AdaptFormer's init: kaiming-uniform down, zeros elsewhere, so training starts at the backbone.
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, point, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(x)))
        # no multiply at the default scale of 1: a kernel and an autograd node in each of 24 blocks (issue 12)
        return out if self.scale == 1.0 else out * self.scale


@register
class Adapter(Method):
    """One bottleneck adapter per encoder block (default after the MLP residual, bottleneck 192)."""

    name = "adapter"
    prefix = "adapter_"
    config_class = AdapterConfig

    def attach(self, model: nn.Module) -> None:
        cfg: AdapterConfig = self.config
        if cfg.placement not in PLACEMENT_SLOTS:
            raise PeftbenchError(f"adapter: placement must be one of {list(PLACEMENT_SLOTS)}, "
                                 f"got {cfg.placement!r}")
        if cfg.bottleneck < 1:
            raise PeftbenchError(f"adapter: bottleneck must be >= 1, got {cfg.bottleneck}")
        for _, block in model.backbone.encoder_blocks():
            slot = getattr(block, PLACEMENT_SLOTS[cfg.placement])
            slot["adapter_bottleneck"] = BottleneckAdapter(block.channels, cfg.bottleneck, cfg.scale)
