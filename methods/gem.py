"""GEM (Geometry Encoding Mixer, NeurIPS 2025): a Spatial Adapter beside every encoder block's CPE
and a Context Adapter beside its attention, whose latent tokens flow from block to block.

Choices the paper leaves open follow `gem-paper.md` §6 and are settings: zero-init
up-projections (GEM starts as the frozen backbone), one d-sized bias per block on the SA
up-projection (``sa_bias``: Table 10's r=1 GEM is 0.07M only with it; without it SA alone prints
1.0 % instead of 1.1 %, but GEM and CA stay at 1.7 % / 0.7 %, so it does not close the gap: the
paper's Pct column is matched by counting without the linear head, see ``peftbench params``),
CA projections ``shared_qk`` (matches 1.8M), points reading the *updated* latents
(``read_latents``). The registered names ``gem``, ``sa`` and ``ca`` are the paper's Table 6a rows.

Precision: the Context Adapter runs in float32 whatever the autocast dtype and device (its
projections, affinity, per-scene softmax and context accumulation; the result is cast back to its
input's dtype), so a softmax over ~100k points is not at the mercy of an autocast op list. Both
adapters' d x r projections run in float32 (``float32_linear``): the casts to and from the autocast
dtype around them (a kernel and a backward node each, ~14 a GEM block) cost a GPU step more host
time than the small float32 products; the Spatial Adapter's sparse conv runs in the autocast dtype.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.backbone import latent_attention
from peftbench.backbone.autocast_off import autocast_off
from peftbench.backbone.block import CPEConvBranch
from peftbench.backbone.latent_attention import (cached_off_scene_bias, kernels_take, projected_latent_attention,
                                                 scene_latent_attention)
from peftbench.backbone.no_grad_memo import no_grad_memo
from peftbench.backbone.relu_linear import fused_relu_linear_add
from peftbench.backbone.sparse_conv import FactoredWeight, SubMConv3d
from peftbench.errors import PeftbenchError

CA_PROJECTIONS = ("shared_qk", "shared_kv", "qkv+up")
LATENT_SHARING = ("global", "stage", "layer")
READ_LATENTS = ("updated", "previous")


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
    read_latents: str = "updated"   # updated | previous: the latents the points' queries are scored against
    latent_init_std: float = 0.02


def float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in the weight's dtype (float32; autocast off: see the module's precision note)."""
    with autocast_off(x.device.type):
        return nn.functional.linear(x.to(weight.dtype), weight, bias)


