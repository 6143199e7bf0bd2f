"""Per-scene latent <-> point attention as a few dense matmuls (GEM's Context Adapter core).

With B scenes of m latents each, every point is scored against all B*m latents in one
(N, r) @ (r, B*m) matmul; scores of other scenes' latents are masked to -inf, so a softmax over
the point axis *is* the per-scene (segment) softmax, and the weighted sum of values into the
latents is one more matmul. This replaces a per-point copy of the scene's latents (N, m, r),
segment max/sum scatters and their backward with ~5 kernels per call; the extra work (B times
the tiny m-column scores) is negligible for the batch sizes a GPU holds.

Precision: affinity, both softmaxes and every accumulation run in float32 with autocast off,
whatever the caller's dtype (the Context Adapter's float32 contract).

On CUDA the same core runs as Triton kernels (``triton_latent_attention``; switch ``TRITON_LATENT``): 3 launches
a forward and 4 a backward instead of ~13 and ~20, the (N, B*m) scores kept in registers.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from peftbench.backbone.autocast_off import autocast_off
from peftbench.backbone.function_apply import apply
from peftbench.backbone.structure import Point
from peftbench.backbone.triton_support import triton_kernels

TRITON_LATENT = 1  # 0: the torch core on CUDA too (A/Bs)
ONE_NODE = 1  # 0: the Context Adapter as separate ops around the kernels (A/Bs; see projected_latent_attention)
# 1: in training, the one-node adapter's projections in the partials kernel and h's gradient in the keys' backward
# kernel; 0: a float32 matmul each. Training only: with autograd off (the concatenated weight memoised) GEM's step
# was faster by the matmul (H100, session 40, in turns: a GEM training step 0.978x with it, inference 1.07x); 2: in
# evaluation too, with ``triton_latent_attention.PROJECT_TF32X3`` (no cast of h for the matmul; H100, session 46, in
# turns over 1: GEM inference 0.989 [0.935, 0.993] at batch 3, 0.935 [0.807, 1.042] at 1)
PROJECT_IN_KERNEL = 2
# most latents a scene the kernels take: a row tile's scores against a window of whole scenes' latents are held in
# registers (the scenes a forward are not limited)
KERNEL_MAX_LATENTS = 128


def projects_in_kernel() -> bool:
    """Whether the one-node adapter's kernels project ``h`` now (``PROJECT_IN_KERNEL``; autograd on or off)."""
    return PROJECT_IN_KERNEL == 2 or bool(PROJECT_IN_KERNEL and torch.is_grad_enabled())


