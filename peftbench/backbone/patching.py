"""Patch padding for serialized patch attention (the reference flash-path scheme).

Each scene with n > K points is padded to ceil(n/K)*K slots so patches never straddle
scenes; the padding slots of its last patch repeat the points of the patch before (so
they are real points, just attended twice). A scene with n <= K stays one short patch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from peftbench.backbone.structure import Point


def patch_padding(offset: Tensor, patch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(pad, unpad, cu_seqlens)`` for scenes ending at ``offset`` and patch size K.

    ``pad``: padded slot -> original point index; ``unpad``: original index -> padded slot;
    ``cu_seqlens`` (int32): start of every patch plus the padded total.
    """
    k = int(patch_size)
    offset = offset.long()
    device = offset.device
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    padded = torch.where(counts > k, (counts + k - 1) // k * k, counts)
    start = offset - counts
    padded_offset = torch.cumsum(padded, 0)
    padded_start = padded_offset - padded
    total = int(padded_offset[-1]) if len(offset) else 0

    # pad: slot j of a scene reads point j, or point j-K when j falls past the n real points.
    scene_of_slot = torch.repeat_interleave(torch.arange(len(offset), device=device), padded)
    local = torch.arange(total, device=device) - padded_start[scene_of_slot]
    n = counts[scene_of_slot]
    pad = start[scene_of_slot] + local - k * (local >= n).long()

    # unpad: the same shift the scene got, applied to every original point.
    scene_of_point = torch.repeat_interleave(torch.arange(len(offset), device=device), counts)
    unpad = torch.arange(int(offset[-1]) if len(offset) else 0, device=device)
    unpad = unpad + (padded_start - start)[scene_of_point]

    # cu_seqlens: every K inside each padded scene, then the total.
    num_patches = (padded + k - 1) // k
    scene_of_patch = torch.repeat_interleave(torch.arange(len(offset), device=device), num_patches)
    patch_start = torch.cumsum(num_patches, 0) - num_patches
    local_patch = torch.arange(int(num_patches.sum()), device=device) - patch_start[scene_of_patch]
    starts = padded_start[scene_of_patch] + k * local_patch
    cu_seqlens = torch.cat([starts, starts.new_tensor([total])]).int()
    return pad, unpad, cu_seqlens


def cached_patch_padding(point: Point, patch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``patch_padding`` memoised in ``point["patch_cache"][patch_size]``.

    Every block of a level sees the same point batch, so the indices are built once.
    """
    cache = point.setdefault("patch_cache", {})
    if patch_size not in cache:
        cache[patch_size] = patch_padding(point["offset"], patch_size)
    return cache[patch_size]
