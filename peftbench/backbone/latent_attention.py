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
                           scene_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(out, updated latents)`` for points ``k``, ``v``, ``q`` (N, r) and ``latents`` (B, m, r).
    ``v=None``: the keys double as values.

    Latents of scene b attend over the points of scene b (softmax over points, per latent) and
    are updated ``L <- L + context``. Each point then reads the updated latents of its scene with
    a softmax over the m latents of ``q . L_new`` (``read_updated``) or ``q . L_old``; ``q=None``
    means the keys double as queries, and with ``read_updated=False`` the read reuses the first
    affinity. ``out`` is (N, r) float32; the latents (B, m, r) float32. ``scene_bias``:
    ``off_scene_bias(batch, B, m)``, passed by callers that keep it for every block of a level.
    """
    num_scenes, m, r = latents.shape
    with torch.autocast(device_type=k.device.type, enabled=False):
        lat = latents.float().reshape(-1, r)                                       # (B*m, r)
        k = k.float()
        if num_scenes > 1 and scene_bias is None:
            scene_bias = off_scene_bias(batch, num_scenes, m)
        # the scale on the (B*m, r) latents, not the (N, r) keys; the other scenes' columns at -inf
        # by the product's own bias term: one kernel (and no masked_fill backward) per score matrix
        scores = _scores(k, lat * scale, scene_bias)                               # (N, B*m)
        # softmax over the points as column max / sum reductions, which use the whole GPU (torch's
        # softmax over dim 0 parallelises over the few columns only: 23 ms of device time for GEM's
        # branches in an H200 batch-3 forward); the shift by the max is a constant of the softmax,
        # so no gradient goes through it
        exp = (scores - scores.amax(dim=0, keepdim=True).detach()).exp()
        total = exp.sum(dim=0, keepdim=True)
        # softmax-weighted sum, normalised after the sum: a sum of exps <= 1 keeps more bits
        # than a sum of N weights of ~1/N (~1e-3 off at 150k points in float32 otherwise)
        updated = torch.addcdiv(lat, exp.T @ (k if v is None else v.float()), total.T)  # lat + sum / total
        if q is None and not read_updated:
            read = scores
        else:
            read = _scores(k if q is None else q.float(), (updated if read_updated else lat) * scale, scene_bias)
        # a softmax over all B*m columns with the other scenes' at -inf is the softmax over my m
        # latents, with zeros elsewhere: what the read-out multiplies by all B*m latents
        out = read.softmax(dim=-1) @ updated
    return out, updated.view(num_scenes, m, r)


def _scores(rows: Tensor, latents: Tensor, bias: Tensor | None) -> Tensor:
    """``rows @ latents.T`` (+ ``bias``) in one matmul."""
    return rows @ latents.T if bias is None else torch.addmm(bias, rows, latents.T)


def off_scene_bias(batch: Tensor, num_scenes: int, m: int) -> Tensor:
    """(N, B*m) float32: -inf where latent column j belongs to another scene than point i, else 0."""
    off = batch.unsqueeze(1) != torch.arange(num_scenes, device=batch.device).repeat_interleave(m)
    return torch.zeros(off.shape, device=batch.device).masked_fill_(off, float("-inf"))


def cached_off_scene_bias(point: Point, m: int) -> Tensor | None:
    """``off_scene_bias`` memoised in ``point["off_scene_bias"][m]`` (one per level, for all its
    blocks); None for a single scene, where there is nothing to mask."""
    if point.num_scenes == 1:
        return None
    cache = point.setdefault("off_scene_bias", {})
    if m not in cache:
        cache[m] = off_scene_bias(point.batch, point.num_scenes, m)
    return cache[m]
