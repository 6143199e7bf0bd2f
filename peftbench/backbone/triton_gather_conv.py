"""The gathered conv's matmul with its gather inside (implicit GEMM), as one Triton kernel.

``gather_conv`` computes a submanifold conv as ``gather(x, table) @ W``: the gathered (N, k^3 * C) matrix is
k^3 = 27 times the features, written and read again by the matmul, on every call and again for the input
gradient. Here each program loads its rows' neighbours straight from ``x`` (an absent neighbour, index N,
loads zeros) and accumulates the 27 products in float32 registers, so the large matrix never exists.
Imported only where Triton is used (CUDA half features, or CPU tests with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from peftbench.backbone.triton_launch import cdiv, launch, next_power_of_2


@triton.jit(do_not_specialize=["rows"])  # a new point count each batch: no variant per rows % 16
def _gather_matmul_kernel(x_ptr, table_ptr, w_ptr, bias_ptr, out_ptr, rows, k_dim, n_dim, offsets,
                          w_stride_o, w_stride_k, w_stride_n, bias_cols,
                          REVERSED: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in, col_in = row < rows, col < n_dim
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for o in range(offsets):
        # the input gradient reads the neighbour at -o through offset o (the kernel's offsets reversed)
        column = offsets - 1 - o if REVERSED else o
        neighbour = tl.load(table_ptr + row.to(tl.int64) * offsets + column, mask=row_in, other=rows)
        present = neighbour < rows
        for k0 in range(0, k_dim, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_in = k < k_dim
            a = tl.load(x_ptr + neighbour.to(tl.int64)[:, None] * k_dim + k[None, :],
                        mask=present[:, None] & k_in[None, :], other=0.0)
            b = tl.load(w_ptr + o * w_stride_o + k[:, None] * w_stride_k + col[None, :] * w_stride_n,
                        mask=k_in[:, None] & col_in[None, :], other=0.0)
            acc = tl.dot(a, b, acc)
    if HAS_BIAS:  # the first bias_cols columns, in the float32 accumulator
        acc += tl.load(bias_ptr + col, mask=col < bias_cols, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + row.to(tl.int64)[:, None] * n_dim + col[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_in[:, None] & col_in[None, :])


@triton.jit
def _offset_product(x_ptr, table_ptr, o, offsets, p, p_in, rows, in_col, in_in, in_dim, dy_t, acc):
    """``acc + dy^T x[table[p, o]]`` (unchanged where ``o`` is past the last offset)."""
    neighbour = tl.load(table_ptr + p.to(tl.int64) * offsets + o, mask=p_in & (o < offsets), other=rows)
    present = neighbour < rows
    x = tl.load(x_ptr + neighbour.to(tl.int64)[:, None] * in_dim + in_col[None, :],
                mask=present[:, None] & in_in[None, :], other=0.0)
    return tl.dot(dy_t, x, acc)


@triton.jit
def _store_part(part_ptr, acc, split, o, offsets, out_col, out_in, in_col, in_in, out_dim, in_dim):
    """This split's sum for offset ``o``, at (split, out, o, in)."""
    part = part_ptr + ((split * out_dim + out_col[:, None]) * offsets + o) * in_dim + in_col[None, :]
    tl.store(part, acc, mask=out_in[:, None] & in_in[None, :] & (o < offsets))


@triton.jit(do_not_specialize=["rows"])
def _weight_grad_kernel(x_ptr, table_ptr, dy_ptr, part_ptr, rows, in_dim, out_dim, offsets, dy_stride,
                        rows_per_split, GROUP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_OUT: tl.constexpr,
                        BLOCK_IN: tl.constexpr):
    """A program sums GROUP (1 or 3) consecutive offsets over its split of the rows: each output-gradient tile it
    loads serves GROUP offsets, and their neighbour indices share the table's memory sectors."""
    o = tl.program_id(0) * GROUP
    tiles_in = tl.cdiv(in_dim, BLOCK_IN)
    out_col = (tl.program_id(1) // tiles_in) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    in_col = (tl.program_id(1) % tiles_in) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    out_in, in_in = out_col < out_dim, in_col < in_dim
    split = tl.program_id(2)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, rows)
    acc0 = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_in = p < end
        dy_t = tl.trans(tl.load(dy_ptr + p.to(tl.int64)[:, None] * dy_stride + out_col[None, :],
                                mask=p_in[:, None] & out_in[None, :], other=0.0))
        acc0 = _offset_product(x_ptr, table_ptr, o, offsets, p, p_in, rows, in_col, in_in, in_dim, dy_t, acc0)
        if GROUP == 3:
            acc1 = _offset_product(x_ptr, table_ptr, o + 1, offsets, p, p_in, rows, in_col, in_in, in_dim, dy_t, acc1)
            acc2 = _offset_product(x_ptr, table_ptr, o + 2, offsets, p, p_in, rows, in_col, in_in, in_dim, dy_t, acc2)
    _store_part(part_ptr, acc0, split, o, offsets, out_col, out_in, in_col, in_in, out_dim, in_dim)
    if GROUP == 3:
        _store_part(part_ptr, acc1, split, o + 1, offsets, out_col, out_in, in_col, in_in, out_dim, in_dim)
        _store_part(part_ptr, acc2, split, o + 2, offsets, out_col, out_in, in_col, in_in, out_dim, in_dim)


