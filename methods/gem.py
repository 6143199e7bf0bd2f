"""GEM (Geometry Encoding Mixer, NeurIPS 2025): a Spatial Adapter beside every encoder block's CPE
and a Context Adapter beside its attention, whose latent tokens flow from block to block.

Choices the paper leaves open follow `gem-paper.md` §6 and are settings: zero-init
up-projections (GEM starts as the frozen backbone), one d-sized bias per block on the SA
up-projection (matches Table 10's r=1 count), CA projections ``shared_qk`` (matches 1.8M).
The registered names ``gem``, ``sa`` and ``ca`` are the paper's Table 6a rows.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.backbone.latent_attention import scene_latent_attention
from peftbench.backbone.sparse_conv import SubMConv3d
from peftbench.errors import PeftbenchError

CA_PROJECTIONS = ("shared_qk", "shared_kv", "qkv+up")
LATENT_SHARING = ("global", "stage", "layer")


@dataclasses.dataclass
class GEMConfig(MethodConfig):
    rank: int = 32                # r, the same at every stage
    kernel_size: int = 3          # SA sparse-conv kernel k
    num_latents: int = 4          # m
    spatial: bool = True          # Spatial Adapter
    context: bool = True          # Context Adapter
    ca_proj: str = "shared_qk"    # shared_qk (3dr) | shared_kv (3dr) | qkv+up (4dr, literal reading)
    latent_sharing: str = "global"  # global | stage | layer (Table 6c)
    sa_bias: bool = True          # one d-sized bias per block, on the SA up-projection
    latent_init_std: float = 0.02


class SpatialAdapter(nn.Module):
    """down (d->r) -> sparse conv k^3 at rank r (reusing the CPE's neighbour map) -> ReLU -> up (r->d)."""

    def __init__(self, channels: int, rank: int, kernel_size: int, indice_key: str, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(channels, rank, bias=False)
        self.conv = SubMConv3d(rank, rank, kernel_size, bias=False, indice_key=indice_key)
        self.act = nn.ReLU()
        self.up = nn.Linear(rank, channels, bias=bias)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)

    def forward(self, point, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.conv(point, self.down(x))))


class LatentBank(nn.Module):
    """Learned latents L (m, r), copied once per scene into the point batch's scene state."""

    def __init__(self, num_latents: int, rank: int, std: float) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(num_latents, rank))
        nn.init.trunc_normal_(self.latents, std=std)

    def forward(self, point) -> None:
        point.scene_state["gem_latents"] = self.latents.unsqueeze(0).expand(point.num_scenes, -1, -1)


class ContextAdapter(nn.Module):
    """Latents attend to all points of their own scene (segment softmax over points), update
    ``L <- L + L_c`` for the next block, and every point reads the updated latents back to d."""

    def __init__(self, channels: int, rank: int, proj: str, bank: LatentBank | None) -> None:
        super().__init__()
        self.scale = rank ** -0.5
        self.proj = proj
        self.k = nn.Linear(channels, rank, bias=False)
        if proj in ("shared_qk", "qkv+up"):
            self.v = nn.Linear(channels, rank, bias=False)
        if proj in ("shared_kv", "qkv+up"):
            self.q = nn.Linear(channels, rank, bias=False)
        self.up = nn.Linear(rank, channels, bias=False)
        for layer in (self.k, getattr(self, "v", None), getattr(self, "q", None)):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
        nn.init.zeros_(self.up.weight)
        self.bank = bank  # own latents (per-stage / per-layer sharing): reset the scene state here

    def forward(self, point, h: torch.Tensor) -> torch.Tensor:
        if self.bank is not None:
            self.bank(point)
        latents = point.scene_state["gem_latents"]                     # (B, m, r)
        k = self.k(h)
        v = self.v(h) if hasattr(self, "v") else k
        q = self.q(h) if hasattr(self, "q") else None  # None: the read reuses the first affinity
        # float32 affinity / softmaxes / sums, as a few dense matmuls (no per-point latent copies)
        out, latents = scene_latent_attention(k, v, q, latents, point.batch, self.scale)
        point.scene_state["gem_latents"] = latents
        return self.up(out)


def segment_softmax(scores: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``scores`` (N, m) over the rows of each segment, per column."""
    index = segment.unsqueeze(-1).expand_as(scores)
    peak = scores.new_full((num_segments, scores.shape[1]), -math.inf)
    peak = peak.scatter_reduce(0, index, scores, "amax", include_self=True)
    exp = (scores - peak.index_select(0, segment)).exp()
    total = exp.new_zeros(num_segments, scores.shape[1]).index_add_(0, segment, exp)
    return exp / total.index_select(0, segment)


@register
class GEM(Method):
    """GEM: Spatial Adapter beside the CPE + Context Adapter beside attention (Tang et al. 2025)."""

    name = "gem"
    prefix = "gem_"
    config_class = GEMConfig

    def attach(self, model: nn.Module) -> None:
        cfg: GEMConfig = self.config
        if cfg.ca_proj not in CA_PROJECTIONS or cfg.latent_sharing not in LATENT_SHARING:
            raise PeftbenchError(f"gem: ca_proj must be one of {CA_PROJECTIONS} and latent_sharing one of "
                                 f"{LATENT_SHARING}; got {cfg.ca_proj!r}, {cfg.latent_sharing!r}")
        if not (cfg.spatial or cfg.context):
            raise PeftbenchError("gem: enable at least one of spatial / context")
        backbone = model.backbone
        if cfg.context and cfg.latent_sharing == "global":
            backbone.scene_state_init["gem_latents"] = LatentBank(cfg.num_latents, cfg.rank, cfg.latent_init_std)
        last_stage = None
        for stage, block in backbone.encoder_blocks():
            if cfg.spatial:
                block.cpe_branches["gem_sa"] = SpatialAdapter(block.channels, cfg.rank, cfg.kernel_size,
                                                              block.indice_key, cfg.sa_bias)
            if cfg.context:
                own = cfg.latent_sharing == "layer" or (cfg.latent_sharing == "stage" and stage != last_stage)
                bank = LatentBank(cfg.num_latents, cfg.rank, cfg.latent_init_std) if own else None
                block.attn_branches["gem_ca"] = ContextAdapter(block.channels, cfg.rank, cfg.ca_proj, bank)
            last_stage = stage


@register
class SpatialAdapterOnly(GEM):
    """GEM's Spatial Adapter alone (Table 6a)."""

    name = "sa"
    prefix = "gem_"

    def __init__(self, config: GEMConfig | None = None, **overrides) -> None:
        super().__init__(config, **{"context": False, **overrides})


@register
class ContextAdapterOnly(GEM):
    """GEM's Context Adapter alone (Table 6a)."""

    name = "ca"
    prefix = "gem_"

    def __init__(self, config: GEMConfig | None = None, **overrides) -> None:
        super().__init__(config, **{"spatial": False, **overrides})
