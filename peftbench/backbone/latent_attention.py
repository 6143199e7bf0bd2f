"""Per-scene latent <-> point attention as a few dense matmuls (GEM's Context Adapter core).

With B scenes of m latents each, every point is scored against all B*m latents in one
(N, r) @ (r, B*m) matmul; scores of other scenes' latents are masked to -inf, so a softmax over
the point axis *is* the per-scene (segment) softmax, and the weighted sum of values into the
latents is one more matmul. This replaces a per-point copy of the scene's latents (N, m, r),
segment max/sum scatters and their backward with ~5 kernels per call; the extra work (B times
the tiny m-column scores) is negligible for the batch sizes a GPU holds.

Precision: affinity, both softmaxes and every accumulation run in float32 with autocast off,
whatever the caller's dtype (the Context Adapter's float32 contract).
"""

from __future__ import annotations

import torch
from torch import Tensor

from peftbench.backbone.structure import Point


def scene_latent_attention(k: Tensor, v: Tensor | None, q: Tensor | None, latents: Tensor, batch: Tensor,
                           scale: float, read_updated: bool = True,
                           off_scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(out, updated latents)`` for points ``k``, ``v``, ``q`` (N, r) and ``latents`` (B, m, r).
    ``v=None``: the keys double as values.

    Latents of scene b attend over the points of scene b (softmax over points, per latent) and
    are updated ``L <- L + context``. Each point then reads the updated latents of its scene with
    a softmax over the m latents of ``q . L_new`` (``read_updated``) or ``q . L_old``; ``q=None``
    means the keys double as queries, and with ``read_updated=False`` the read reuses the first
    affinity. ``out`` is (N, r) float32; the latents (B, m, r) float32. ``off_scene``:
    ``off_scene_mask(batch, B, m)``, passed by callers that keep it for every block of a level.
    """
    num_scenes, m, r = latents.shape
    with torch.autocast(device_type=k.device.type, enabled=False):
        lat = latents.float().reshape(-1, r)                                       # (B*m, r)
        k = k.float()
        keys = k * scale
        scores = keys @ lat.T                                                       # (N, B*m)
        if num_scenes > 1 and off_scene is None:
            off_scene = off_scene_mask(batch, num_scenes, m)
        exp, total = _exp_over_rows(scores if off_scene is None else scores.masked_fill(off_scene, float("-inf")))
        # softmax-weighted sum, normalised after the sum: a sum of exps <= 1 keeps more bits
        # than a sum of N weights of ~1/N (~1e-3 off at 150k points in float32 otherwise)
        updated = torch.addcdiv(lat, exp.T @ (k if v is None else v.float()), total.T)  # lat + sum / total
        if q is None and not read_updated:
            read = scores
        else:
            read = (keys if q is None else q.float() * scale) @ (updated if read_updated else lat).T
        # a softmax over all B*m columns with the other scenes' at -inf is the softmax over my m
        # latents, with zeros elsewhere: what the read-out multiplies by all B*m latents
        spread = (read if off_scene is None else read.masked_fill(off_scene, float("-inf"))).softmax(dim=-1)
        out = spread @ updated
    return out, updated.view(num_scenes, m, r)


def off_scene_mask(batch: Tensor, num_scenes: int, m: int) -> Tensor:
    """(N, B*m) bool: True where latent column j belongs to another scene than point i."""
    return batch.unsqueeze(1) != torch.arange(num_scenes, device=batch.device).repeat_interleave(m)


def cached_off_scene_mask(point: Point, m: int) -> Tensor | None:
    """``off_scene_mask`` memoised in ``point["off_scene_masks"][m]`` (one per level, for all its
    blocks); None for a single scene, where there is nothing to mask."""
    if point.num_scenes == 1:
        return None
    cache = point.setdefault("off_scene_masks", {})
    if m not in cache:
        cache[m] = off_scene_mask(point.batch, point.num_scenes, m)
    return cache[m]


def _exp_over_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(exp(x - column max), column sums)``: ``x.softmax(dim=0)`` is their ratio, for a tall
    (N, few) matrix, as column reductions.

    torch's softmax over dim 0 parallelises over the few columns only (on an H200 GEM's branches
    took 23 ms of device time in a batch-3 forward with it, 3 ms at batch 1 where the mask and
    this softmax are absent); max/sum reductions over dim 0 use the whole GPU.
    """
    e = (x - x.amax(dim=0, keepdim=True)).exp()
    return e, e.sum(dim=0, keepdim=True)