# tiles: rows per program, widest output and reduction tiles, warps. Picked by ``scripts/gather_conv_bench.py
# --sweep`` on an H100 (Sonata's levels at batch 3), device ms forward / input gradient: 128 rows and 8 warps
# 0.320 / 0.390 at 307k x 48 (64 rows: 0.361 / 0.416), 0.249 / 0.276 at 35.6k x 192 (0.297 / 0.276); on a level
# of fewer than FEW_SITES sites, 64 rows make programs enough: 0.099 / 0.101 at 2.1k x 512 (128 rows: 0.122 / 0.127)
MATMUL_TILES = {"rows": 128, "out": 128, "reduce": 32, "warps": 8}
FEW_SITES, FEW_SITES_TILES = 4096, {"rows": 64, "warps": 4}
# weight gradient, three offsets a program (``--sweep``, H100, batch 3, ms CPE C x C / GEM's extra r x C, one offset
# a program -> three): 0.311 / 0.336 -> 0.265 / 0.279 at 307k x 48, 0.598 / 0.346 -> 0.490 / 0.285 at 161k x 96,
# 0.301 / 0.123 -> 0.268 / 0.113 at 35.6k x 192; level 3 and 4 within 0.01
WEIGHT_GRAD_TILES = {"rows": 64, "out": 64, "in": 64, "warps": 4, "programs": 1024, "offsets": 3}


def _block(size: int, most: int) -> int:
    return max(16, min(most, next_power_of_2(size)))  # tl.dot takes tiles of at least 16


def gather_matmul(x: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, transposed: bool,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of ``x`` (N, C) over ``table`` (N, k^3; N marks an absent neighbour) by ``weight``
    (out, k^3, in) in ``x``'s dtype, float32 accumulation; ``bias`` (forward only) is added to the first
    ``len(bias)`` output columns in the accumulator.

    ``transposed=False``: ``out[p] = sum_o W[:, o] @ x[table[p, o]]`` (N, out), the forward, ``x`` (N, in).
    ``transposed=True``: ``out[p] = sum_o W[:, o]^T @ x[table[p, k^3-1-o]]`` (N, in), the input gradient of
    the forward from ``x`` = its output gradient (N, out): on a submanifold the neighbour at -o of my
    neighbour at o is me.
    """
    x, table = x.contiguous(), table.contiguous()
    rows, offsets = table.shape
    out_dim, _, in_dim = weight.shape
    s_out, s_o, s_in = weight.stride()
    k_dim, n_dim = (out_dim, in_dim) if transposed else (in_dim, out_dim)
    w_stride_k, w_stride_n = (s_out, s_in) if transposed else (s_in, s_out)
    out = torch.empty((rows, n_dim), dtype=x.dtype, device=x.device)
    if rows:
        tiles = MATMUL_TILES if rows >= FEW_SITES else {**MATMUL_TILES, **FEW_SITES_TILES}
        block_m, block_n, block_k = tiles["rows"], _block(n_dim, tiles["out"]), _block(k_dim, tiles["reduce"])
        grid = (cdiv(rows, block_m), cdiv(n_dim, block_n))
        launch(_gather_matmul_kernel, grid, x, table, weight, weight if bias is None else bias, out, rows, k_dim,
               n_dim, offsets, s_o, w_stride_k, w_stride_n, 0 if bias is None else len(bias), REVERSED=transposed,
               HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
               num_warps=tiles["warps"])
    return out


def gather_weight_grad(x: torch.Tensor, table: torch.Tensor, dy: torch.Tensor, programs: int | None = None
                       ) -> torch.Tensor:
    """``dW[:, o] = sum_p dy[p]^T x[table[p, o]]`` (out, k^3, in), float32, for ``x`` (N, in) and ``dy`` (N, out)
    (rows contiguous; a column slice of a wider gradient is fine). The rows are split so that about ``programs``
    programs run (default: ``WEIGHT_GRAD_TILES``); their partial sums are added in float32."""
    x, table = x.contiguous(), table.contiguous()
    if dy.stride(1) != 1:
        dy = dy.contiguous()
    rows, offsets = table.shape
    in_dim, out_dim = x.shape[1], dy.shape[1]
    config = WEIGHT_GRAD_TILES
    programs = programs or config["programs"]
    group = config["offsets"]
    block_out, block_in, block_p = _block(out_dim, config["out"]), _block(in_dim, config["in"]), config["rows"]
    tiles = cdiv(out_dim, block_out) * cdiv(in_dim, block_in)
    offset_groups = cdiv(offsets, group)
    splits = max(1, min(cdiv(rows, block_p), programs // (offset_groups * tiles)))
    rows_per_split = cdiv(max(rows, 1), splits * block_p) * block_p
    splits = cdiv(max(rows, 1), rows_per_split)
    parts = torch.empty((splits, out_dim, offsets, in_dim), dtype=torch.float32, device=x.device)
    launch(_weight_grad_kernel, (offset_groups, tiles, splits), x, table, dy, parts, rows, in_dim, out_dim, offsets,
           dy.stride(0), rows_per_split, GROUP=group, BLOCK_P=block_p, BLOCK_OUT=block_out, BLOCK_IN=block_in,
           num_warps=config["warps"])
    return parts[0] if splits == 1 else parts.sum(0)