def kernels_take(points: Tensor, latents_per_scene: int) -> ModuleType | None:
    """The Triton kernels' module where they take the core for ``points`` against ``latents_per_scene`` latents a
    scene (CUDA, at most ``KERNEL_MAX_LATENTS``, Triton importable), else None."""
    if TRITON_LATENT and points.is_cuda and latents_per_scene <= KERNEL_MAX_LATENTS:
        return triton_kernels("triton_latent_attention")
    return None


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
    ``off_scene_bias(batch, B, m)``, passed by callers that keep it for every block of a level (the kernels
    mask by ``batch`` and need none).
    """
    num_scenes, m, r = latents.shape
    kernels = kernels_take(k, m)
    with autocast_off(k.device.type):
        if kernels is not None:
            out, updated = apply(_KernelLatentAttention, k.float(), None if v is None else v.float(),
                                 None if q is None else q.float(), latents.float().reshape(-1, r), batch, m, scale,
                                 read_updated, kernels)
            return out, updated.view(num_scenes, m, r)
        if num_scenes > 1 and scene_bias is None:
            scene_bias = off_scene_bias(batch, num_scenes, m)
        out, updated = apply(_LatentAttention, k.float(), None if v is None else v.float(),
                             None if q is None else q.float(), latents.float().reshape(-1, r), scene_bias, scale,
                             read_updated)
    return out, updated.view(num_scenes, m, r)


class _LatentAttention(torch.autograd.Function):
    """The core in float32, with its backward written out: a Context Adapter call, forward and backward,
    takes 70 top-level ops and 25 autograd nodes instead of 76 and 39 (``scripts/context_adapter_ops.py``;
    GEM's step waits on the host's launches); 65 and 19 with its projections in float32 too; 61 and 19
    with the scaled latents kept for the backward.

    Forward, for the (M, r) latents L of all scenes (M = B*m), bias b (0 / -inf: other scenes' columns):
        A = b + k (sL)^T;  E = exp(A - colmax A);  T = colsum E;  U = L + (E^T V) / T
        R = A (the read reuses the affinity) or b + Q (sX)^T with X = U or L;  S = rowsoftmax R;  out = S U
    """

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor | None, q: Tensor | None, lat: Tensor,  # type: ignore[override]
                bias: Tensor | None, scale: float, read_updated: bool) -> tuple[Tensor, Tensor]:
        values = k if v is None else v
        scaled_lat = lat * scale
        scores = _scores(k, scaled_lat, bias)                                      # A (N, M)
        # softmax over the points as column max / sum reductions, which use the whole GPU (torch's
        # softmax over dim 0 parallelises over the few columns only: 23 ms of device time for GEM's
        # branches in an H200 batch-3 forward); the max is a constant shift of that softmax
        exp = (scores - scores.amax(dim=0, keepdim=True)).exp_()                   # E
        total = exp.sum(dim=0)                                                      # T (M,)
        # the weighted sum normalised after the sum: a sum of exps <= 1 keeps more bits than a sum
        # of N weights of ~1/N (~1e-3 off at 150k points in float32 otherwise)
        context = (exp.T @ values).div_(total.unsqueeze(1))                         # C / T (M, r)
        updated = lat + context                                                     # U
        reads = q is not None or read_updated
        read_keys = k if q is None else q
        scaled_read = updated * scale if read_updated else scaled_lat
        # a softmax over all M columns with the other scenes' at -inf is the softmax over my m
        # latents, with zeros elsewhere: what the read-out multiplies by all M latents
        spread = (_scores(read_keys, scaled_read, bias) if reads else scores).softmax(dim=-1)
        out = spread @ updated
        # the scaled latents kept (M x r each): two kernels fewer in the backward
        ctx.save_for_backward(k, v, q, exp, total, context, updated, spread, scaled_lat, scaled_read)
        ctx.scale, ctx.read_updated, ctx.reads = scale, read_updated, reads
        return out, updated

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor, d_updated: Tensor | None):  # type: ignore[override]
        # float32 as the forward, also where backward() is called under autocast (on CPU it runs on
        # the caller's thread, autocast state included)
        with autocast_off(d_out.device.type):
            d_updated = None if d_updated is None else d_updated.float()
            return _LatentAttention._backward(ctx, d_out.float(), d_updated)

    @staticmethod
    def _backward(ctx, d_out: Tensor, d_updated: Tensor | None) -> tuple:
        k, v, q, exp, total, context, updated, spread, scaled_lat, scaled_read = ctx.saved_tensors
        scale = ctx.scale
        values = k if v is None else v
        read_keys = k if q is None else q
        d_updated = spread.T @ d_out if d_updated is None else torch.addmm(d_updated, spread.T, d_out)
        d_spread = d_out @ updated.T
        d_read = torch._softmax_backward_data(d_spread, spread, -1, spread.dtype)   # dR (N, M)
        d_lat = None
        if ctx.reads:  # R = b + Q (sX)^T
            d_read_keys = d_read @ scaled_read
            d_x = d_read.T @ read_keys                                             # / s below
            if ctx.read_updated:
                d_updated = d_updated.add_(d_x, alpha=scale)
            else:
                d_lat = d_x.mul_(scale)
            d_scores = None
        else:  # R = A
            d_read_keys, d_scores = None, d_read
        # U = L + C / T: dL += dU;  d(C) = dU / T;  dT = -sum_r dU C / T^2 = -sum_r (dU / T) (C / T)
        d_context = d_updated / total.unsqueeze(1)
        minus_d_total = (d_context * context).sum(dim=1)
        # C = E^T V, T = colsum E, E = exp(A - max): dA = E * (V dC^T + dT) (+ dR where R = A)
        d_affinity = torch.addmm(minus_d_total.unsqueeze(0), values, d_context.T, beta=-1).mul_(exp)
        if d_scores is not None:
            d_affinity = d_affinity.add_(d_scores)
        d_values = exp @ d_context
        # A = b + k (sL)^T
        keys_read = d_read_keys is not None and q is None  # the keys doubled as queries: their read term too
        d_k = torch.addmm(d_read_keys, d_affinity, scaled_lat) if keys_read else d_affinity @ scaled_lat
        d_lat = torch.addmm(d_updated if d_lat is None else d_lat.add_(d_updated), d_affinity.T, k, alpha=scale)
        if v is None:
            d_k = d_k.add_(d_values)
        return (d_k, None if v is None else d_values, None if q is None else d_read_keys, d_lat, None, None, None)


class _KernelLatentAttention(torch.autograd.Function):
    """``_LatentAttention`` as the Triton kernels: the backward recomputes the scores from the saved inputs."""

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor | None, q: Tensor | None,  # type: ignore[override]
                lat: Tensor, batch: Tensor, m: int, scale: float, read_updated: bool,
                kernels: ModuleType) -> tuple[Tensor, Tensor]:
        out, updated, *stats = kernels.forward(k, v, q, lat, batch, m, scale, read_updated)
        ctx.save_for_backward(k, v, q, lat, batch, updated, *stats)
        ctx.m, ctx.scale, ctx.read_updated, ctx.kernels = m, scale, read_updated, kernels
        return out, updated

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor, d_updated: Tensor | None):  # type: ignore[override]
        k, v, q, lat, batch, updated, *stats = ctx.saved_tensors
        d_rows, d_lat, _ = ctx.kernels.backward(d_out.float(), None if d_updated is None else d_updated.float(), k,
                                                v, q, lat, batch, ctx.m, ctx.scale, ctx.read_updated, updated, *stats)
        d_k, d_v, d_q = _row_slices(d_rows, k.shape[1], v is not None, q is not None)
        return d_k, d_v, d_q, d_lat, None, None, None, None, None


def projected_latent_attention(h: Tensor, proj_weights: list[Tensor], up_weight: Tensor, latents: Tensor,
                               batch: Tensor, scale: float, read_updated: bool, has_v: bool, has_q: bool,
                               kernels: ModuleType, base: Tensor | None = None,
                               residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The Context Adapter on the kernels, as one autograd node: ``(base + up(out), updated latents)`` where
    ``[k | v | q] = h @ cat(proj_weights).T`` (``v`` / ``q`` where ``has_v`` / ``has_q``) and ``out`` the core's
    read-out; without ``base``, ``up(out)``. With ``residual`` (autograd off only), ``residual + (base + up(out))``:
    the block's residual sum in the read-out kernel too.

    Products in float32 (the Context Adapter's contract): the projections (in training, ``PROJECT_IN_KERNEL``, in the
    partials kernel, ``h`` read in its own dtype, and ``h``'s gradient in the keys' and values' backward kernel; else
    one matmul), the up-projection and the sum with ``base``
    in the read-out kernel, the result in ``h``'s dtype promoted with ``base``'s. Composed of separate ops the same
    call is ~11 autograd nodes (casts, the weights' concatenation, three matmuls, a split, the core, the sum), and a
    GPU step waits on the host's work for each (issue 12)."""
    if residual is not None and torch.is_grad_enabled():
        raise ValueError("projected_latent_attention: a residual only with autograd off (its backward has none)")
    return apply(_ProjectedKernelLatentAttention, h, latents.float(), up_weight, batch, latents.shape[1], scale,
                 read_updated, has_v, has_q, kernels, base, residual, projects_in_kernel(), *proj_weights)


class _ProjectedKernelLatentAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, latents: Tensor, up_weight: Tensor, batch: Tensor, m: int,  # type: ignore[override]
                scale: float, read_updated: bool, has_v: bool, has_q: bool, kernels: ModuleType, base: Tensor | None,
                residual: Tensor | None, in_kernel: bool, *proj_weights: Tensor) -> tuple[Tensor, Tensor]:
        # the latents (B, m, r) in and out as they are: the kernels read B*m rows of r, whatever the shape
        r = latents.shape[2]
        lat = latents.contiguous()  # the bank's expanded latents (the first block) copied, later blocks' as they come
        h = h.contiguous()
        # [k | v | q] = h @ cat(proj_weights)^T, written by the partials kernel (training: the weights apart), or a
        # matmul by the concatenation (evaluation may pass it), kept for h's gradient
        project = joined = None
        if in_kernel:
            project = (h, proj_weights)
            rows = torch.empty((len(h), r * len(proj_weights)), dtype=torch.float32, device=h.device)
        else:
            joined = torch.cat(proj_weights) if len(proj_weights) > 1 else proj_weights[0]
            with autocast_off(h.device.type):
                rows = h.float() @ joined.T
        y_dtype = h.dtype if base is None else torch.promote_types(h.dtype, base.dtype)
        if residual is not None:
            y_dtype = torch.promote_types(y_dtype, residual.dtype)
        y = torch.empty((len(h), len(up_weight)), dtype=y_dtype, device=h.device)
        out, updated, *stats = kernels.forward(*_row_slices(rows, r, has_v, has_q), lat, batch, m, scale,
                                               read_updated, up_weight.contiguous(),
                                               None if base is None else base.contiguous(), y, project=project,
                                               residual=None if residual is None else residual.contiguous())
        ctx.save_for_backward(h, rows, up_weight, out, lat, batch, updated, joined, *stats, *proj_weights)
        ctx.m, ctx.scale, ctx.read_updated, ctx.has_v, ctx.has_q = m, scale, read_updated, has_v, has_q
        ctx.kernels, ctx.base_dtype, ctx.stats = kernels, None if base is None else base.dtype, len(stats)
        return y, updated

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_y: Tensor, d_updated: Tensor | None):  # type: ignore[override]
        h, rows, up_weight, out, lat, batch, updated, joined, *rest = ctx.saved_tensors
        stats, proj_weights = rest[:ctx.stats], rest[ctx.stats:]
        with autocast_off(d_y.device.type):
            # base's gradient is y's as it comes (before the cast below); in another dtype, written by the read-out's
            # backward kernel as it reads it
            d_base, write_base = None, ctx.needs_input_grad[10] and ctx.base_dtype != d_y.dtype
            if ctx.needs_input_grad[10]:
                d_base = torch.empty(d_y.shape, dtype=ctx.base_dtype, device=d_y.device) if write_base else d_y
            d_y = d_y.float()
            d_up = d_y.T @ out
            d_rows, d_lat, d_h = ctx.kernels.backward(
                d_y, None if d_updated is None else d_updated.float(),
                *_row_slices(rows, lat.shape[-1], ctx.has_v, ctx.has_q), lat, batch, ctx.m, ctx.scale,
                ctx.read_updated, updated, *stats, up=up_weight.contiguous(),
                project=(h, proj_weights) if ctx.needs_input_grad[0] and joined is None else None,
                d_base=d_base if write_base else None)
            if joined is not None and ctx.needs_input_grad[0]:
                d_h = (d_rows @ joined).to(h.dtype)
            d_weight = d_rows.T @ h.float()
            d_weights = d_weight.split(lat.shape[-1]) if len(proj_weights) > 1 else (d_weight,)
        return d_h, d_lat, d_up, None, None, None, None, None, None, None, d_base, None, \
            None, *d_weights


def _row_slices(rows: Tensor, r: int, has_v: bool, has_q: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(k, v, q)`` column slices of ``[k | v | q]`` (None for the absent ones)."""
    return rows[:, :r], rows[:, r:2 * r] if has_v else None, rows[:, -r:] if has_q else None


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
