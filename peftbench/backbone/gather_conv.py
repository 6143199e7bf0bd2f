"""Submanifold conv as one gather and one matmul (backend ``"gather"`` of ``SubMConv3d``).

Every site's k^3 neighbours (a zero row where a neighbour is absent) are gathered into one
(N, k^3*C) matrix that one matmul maps to the output. Backward recomputes the gather instead of
keeping it; the input gradient needs no scatter: on a submanifold the neighbour at offset -o of
my neighbour at offset o is me, so it is the same gather of the output gradient with the
kernel's offsets reversed. Deterministic (no atomics), no host syncs.

CUDA half features with Triton take ``triton_gather_conv`` instead: each matmul loads its gathered rows
itself, so the (N, k^3*C) matrix never exists (H100, batch 3: forward 0.74 -> 0.25 ms at 35.6k x 192
sites, and 0.32 ms at 307k x 48 where the gather path took 5.3). Without it the gather path is slower than
spconv on large levels, so ``auto`` then takes it on small levels only (``sparse_conv.GATHER_MAX_SITES``),
where spconv's host cost per call outweighs the device work. Both are deterministic. Under autocast the
features are cast to the autocast dtype before the gather (not the gathered k^3-times-larger matrix).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from peftbench.backbone.autocast_off import autocast_off
from peftbench.backbone.function_apply import apply
from peftbench.backbone.no_grad_memo import no_grad_memo
from peftbench.backbone.sparse_conv import FactoredWeight, factor_product, kernel_offsets
from peftbench.backbone.structure import Point
from peftbench.backbone.triton_support import triton_kernels

# CUDA half features: the forward, input gradient and weight gradient as one Triton kernel each, with the
# gather inside (``triton_gather_conv``); 0: gather, then matmul
TRITON_CONV = 1
# 1: an extra weight given as a ``FactoredWeight`` (GEM's Spatial Adapter) enters the conv's autograd node as its
# factors, the product and its gradients inside; 0: as their product, made by separate ops (A/Bs)
FACTORED_WEIGHTS = 1
HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _offsets_on(kernel_size: int, device: torch.device) -> Tensor:
    """``kernel_offsets`` on ``device``, copied once: a copy from pageable host memory waits for the device."""
    return kernel_offsets(kernel_size).to(device)


def neighbour_table(grid_coord: Tensor, batch: Tensor, kernel_size: int, side: int) -> Tensor:
    """(N, k^3) index of each site's neighbour per offset (row-major ``W[:, a, b, c]``), or N.

    ``side`` bounds every coordinate (exclusive); sites are unique per scene.
    """
    c0 = kernel_size // 2
    side = side + 2 * c0  # room for the offsets: no wrap between axes
    coord = grid_coord.long() + c0
    keys = ((batch.long() * side + coord[:, 0]) * side + coord[:, 1]) * side + coord[:, 2]
    sorted_keys, perm = torch.sort(keys)
    offsets = _offsets_on(kernel_size, keys.device)
    shifts = (offsets[:, 0] * side + offsets[:, 1]) * side + offsets[:, 2]      # (k^3,)
    query = keys.unsqueeze(1) + shifts                                          # (N, k^3)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=max(len(keys) - 1, 0))
    found = sorted_keys[pos] == query
    return torch.where(found, perm[pos], torch.full_like(pos, len(keys)))


def cached_neighbour_table(point: Point, kernel_size: int) -> Tensor:
    """``neighbour_table`` memoised on the point; coordinates bounded by the host-side ``grid_max``
    (a pooled level's comes from its parent's: no wait on the device)."""
    cache = point.setdefault("neighbour_tables", {})
    if kernel_size not in cache:
        side = max(point.grid_max()) + 1
        cache[kernel_size] = neighbour_table(point["grid_coord"], point["batch"], kernel_size, side)
    return cache[kernel_size]


def cached_reversed_table(point: Point, kernel_size: int) -> Tensor:
    """The neighbour table with its offsets reversed (column o holds the neighbour at -o), once per level."""
    cache = point.setdefault("reversed_neighbour_tables", {})
    if kernel_size not in cache:
        cache[kernel_size] = cached_neighbour_table(point, kernel_size).flip(1)
    return cache[kernel_size]


@functools.lru_cache(maxsize=None)
def _zero_row(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    with torch.inference_mode(False):  # usable in autograd whatever mode built it
        return torch.zeros(1, channels, dtype=dtype, device=device)


def _padded(x: Tensor) -> Tensor:
    """``x`` followed by a zero row (index N: an absent neighbour), one copy and no fill a call."""
    return torch.cat([x, _zero_row(x.shape[1], x.dtype, x.device)])


def _gather(x: Tensor, table: Tensor) -> Tensor:
    """(N, k^3 * C): row n holds the C features of each of its k^3 neighbours (zeros if absent)."""
    return _gather_padded(_padded(x), table)


def _gather_padded(padded: Tensor, table: Tensor) -> Tensor:
    """``_gather`` of rows already followed by a zero row (index N), for rows of ``table``."""
    return padded.index_select(0, table.reshape(-1)).view(table.shape[0], -1)


def gathered_weight_grad(feat: Tensor, grad: Tensor, table: Tensor, weight_shape: torch.Size,
                         chunk_rows: int = 1 << 17, segment_rows: int = 2048) -> Tensor:
    """KRSC weight gradient ``dW[:, o] = sum_p grad[p]^T feat[table[p, o]]``, float32 (float64 from float64).

    Per chunk of sites (its gathered rows are the only large temporary, ~0.2 GB at 2**17 sites,
    27 offsets, 32 channels, fp16), the sum over sites is one matmul with a float32 result
    (``_sum_over_sites``).
    """
    out_ch, in_ch = weight_shape[0], weight_shape[-1]
    grad = grad.to(feat.dtype)
    padded = _padded(feat)
    total = None
    for start in range(0, len(feat), chunk_rows):
        x = _gather_padded(padded, table[start:start + chunk_rows])                # (m, k^3 * in)
        part = _sum_over_sites(grad[start:start + chunk_rows], x, segment_rows)
        total = part if total is None else total.add_(part)
    if total is None:
        total = torch.zeros(out_ch, table.shape[1] * in_ch, dtype=_sum_dtype(feat.dtype), device=feat.device)
    return total.view(out_ch, -1, in_ch).reshape(weight_shape)


def _sum_over_sites(g: Tensor, x: Tensor, segment_rows: int) -> Tensor:
    """``g^T x`` (out, cols) in float32.

    Half inputs on CUDA: one matmul that keeps cuBLAS's float32 accumulator as its result. Elsewhere
    the sum is split into segments of ``segment_rows``: one batched matmul gives each segment's
    partial, summed in float32, so a half result is rounded per segment, not once over 2**17 rows
    (fp16 error 1.5-4e-4 of the max against spconv's 2-32e-4 on an H200).
    """
    if g.is_cuda and g.dtype in HALF:
        return torch.mm(g.T, x, out_dtype=torch.float32)
    segments = len(g) // segment_rows
    head = segments * segment_rows
    dtype = _sum_dtype(g.dtype)
    total = torch.zeros(g.shape[1], x.shape[1], dtype=dtype, device=g.device)
    if segments:
        parts = torch.bmm(g[:head].view(segments, segment_rows, -1).transpose(1, 2),
                          x[:head].view(segments, segment_rows, -1))                  # (s, out, cols)
        total += parts.sum(0, dtype=dtype)
    if head < len(g):
        total += (g[head:].T @ x[head:]).to(dtype)
    return total


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _GatherConv(torch.autograd.Function):
    """``kernels``: the Triton kernels' module (the gather inside each matmul), or None (gather, then matmul,
    with ``reversed_table`` for the input gradient); ``rows``: ``_rows(weight, extra, feat.dtype)`` if already
    made; ``extra_down``: ``extra`` and it are a ``FactoredWeight``'s factors."""

    @staticmethod
    def forward(ctx, feat: Tensor, weight: Tensor, extra: Tensor | None, table: Tensor,  # type: ignore[override]
                reversed_table: Tensor | None, kernels, bias: Tensor | None, rows: Tensor | None = None,
                extra_down: Tensor | None = None) -> Tensor:
        factors = None if extra_down is None else (extra, extra_down)
        if factors:  # a FactoredWeight's: the product here (unless its rows come made), its factors' gradients below
            extra = None if rows is not None else factor_product(*factors)
        rows = _rows(weight, extra, feat.dtype) if rows is None else rows
        # the rows kept for the input gradient: no second cast and concatenation of the weights in the backward
        ctx.save_for_backward(feat, rows, table, reversed_table, *(factors or ()))
        ctx.kernels, ctx.split = kernels, len(weight)
        ctx.weights = [(w.shape, w.dtype) for w in (weight, extra) if w is not None]
        ctx.bias_dtype = None if bias is None else bias.dtype
        if kernels is not None:  # the bias in the kernel's float32 accumulator
            return kernels.gather_matmul(feat, table, rows, transposed=False, bias=bias)
        # (out, k^3 * in) in the gathered rows' order [offset][channel]: a view, no copy
        out = nn.functional.linear(_gather(feat, table), rows.flatten(1))
        if bias is not None:
            out[:, :len(bias)] += bias.to(out.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        feat, rows, table, reversed_table, *factors = ctx.saved_tensors
        kernels = ctx.kernels
        grad = grad.to(feat.dtype)
        d_feat = None
        if ctx.needs_input_grad[0]:  # the neighbour at -o gets my gradient through offset o: row (o, out)
            if kernels is not None:
                d_feat = kernels.gather_matmul(grad, table, rows, transposed=True)
            else:
                d_feat = _gather(grad, reversed_table) @ rows.transpose(0, 1).reshape(-1, rows.shape[-1])
        # only the rows that need it: a frozen CPE's rows beside GEM's Spatial Adapter's need none
        d_weight = d_extra = None
        if ctx.needs_input_grad[1]:
            d_weight = _weight_grad(kernels, feat, grad[:, :ctx.split], table, *ctx.weights[0])
        d_down = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[8]:
            d_extra = _weight_grad(kernels, feat, grad[:, ctx.split:], table, *ctx.weights[1])
            if factors:  # d(conv) = dP down^T, d(down) = conv^T dP over the flattened product P = conv @ down
                d_extra, d_down = _factor_grads(d_extra, *factors, ctx.needs_input_grad[2], ctx.needs_input_grad[8])
        d_bias = None
        if ctx.needs_input_grad[6]:
            d_bias = grad[:, :ctx.split].sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return d_feat, d_weight, d_extra, None, None, None, d_bias, None, d_down


def _factor_grads(d_product: Tensor, conv: Tensor, down: Tensor, conv_needed: bool, down_needed: bool
                  ) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of ``factor_product(conv, down)``'s factors from the product's (all float32)."""
    d_flat = d_product.reshape(-1, down.shape[-1])
    with autocast_off(d_flat.device.type):
        d_conv = torch.mm(d_flat, down.T).view(conv.shape) if conv_needed else None
        d_down = torch.mm(conv.reshape(-1, conv.shape[-1]).T, d_flat) if down_needed else None
    return d_conv, d_down


def _weight_grad(kernels, feat: Tensor, grad: Tensor, table: Tensor, shape: torch.Size, dtype: torch.dtype
                 ) -> Tensor:
    if kernels is not None:
        return kernels.gather_weight_grad(feat, table, grad).view(shape).to(dtype)
    return gathered_weight_grad(feat, grad, table, shape).to(dtype)


def _triton_for(feat: Tensor):
    """The Triton kernels' module where they take this conv (``TRITON_CONV``, CUDA, half features), else None."""
    if TRITON_CONV and feat.is_cuda and feat.dtype in HALF:
        return triton_kernels("triton_gather_conv")
    return None


def kernels_take(device: torch.device) -> bool:
    """Whether the Triton kernels take a conv on ``device`` now: CUDA under half autocast, Triton importable.
    ``sparse_conv``'s ``auto`` then gathers on every level, spconv installed or not (H100, batch 3: the kernels
    against spconv's module call in ``scripts/gather_conv_bench.py``; train steps A/B'd in ``reports/bench/notes.md``)."""
    return (device.type == "cuda" and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in HALF
            and kernels_available())


def kernels_available() -> bool:
    """``TRITON_CONV`` is on and the Triton kernels import."""
    return bool(TRITON_CONV) and triton_kernels("triton_gather_conv") is not None


def _rows(weight: Tensor, extra: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(out + extra out, k^3, in): ``weight``'s output rows, then ``extra``'s, in ``dtype``."""
    w = weight.to(dtype).flatten(1, 3)
    return w if extra is None else torch.cat([w, extra.to(dtype).flatten(1, 3)])


def gather_submconv(point: Point, feat: Tensor, weight: Tensor, extra: Tensor | FactoredWeight | None = None,
                    bias: Tensor | None = None, owner: nn.Module | None = None) -> Tensor:
    """Submanifold conv of ``feat`` (N, in) with KRSC ``weight`` [out, k, k, k, in] and ``bias`` (out,) or none;
    ``extra`` (KRSC, same k and in, no bias; or its factors) adds output columns after ``weight``'s from the same
    gather. With autograd off, ``owner`` keeps the weights' rows cast and concatenated between calls
    (``no_grad_memo``)."""
    extra_down = None
    if isinstance(extra, FactoredWeight):  # the factors into the conv's node (or, for A/Bs, their product)
        extra, extra_down = (extra.conv, extra.down) if FACTORED_WEIGHTS else (extra.product(), None)
    if torch.is_autocast_enabled(feat.device.type):
        feat = feat.to(torch.get_autocast_dtype(feat.device.type))
    k = weight.shape[1]
    backward = torch.is_grad_enabled() and (feat.requires_grad or weight.requires_grad
                                            or any(t is not None and t.requires_grad for t in (extra, extra_down)))
    kernels = _triton_for(feat)
    reversed_table = cached_reversed_table(point, k) if backward and kernels is None else None
    rows = None
    if owner is not None and extra is not None and not torch.is_grad_enabled():  # evaluation: rows kept
        sources = (weight, extra) if extra_down is None else (weight, extra, extra_down)
        rows = no_grad_memo(owner, f"gather_rows_{feat.dtype}", sources, lambda: _rows(
            weight, extra if extra_down is None else factor_product(extra, extra_down), feat.dtype))
    return apply(_GatherConv, feat, weight, extra, cached_neighbour_table(point, k), reversed_table, kernels, bias,
                 rows, extra_down)
