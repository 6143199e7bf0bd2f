"""Point Transformer V3 with Sonata's module names, constructor arguments and state-dict keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from peftbench.backbone.block import Block
from peftbench.backbone.layer_norm import LayerNorm
from peftbench.backbone.patch_layout import scene_counts
from peftbench.backbone.pooling import GridPooling, GridUnpooling
from peftbench.backbone.serialization import serialize
from peftbench.backbone.structure import Point
from peftbench.errors import PeftbenchError

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


class Embedding(nn.Module):
    """Input stem: Linear -> LayerNorm -> GELU (keys ``embedding.stem.{linear,norm}``)."""

    def __init__(self, in_channels: int, channels: int, mask_token: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("linear", nn.Linear(in_channels, channels))
        self.stem.add_module("norm", LayerNorm(channels))
        self.stem.add_module("act", nn.GELU())
        self.mask_token = nn.Parameter(torch.zeros(1, channels)) if mask_token else None

    def forward(self, point: Point) -> Point:
        feat = self.stem(point.feat)
        if self.mask_token is not None and "mask" in point:
            mask = point["mask"].unsqueeze(-1).to(feat.dtype)
            feat = feat * (1 - mask) + self.mask_token * mask
        point.feat = feat
        return point


class Stage(nn.Sequential):
    """One encoder/decoder level: optional ``down``/``up`` then ``block0..``."""

    def forward(self, point: Point) -> Point:  # type: ignore[override]
        for module in self:
            point = module(point)
        return point


class PointTransformerV3(nn.Module):
    def __init__(
        self,
        in_channels: int = 6,
        order: Sequence[str] = ("z", "z-trans"),
        stride: Sequence[int] = (2, 2, 2, 2),
        enc_depths: Sequence[int] = (3, 3, 3, 12, 3),
        enc_channels: Sequence[int] = (48, 96, 192, 384, 512),
        enc_num_head: Sequence[int] = (3, 6, 12, 24, 32),
        enc_patch_size: Sequence[int] = (1024, 1024, 1024, 1024, 1024),
        dec_depths: Sequence[int] = (3, 3, 3, 3),
        dec_channels: Sequence[int] = (96, 96, 192, 384),
        dec_num_head: Sequence[int] = (6, 6, 12, 32),
        dec_patch_size: Sequence[int] = (1024, 1024, 1024, 1024),
        mlp_ratio: float = 4,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.3,
        layer_scale: float | None = None,
        pre_norm: bool = True,
        shuffle_orders: bool = True,
        enable_rpe: bool = False,
        enable_flash: bool = True,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        traceable: bool = False,
        mask_token: bool = False,
        enc_mode: bool = False,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if enable_rpe or layer_scale is not None or not pre_norm:
            raise PeftbenchError("backbone config: enable_rpe=True, layer_scale and pre_norm=False are not "
                                 "supported (Sonata uses enable_rpe=False, layer_scale=None, pre_norm=True)")
        bad = [o for o in order if o not in ORDERS]
        if bad:
            raise PeftbenchError(f"backbone config: unknown serialization order {bad}; use some of {ORDERS}")
        num_stages = len(enc_depths)
        if not (len(enc_channels) == len(enc_num_head) == len(enc_patch_size) == num_stages
                and len(stride) == num_stages - 1):
            raise PeftbenchError("backbone config: enc_depths, enc_channels, enc_num_head, enc_patch_size need "
                                 "one entry per stage and stride one fewer")
        self.order = tuple(order)
        self.shuffle_orders = shuffle_orders
        self.enc_mode = enc_mode
        self.enc_channels = tuple(enc_channels)
        self.dec_channels = tuple(dec_channels)
        self.embedding = Embedding(in_channels, enc_channels[0], mask_token)

        def blocks(stage: Stage, depth, channels, heads, patch, drops, s) -> None:
            for i in range(depth):
                stage.add_module(f"block{i}", Block(
                    channels, heads, patch, mlp_ratio, qkv_bias, qk_scale, attn_drop, proj_drop,
                    drops[i], order_index=i % len(self.order), indice_key=f"stage{s}",
                    enable_flash=enable_flash))

        enc_drop = torch.linspace(0, drop_path, sum(enc_depths), device="cpu").tolist()
        self.enc = Stage()
        for s in range(num_stages):
            stage = Stage()
            if s > 0:
                stage.add_module("down", GridPooling(enc_channels[s - 1], enc_channels[s], stride[s - 1],
                                                     shuffle_orders=shuffle_orders))
            drops = enc_drop[sum(enc_depths[:s]):sum(enc_depths[:s + 1])]
            blocks(stage, enc_depths[s], enc_channels[s], enc_num_head[s], enc_patch_size[s], drops, s)
            self.enc.add_module(f"enc{s}", stage)

        if not enc_mode:
            dec_drop = torch.linspace(0, drop_path, sum(dec_depths), device="cpu").tolist()
            channels = list(dec_channels) + [enc_channels[-1]]
            self.dec = Stage()
            for s in reversed(range(num_stages - 1)):
                stage = Stage()
                stage.add_module("up", GridUnpooling(channels[s + 1], enc_channels[s], channels[s]))
                drops = dec_drop[sum(dec_depths[:s]):sum(dec_depths[:s + 1])][::-1]
                blocks(stage, dec_depths[s], dec_channels[s], dec_num_head[s], dec_patch_size[s], drops, s)
                self.dec.add_module(f"dec{s}", stage)

        # Slot: modules called with the input point to set per-scene state (e.g. GEM's latents).
        self.scene_state_init = nn.ModuleDict()
        self.apply(_init_weights)
        if freeze_encoder:
            for p in [*self.embedding.parameters(), *self.enc.parameters()]:
                p.requires_grad_(False)

    def build_sites(self, point: Point) -> None:
        """Every encoder level's sites, scene sizes and sparse-conv index pairs, from the input's
        coordinates, before any block runs. Each waits for the device (``torch.unique``, a read of the
        scene ends, spconv's pair building): built here, the waits find little queued; built after a
        level's blocks, each waited for all of them, and the device then idled while the host queued
        the next level's work."""
        level = point
        for stage in self.enc.children():
            if hasattr(stage, "down"):
                level = stage.down.sites(level)
            scene_counts(level)
            if hasattr(stage, "block0"):  # the sparse conv's index pairs (spconv waits too)
                stage.block0.cpe[0].build_index(level)

    def encoder_blocks(self):
        """Yield ``(stage index, block)`` for every encoder block, in forward order."""
        for s, stage in enumerate(self.enc.children()):
            for name, module in stage.named_children():
                if name.startswith("block"):
                    yield s, module

    @property
    def out_channels(self) -> int:
        """Channels per point of ``forward``'s level-0 output (encoder) or the decoder."""
        return self.enc_channels[-1] if self.enc_mode else self.dec_channels[0]

    @property
    def hypercolumn_channels(self) -> int:
        return sum(self.enc_channels)

    def forward(self, data: dict | Point, generator: torch.Generator | None = None) -> Point:
        """Run the network. ``generator`` drives the order shuffling (the reference uses the
        global RNG even in eval; an explicit generator makes evaluation reproducible)."""
        point = data if isinstance(data, Point) else Point(data)
        point["order"] = self.order
        if generator is not None:
            point["generator"] = generator
        serialize(point, self.order, self.shuffle_orders, generator)
        self.build_sites(point)
        point = self.embedding(point)
        for init in self.scene_state_init.values():
            init(point)
        point = self.enc(point)
        if not self.enc_mode:
            point = self.dec(point)
        return point


def _levels_finest_first(point: Point) -> tuple[list[Point], list[torch.Tensor | None]]:
    """Every level from the finest (``point``'s furthest parent) to ``point``, with each level's map
    from the finest sites to its cells (None for the finest), composed once per level; the pooling
    links are dropped as they are read."""
    levels = [point]
    while "pooling_parent" in levels[-1]:
        levels.append(levels[-1]["pooling_parent"])
    maps, inverse = [None], None
    for child in reversed(levels[:-1]):  # coarser and coarser
        step = child["pooling_inverse"]
        inverse = step if inverse is None else step.index_select(0, inverse)
        maps.append(inverse)
    for child in levels[:-1]:
        child.pop("pooling_parent")
        child.pop("pooling_inverse")
    return levels[::-1], maps


def hypercolumn(point: Point) -> Point:
    """Concatenate every level's features onto the finest level (parent first, as Pointcept)."""
    levels, maps = _levels_finest_first(point)
    levels[0].feat = torch.cat([level.feat if cells is None else level.feat.index_select(0, cells)
                                for level, cells in zip(levels, maps)], dim=-1)
    return levels[0]


def hypercolumn_linear(point: Point, head: nn.Linear) -> torch.Tensor:
    """``head(hypercolumn(point).feat)`` without the concatenation: each level's slice of the head's
    weight is applied at that level and its (cells, classes) result gathered to the finest sites.
    The same sum, without the (N, 1232) hypercolumn and its gathered parts (0.75 GB for three
    102k-point scenes in fp16, kept for the backward). Logits at least float32: the levels' terms are
    added in float32 under autocast."""
    levels, maps = _levels_finest_first(point)
    weights = head.weight.split([level.feat.shape[-1] for level in levels], dim=1)
    logits = None
    for level, cells, weight in zip(levels, maps, weights):
        term = nn.functional.linear(level.feat, weight, head.bias if cells is None else None)
        term = term.to(torch.promote_types(term.dtype, torch.float32))
        term = term if cells is None else term.index_select(0, cells)
        logits = term if logits is None else logits + term
    return logits


def _init_weights(module: nn.Module) -> None:
    # Reference init: trunc-normal(0.02) on Linear (SubMConv3d initialises itself), zero biases.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
