"""Grid pooling / unpooling between PTv3 levels, with torch-native segment reductions."""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.layer_norm import LayerNorm
from peftbench.backbone.serialization import serialize
from peftbench.backbone.structure import Point


def segment_csr(src: torch.Tensor, indptr: torch.Tensor, reduce: str, nonempty: bool = False) -> torch.Tensor:
    """Reduce consecutive row segments ``src[indptr[i]:indptr[i+1]]`` (torch_scatter semantics).

    ``torch.segment_reduce`` yields -inf/nan on empty segments where torch_scatter yields 0.
    ``nonempty=True`` (the caller knows no segment is empty, as in grid pooling) skips that
    check and the host sync it costs on a GPU.
    """
    out = torch.segment_reduce(src, reduce, offsets=indptr, axis=0)
    if nonempty:
        return out
    empty = (indptr[1:] == indptr[:-1])
    if bool(empty.any()):
        out = out.masked_fill(empty.view(-1, *([1] * (out.dim() - 1))), 0)
    return out


class GridPooling(nn.Module):
    """Stride-2 voxel pooling: Linear, then max over each coarse voxel, then LayerNorm + GELU.

    Always keeps ``pooling_parent``/``pooling_inverse`` (the hypercolumn and decoder need them).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, reduce: str = "max",
                 shuffle_orders: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.reduce = reduce
        self.shuffle_orders = shuffle_orders
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(LayerNorm(out_channels))
        self.act = nn.GELU()

    def sites(self, point: Point) -> Point:
        """The coarser level's sites for ``point`` (coordinates, scenes, clusters; no features), kept
        on ``point`` until ``forward`` takes them. ``torch.unique`` waits for the device to finish
        what is queued, so ``PointTransformerV3.forward`` builds every level's sites before its first
        block, while the queue is short, instead of after a level's blocks."""
        if "pooled_sites" not in point:
            grid = torch.div(point.grid_coord.long(), self.stride, rounding_mode="trunc")
            # A packed key sorts like the reference's unique over rows of (coord | batch << 48):
            # scene first, then x, y, z (each < 2**16 because serialization depth <= 16).
            key = (point.batch.long() << 48) | (grid[:, 0] << 32) | (grid[:, 1] << 16) | grid[:, 2]
            _, cluster, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
            members = torch.argsort(cluster, stable=True)
            idx_ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, dim=0)])
            head = members[idx_ptr[:-1]]
            batch = point.batch[head]
            scenes = torch.arange(point.num_scenes, device=batch.device)
            point["pooled_sites"] = Point(
                grid_coord=grid[head],
                batch=batch,
                # scene ends by search (points stay sorted by scene), not bincount: no host sync
                offset=torch.searchsorted(batch, scenes, right=True),
                # floor division keeps the per-axis max: the child's from the parent's, no host sync
                grid_max=[m // self.stride for m in point.grid_max()],
                pooling_inverse=cluster,
                pooling_members=members,  # the parent's points, cluster by cluster
                pooling_ptr=idx_ptr,
            )
        return point["pooled_sites"]

    def forward(self, point: Point) -> Point:
        pooled = self.sites(point)
        del point["pooled_sites"]
        indices, idx_ptr = pooled.pop("pooling_members"), pooled.pop("pooling_ptr")
        # every cluster holds at least one point: no empty segments
        pooled.feat = segment_csr(self.proj(point.feat).index_select(0, indices), idx_ptr, self.reduce, nonempty=True)
        pooled.coord = segment_csr(point.coord.index_select(0, indices), idx_ptr, "mean", nonempty=True)
        pooled.pooling_parent = point
        pooled.scene_state = point.scene_state  # per-scene state flows across levels unchanged
        for name in ("origin_coord", "color"):
            if name in point:
                pooled[name] = segment_csr(point[name].index_select(0, indices), idx_ptr, "mean", nonempty=True)
        if "grid_size" in point:
            pooled["grid_size"] = point.grid_size * self.stride
        for name in ("order", "generator", "conv_backend"):
            if name in point:
                pooled[name] = point[name]
        pooled.feat = self.act(self.norm(pooled.feat))
        serialize(pooled, point.order, self.shuffle_orders, point.get("generator"))
        return pooled


class GridUnpooling(nn.Module):
    """Decoder up-step: ``parent.feat = proj_skip(parent) + proj(point)[pooling_inverse]``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels), LayerNorm(out_channels), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels), LayerNorm(out_channels),
                                       nn.GELU())

    def forward(self, point: Point) -> Point:
        parent = point.pop("pooling_parent")
        inverse = point.pop("pooling_inverse")
        parent.feat = self.proj_skip(parent.feat) + self.proj(point.feat).index_select(0, inverse)
        return parent