class SpatialAdapter(CPEConvBranch):
    """down (d->r) -> sparse conv k^3 at rank r (reusing the CPE's neighbour map) -> ReLU -> up (r->d).

    With the CPE's kernel the block runs ``conv(down(x))`` as one conv of ``x`` by the weights
    ``W_o @ W_down`` (``conv_weight``), extra output columns of the CPE's conv call.
    """

    float32_weights = True  # its projections read float32 weights (``float32_linear``): never cast for it

    def __init__(self, channels: int, rank: int, kernel_size: int, indice_key: str, bias: bool) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.down = nn.Linear(channels, rank, bias=False)
        self.conv = SubMConv3d(rank, rank, kernel_size, bias=False, indice_key=indice_key)
        self.act = nn.ReLU()
        self.up = nn.Linear(rank, channels, bias=bias)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)

    def conv_weight(self) -> torch.Tensor | FactoredWeight:
        # (r, k, k, k, r) @ (r, d) -> (r, k, k, k, d), float32; in training the factors, which the gathered conv
        # takes into its own autograd node
        factors = FactoredWeight(self.conv.weight, self.down.weight)
        if torch.is_grad_enabled():
            return factors
        return no_grad_memo(self, "conv_weight", (factors.conv, factors.down), factors.product)

    def after_conv(self, point, conv_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return float32_linear(self.act(conv_out), self.up.weight, self.up.bias).to(x.dtype)

    def add_after_conv(self, point, conv_out: torch.Tensor, x: torch.Tensor, out: torch.Tensor,
                       residual: torch.Tensor | None = None) -> torch.Tensor:
        # on CUDA one kernel (the residual sum too); it sums in out's dtype, where after_conv's result is x's
        fused = None
        if out.dtype == x.dtype:
            fused = fused_relu_linear_add(out, conv_out, self.up.weight, self.up.bias, residual)
        return super().add_after_conv(point, conv_out, x, out, residual) if fused is None else fused

    def forward(self, point, x: torch.Tensor) -> torch.Tensor:
        return self.after_conv(point, self.conv(point, float32_linear(x, self.down.weight)), x)  # conv: autocast dtype


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
    ``L <- L + L_c`` for the next block, and every point reads the updated latents back to d.

    ``read_latents`` says which latents the points' queries are scored against in the read-out
    (the values read are always the updated latents). ``updated`` (default, every ``ca_proj`` mode
    alike): the paper's latents are "dynamic prompts that capture the context of the current
    scene", so a point asks the latents that already hold this block's context; it costs one more
    n x m x r product, small beside the block. ``previous``: scores against the latents before the
    update, which for ``shared_qk`` reuses step 1's affinity (one n x m matrix, the single-affinity
    reading of ``gem-paper.md`` §1.3).
    """

    float32_weights = True  # its projections read float32 weights (``float32_linear``): never cast for it

    def __init__(self, channels: int, rank: int, proj: str, bank: LatentBank | None,
                 read_latents: str = "updated") -> None:
        super().__init__()
        self.scale = rank ** -0.5
        self.proj = proj
        self.read_latents = read_latents
        self.k = nn.Linear(channels, rank, bias=False)
        if proj in ("shared_qk", "qkv+up"):
            self.v = nn.Linear(channels, rank, bias=False)
        if proj in ("shared_kv", "qkv+up"):
            self.q = nn.Linear(channels, rank, bias=False)
        self.up = nn.Linear(rank, channels, bias=False)
        # the projections present, in the order of their concatenation (a plain attribute: no state-dict keys; a
        # module's missing attribute costs an exception in nn.Module.__getattr__ on every call)
        self.projections = tuple(name for name in ("k", "v", "q") if name in self._modules)
        for name in self.projections:
            nn.init.trunc_normal_(self._modules[name].weight, std=0.02)
        nn.init.zeros_(self.up.weight)
        self.bank = bank  # own latents (per-stage / per-layer sharing): reset the scene state here

    adds_to_base = True  # the block passes what it adds this branch to (``block._with_branches``)
    adds_residual = True  # and, in evaluation, the block's input too (``block.FOLD_RESIDUAL``)
    # its projections read h of any float dtype in float32 (the kernels, or ``float32_linear``): the norm may write h
    # in the autocast dtype (``block.HALF_BRANCH_INPUT``)
    reads_half_input = True

    def forward(self, point, h: torch.Tensor, base: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """The adapter's output for the normed features ``h``; given ``base``, ``base`` plus it, and given
        ``residual`` (with ``base``, autograd off), ``residual + (base + it)`` (on CUDA the sums are in the read-out
        kernel)."""
        if self.bank is not None:
            self.bank(point)
        latents = point.scene_state["gem_latents"]
        read_updated = self.read_latents == "updated"
        kernels = kernels_take(h, latents.shape[1])
        one_node = kernels is not None and latent_attention.ONE_NODE
        # the projections as one float32 matmul, split; or the kernels project h by each weight
        names = self.projections
        weights = [self._modules[name].weight for name in names]
        concatenated = len(weights) > 1 and not (one_node and latent_attention.projects_in_kernel())
        if concatenated and not torch.is_grad_enabled():  # (training: the concatenation is in the graph)
            weights = [no_grad_memo(self, "projections", weights, lambda: torch.cat(weights))]
        if one_node:  # CUDA: one autograd node for the whole adapter
            y, point.scene_state["gem_latents"] = projected_latent_attention(
                h, weights, self.up.weight, latents, point.batch, self.scale, read_updated, "v" in names,
                "q" in names, kernels, base, residual)
            return y
        parts = dict(zip(names, float32_linear(h, torch.cat(weights) if len(weights) > 1 else weights[0]).split(
            self.k.out_features, dim=-1)))
        k, v, q = parts["k"], parts.get("v"), parts.get("q")  # None: the keys double as values / queries
        # float32 affinity / softmaxes / sums whatever the autocast (the function turns it off)
        out, point.scene_state["gem_latents"] = scene_latent_attention(
            k, v, q, latents, point.batch, self.scale, read_updated=read_updated,
            scene_bias=None if kernels is not None else cached_off_scene_bias(point, latents.shape[1]))
        y = float32_linear(out, self.up.weight).to(h.dtype)
        y = y if base is None else base + y
        return y if residual is None else residual + y


@register
class GEM(Method):
    """GEM: Spatial Adapter beside the CPE + Context Adapter beside attention (Tang et al. 2025)."""

    name = "gem"
    prefix = "gem_"
    config_class = GEMConfig

    def attach(self, model: nn.Module) -> None:
        cfg: GEMConfig = self.config
        if (cfg.ca_proj not in CA_PROJECTIONS or cfg.latent_sharing not in LATENT_SHARING
                or cfg.read_latents not in READ_LATENTS):
            raise PeftbenchError(f"gem: ca_proj must be one of {CA_PROJECTIONS}, latent_sharing one of "
                                 f"{LATENT_SHARING} and read_latents one of {READ_LATENTS}; got {cfg.ca_proj!r}, "
                                 f"{cfg.latent_sharing!r}, {cfg.read_latents!r}")
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
                block.attn_branches["gem_ca"] = ContextAdapter(block.channels, cfg.rank, cfg.ca_proj, bank,
                                                                  cfg.read_latents)
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
