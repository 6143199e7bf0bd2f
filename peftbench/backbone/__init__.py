"""PTv3 (Sonata's Point Transformer V3) in small files."""

from peftbench.backbone.configs import BACKBONE_CONFIGS, backbone_config
from peftbench.backbone.ptv3 import PointTransformerV3, hypercolumn, hypercolumn_linear
from peftbench.backbone.structure import Point

__all__ = ["BACKBONE_CONFIGS", "Point", "PointTransformerV3", "backbone_config", "hypercolumn",
           "hypercolumn_linear"]
