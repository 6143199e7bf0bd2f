"""Serialized patch attention (PTv3), computed with ``scaled_dot_product_attention``.

Patches follow the reference flash path: each scene is padded to a multiple of the patch size
by repeating the previous patch's points (``patching.patch_padding``), and a scene smaller than a
patch is one short sequence. Without flash (``enable_flash=False``) the reference shrinks the
patch to the smallest scene in the batch; we reproduce that too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftbench.backbone.patching import cached_patch_padding
from peftbench.backbone.structure import Point


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside patches of one serialization order.

    Slot: ``kv_prefix`` (a module returning ``(k, v)`` of shape (m, heads, head_dim)) prepends
    the same m key/value rows to every patch (prompt / prefix tuning).
    """

    def __init__(self, channels: int, num_heads: int, patch_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 order_index: int = 0, enable_flash: bool = True) -> None:
        super().__init__()
        assert channels % num_heads == 0, "channels must be divisible by num_heads"
        self.channels = channels
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.order_index = order_index
        self.enable_flash = enable_flash
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kv_prefix: nn.Module | None = None

    def effective_patch_size(self, point: Point) -> int:
        if self.enable_flash:
            return self.patch_size
        counts = torch.diff(point.offset, prepend=point.offset.new_zeros(1))
        return min(int(counts.min()), self.patch_size)

    def forward(self, point: Point, feat: torch.Tensor) -> torch.Tensor:
        patch = self.effective_patch_size(point)
        pad, unpad, cu_seqlens = cached_patch_padding(point, patch)
        order = point.serialized_order[self.order_index].index_select(0, pad)
        inverse = unpad.index_select(0, point.serialized_inverse[self.order_index])
        heads, head_dim = self.num_heads, self.channels // self.num_heads
        # index_select, not x[idx]: 3-4x faster on CPU, forward and backward
        qkv = self.qkv(feat).index_select(0, order).view(-1, 3, heads, head_dim)
        out = torch.empty(qkv.shape[0], heads, head_dim, dtype=qkv.dtype, device=qkv.device)
        lengths = torch.diff(cu_seqlens).tolist()
        starts = cu_seqlens[:-1].tolist()
        # Full patches are one batched call; shorter sequences (scenes < patch) go one by one.
        full = [s for s, n in zip(starts, lengths) if n == patch]
        if full:
            idx = (torch.tensor(full, device=qkv.device).view(-1, 1) + torch.arange(patch, device=qkv.device)).flatten()
            attended = self._attend(qkv.index_select(0, idx).view(len(full), patch, *qkv.shape[1:]))
            out.index_copy_(0, idx, attended.flatten(0, 1))
        for s, n in zip(starts, lengths):
            if n != patch:
                out[s:s + n] = self._attend(qkv[s:s + n].unsqueeze(0))[0]
        feat = out.reshape(-1, self.channels).index_select(0, inverse)
        return self.proj_drop(self.proj(feat))

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(S, L, 3, H, d) -> (S, L, H, d)."""
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (S, H, L, d)
        if self.kv_prefix is not None:
            pk, pv = self.kv_prefix()
            shape = (k.shape[0], -1, -1, -1)
            k = torch.cat([pk.transpose(0, 1).unsqueeze(0).expand(shape).to(k.dtype), k], dim=2)
            v = torch.cat([pv.transpose(0, 1).unsqueeze(0).expand(shape).to(v.dtype), v], dim=2)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return out.transpose(1, 2)
