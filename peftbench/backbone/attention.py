"""Serialized patch attention (PTv3), computed with ``scaled_dot_product_attention``.

Patches follow the reference flash path: each scene is padded to a multiple of the patch size
by repeating the previous patch's points (``patching.patch_padding``), and a scene smaller than a
patch is one short sequence. ``patch_layout`` stores all full patches first, so they are one
SDPA call per block on a view. Without flash (``enable_flash=False``) the reference shrinks the
patch to the smallest scene in the batch; we reproduce that too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from peftbench.backbone.patch_layout import PatchLayout, SlotMap, cached_patch_layout, scene_counts
from peftbench.backbone.structure import Point

# cuDNN's SDPA (torch's first choice on Hopper) builds an execution plan per new shape: ~0.5 s of
# host time per training step when every batch has a new point count (the number of full patches
# and short-patch lengths change), measured on an H200 (reports/bench/notes.md). Flash (FA2) and
# mem-efficient kernels have no per-shape setup; math is the fp32 / CPU fallback.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


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
        return min(min(scene_counts(point)), self.patch_size)

    def forward(self, point: Point, feat: torch.Tensor,
                layout: tuple[SlotMap, PatchLayout] | None = None) -> torch.Tensor:
        """``layout``: this block's ``self.layout(point)`` when the caller already has it."""
        slots, layout = layout or self.layout(point)
        heads, head_dim = self.num_heads, self.channels // self.num_heads
        # the input's rows to slots, not qkv's: a third of the rows' bytes to move, forward and backward
        qkv = self.qkv(slots.to_slots(feat)).view(-1, 3, heads, head_dim)
        out = self.attend_patches(qkv, layout)
        return self.proj_drop(self.proj(slots.from_slots(out.reshape(-1, self.channels))))

    def layout(self, point: Point) -> tuple[SlotMap, PatchLayout]:
        """``(slot map, layout)`` of this block's order (cached on the level's point)."""
        layout = cached_patch_layout(point, self.effective_patch_size(point))
        return layout.order(point, self.order_index), layout

    def attend_patches(self, qkv: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
        """(slots, 3, H, d) gathered rows -> (slots, H, d) attention output, patch by patch.

        Full patches are contiguous slots: one fused SDPA call on a view (no copy, no sync);
        short patches (scenes smaller than a patch) follow, one call each.
        """
        full = layout.num_full * layout.k
        patches = ([(full, layout.k)] if full else []) + [(n, n) for _, n in layout.shorts]  # (rows, patch length)
        # split, not slicing: split's backward is one cat, a slice's a zero fill and a copy of all rows
        chunks = qkv.split([rows for rows, _ in patches]) if len(patches) > 1 else (qkv,)
        parts = [self._attend(chunk.view(-1, length, *qkv.shape[1:])).flatten(0, 1)
                 for chunk, (_, length) in zip(chunks, patches)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(S, L, 3, H, d) -> (S, L, H, d)."""
        # Unbind, then transpose: unbind's backward then stacks flash's (S, L, H, d) gradients into
        # the packed (S, L, 3, H, d) layout directly; permuting first left them to be copied once
        # more into it (a copy of every row of qkv per block).
        q, k, v = qkv.unbind(2)  # (S, L, H, d) each
        if self.kv_prefix is not None:
            pk, pv = self.kv_prefix()  # (m, H, d) each
            shape = (k.shape[0], -1, -1, -1)
            k = torch.cat([pk.unsqueeze(0).expand(shape).to(k.dtype), k], dim=1)
            v = torch.cat([pv.unsqueeze(0).expand(shape).to(v.dtype), v], dim=1)
        drop = self.attn_drop if self.training else 0.0
        with sdpa_kernel(SDPA_BACKENDS):  # the backward follows the kernel picked here
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 dropout_p=drop, scale=self.scale)
        return out.transpose(1, 2)
