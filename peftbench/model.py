"""Segmentor = PTv3 backbone + linear head (hypercolumn of the encoder, or the decoder output)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftbench.backbone import Point, PointTransformerV3, hypercolumn, hypercolumn_linear
from peftbench.train.precision import trainable_weights_cast_once


class Segmentor(nn.Module):
    """Per-point class logits. ``head="hypercolumn"`` is Sonata's linear probe head on all encoder
    levels (1232 channels for Sonata); with a decoder backbone the head reads the decoder output."""

    def __init__(self, backbone_config: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.backbone_config = dict(backbone_config)
        self.num_classes = num_classes
        self.backbone = PointTransformerV3(**backbone_config)
        in_channels = self.backbone.hypercolumn_channels if self.backbone.enc_mode else self.backbone.out_channels
        self.seg_head = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.seg_head.weight, std=0.02)
        nn.init.zeros_(self.seg_head.bias)

    def features(self, data: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        point = self.backbone(Point(data), generator)
        if self.backbone.enc_mode:
            point = hypercolumn(point)
        return point.feat

    def forward(self, data: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        with trainable_weights_cast_once(self):  # training under autocast: one cast of the trainable Linears
            if self.backbone.enc_mode:  # the head per level: no (N, 1232) hypercolumn in memory
                return hypercolumn_linear(self.backbone(Point(data), generator), self.seg_head)
            return self.seg_head(self.features(data, generator))
