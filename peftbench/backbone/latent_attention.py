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


def scene_latent_attention(k: Tensor, v: Tensor, q: Tensor | None, latents: Tensor, batch: Tensor,
                           scale: float, read_updated: bool = True) -> tuple[Tensor, Tensor]:
    """``(out, updated latents)`` for points ``k``, ``v``, ``q`` (N, r) and ``latents`` (B, m, r).

    Latents of scene b attend over the points of scene b (softmax over points, per latent) and
    are updated ``L <- L + context``. Each point then reads the updated latents of its scene with
    a softmax over the m latents of ``q . L_new`` (``read_updated``) or ``q . L_old``; ``q=None``
    means the keys double as queries, and with ``read_updated=False`` the read reuses the first
    affinity. ``out`` is (N, r) float32; the latents (B, m, r) float32.
    """
    num_scenes, m, r = latents.shape
    n = k.shape[0]
    with torch.autocast(device_type=k.device.type, enabled=False):
        lat = latents.float()
        scores = (k.float() @ lat.reshape(-1, r).T) * scale                       # (N, B*m)
        if num_scenes > 1:
            own = (batch.unsqueeze(1) == torch.arange(num_scenes, device=k.device)
                   .repeat_interleave(m)).view(n, num_scenes, m)                   # (N, B, m)
            weights = scores.masked_fill(~own.view(n, -1), float("-inf")).softmax(dim=0)
        else:
            own, weights = None, scores.softmax(dim=0)
        updated = lat + (weights.T @ v.float()).view(num_scenes, m, r)
        if q is None and not read_updated:
            read = scores
        else:
            scored = updated if read_updated else lat
            read = ((k if q is None else q).float() @ scored.reshape(-1, r).T) * scale
        if own is None:
            spread = read.softmax(dim=-1)
        else:
            index = batch.view(n, 1, 1).expand(n, 1, m)
            mine = read.view(n, num_scenes, m).gather(1, index).squeeze(1).softmax(dim=-1)  # (N, m)
            spread = (mine.unsqueeze(1) * own).reshape(n, -1)                    # zero off-scene
        out = spread @ updated.reshape(-1, r)
    return out, updated
