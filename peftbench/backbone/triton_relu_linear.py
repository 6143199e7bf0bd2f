"""``y = (residual +) base + relu(a) @ W^T + b`` (``relu_linear``) as Triton kernels: one forward, two and a sum
backward.

As torch ops the same is a ReLU, a cast, an addmm and an add forward, and two matmuls, a sum, a cast and the
ReLU's gradient backward, each a launch and an autograd node on every call: GEM's Spatial Adapter makes that
call in every encoder block, and GEM's step waits on the host's launches (issue 12). Products and sums are
float32 (``input_precision="ieee"``), as its float32 up-projection.
Imported only where Triton is used (CUDA, or CPU tests with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from peftbench.backbone.triton_launch import cdiv, launch, next_power_of_2

BLOCK_ROWS = 64
PROGRAMS = 264  # the weight gradient's row-reduction programs per column tile (two per H100 SM)


@triton.jit
def _relu_rows(a_ptr, a_stride, row, row_in, r, RP: tl.constexpr):
    """relu(a) for the tile's rows, float32 (RP >= r columns, zeros past r)."""
    ch = tl.arange(0, RP)
    a = tl.load(a_ptr + row.to(tl.int64)[:, None] * a_stride + ch[None, :],
                mask=row_in[:, None] & (ch < r)[None, :], other=0.0)
    return tl.maximum(a.to(tl.float32), 0.0)


@triton.jit(do_not_specialize=["rows"])  # a new point count each batch: no variant per rows % 16
def _forward_kernel(base_ptr, a_ptr, a_stride, w_ptr, b_ptr, res_ptr, y_ptr, rows, r, cols,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
                    BLOCK_COLS: tl.constexpr, RP: tl.constexpr):
    """y = (residual +) (base + relu(a) @ W^T + b), summed in float32 in that order."""
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    col = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_in, col_in = row < rows, col < cols
    ch = tl.arange(0, RP)
    w = tl.load(w_ptr + col[:, None] * r + ch[None, :], mask=col_in[:, None] & (ch < r)[None, :], other=0.0)
    branch = tl.dot(_relu_rows(a_ptr, a_stride, row, row_in, r, RP), tl.trans(w), input_precision="ieee")
    if HAS_BIAS:
        branch += tl.load(b_ptr + col, mask=col_in, other=0.0)[None, :]
    mask = row_in[:, None] & col_in[None, :]
    offsets = row.to(tl.int64)[:, None] * cols + col[None, :]
    y = tl.load(base_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + branch
    if HAS_RESIDUAL:
        y = tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + y
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows"])
def _input_grad_kernel(dy_ptr, a_ptr, a_stride, w_ptr, da_ptr, rows, r, cols,
                       BLOCK: tl.constexpr, BLOCK_COLS: tl.constexpr, RP: tl.constexpr):
    """d_a = (dy @ W) where a > 0, else 0 (the ReLU's gradient, as torch's)."""
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_in = row < rows
    ch = tl.arange(0, RP)
    acc = tl.zeros((BLOCK, RP), dtype=tl.float32)
    for c0 in range(0, cols, BLOCK_COLS):
        col = c0 + tl.arange(0, BLOCK_COLS)
        col_in = col < cols
        dy = tl.load(dy_ptr + row.to(tl.int64)[:, None] * cols + col[None, :],
                     mask=row_in[:, None] & col_in[None, :], other=0.0)
        w = tl.load(w_ptr + col[:, None] * r + ch[None, :], mask=col_in[:, None] & (ch < r)[None, :], other=0.0)
        acc = tl.dot(dy, w, acc, input_precision="ieee")
    mask = row_in[:, None] & (ch < r)[None, :]
    a = tl.load(a_ptr + row.to(tl.int64)[:, None] * a_stride + ch[None, :], mask=mask, other=0.0)
    tl.store(da_ptr + row.to(tl.int64)[:, None] * r + ch[None, :],
             tl.where(a > 0, acc, 0.0).to(da_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows", "tiles_per_program"])
def _weight_grad_kernel(dy_ptr, a_ptr, a_stride, part_ptr, rows, r, cols, tiles_per_program,
                        BLOCK: tl.constexpr, BLOCK_COLS: tl.constexpr, RP: tl.constexpr):
    """This program's sums over its run of row tiles: dy^T relu(a) (cols, r) and dy's column sums (cols,), at
    ``part[program]`` = [dW flattened | db]."""
    program = tl.program_id(0)
    col = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_in = col < cols
    acc_w = tl.zeros((BLOCK_COLS, RP), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    for tile in range(program * tiles_per_program, (program + 1) * tiles_per_program):
        row = tile * BLOCK + tl.arange(0, BLOCK)
        row_in = row < rows
        dy = tl.load(dy_ptr + row.to(tl.int64)[:, None] * cols + col[None, :],
                     mask=row_in[:, None] & col_in[None, :], other=0.0)
        acc_w = tl.dot(tl.trans(dy), _relu_rows(a_ptr, a_stride, row, row_in, r, RP), acc_w, input_precision="ieee")
        acc_b += tl.sum(dy, axis=0)
    ch = tl.arange(0, RP)
    part = part_ptr + program.to(tl.int64) * cols * (r + 1)
    tl.store(part + col[:, None] * r + ch[None, :], acc_w, mask=col_in[:, None] & (ch < r)[None, :])
    tl.store(part + cols * r + col, acc_b, mask=col_in)


def _tiles(cols: int, r: int) -> tuple[int, int]:
    """(column tile, padded rank): tl.dot takes sides of at least 16."""
    return max(16, min(64, next_power_of_2(cols))), max(16, next_power_of_2(r))


class ReluLinearAdd(torch.autograd.Function):
    """``base + relu(a) @ weight.T + bias`` for float32 ``base`` (N, C), ``a`` (N, r; rows may be a column slice
    of a wider matrix), float32 ``weight`` (C, r) and ``bias`` (C,) or None; the result in ``base``'s dtype.
    With ``residual`` (``base``'s shape and dtype), ``residual + (base + ...)``: the block's residual sum in the same
    kernel (a launch, a node and a read and write of (N, C) fewer than the add after it)."""

    @staticmethod
    def forward(ctx, base: torch.Tensor, a: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None, residual: torch.Tensor | None = None) -> torch.Tensor:
        base, weight = base.contiguous(), weight.contiguous()
        residual = None if residual is None else residual.contiguous()
        if a.stride(1) != 1:
            a = a.contiguous()
        rows, cols = base.shape
        r = a.shape[1]
        block_cols, rp = _tiles(cols, r)
        y = torch.empty_like(base)
        if rows:
            launch(_forward_kernel, (cdiv(rows, BLOCK_ROWS), cdiv(cols, block_cols)), base, a, a.stride(0), weight,
                   weight if bias is None else bias, base if residual is None else residual, y, rows, r, cols,
                   HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, BLOCK=BLOCK_ROWS,
                   BLOCK_COLS=block_cols, RP=rp)
        ctx.save_for_backward(a, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        a, weight = ctx.saved_tensors
        dy = dy.float().contiguous()
        rows, cols = dy.shape
        r = a.shape[1]
        block_cols, rp = _tiles(cols, r)
        d_a = d_weight = d_bias = None
        if ctx.needs_input_grad[1]:
            d_a = torch.empty((rows, r), dtype=a.dtype, device=a.device)
            if rows:
                launch(_input_grad_kernel, (cdiv(rows, BLOCK_ROWS),), dy, a, a.stride(0), weight, d_a, rows, r, cols,
                       BLOCK=BLOCK_ROWS, BLOCK_COLS=block_cols, RP=rp)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            tiles = max(1, cdiv(rows, BLOCK_ROWS))
            col_tiles = cdiv(cols, block_cols)
            tiles_per_program = cdiv(tiles, max(1, PROGRAMS // col_tiles))
            programs = cdiv(tiles, tiles_per_program)
            parts = torch.empty((programs, cols * (r + 1)), dtype=torch.float32, device=a.device)
            launch(_weight_grad_kernel, (programs, col_tiles), dy, a, a.stride(0), parts, rows, r, cols,
                   tiles_per_program, BLOCK=BLOCK_ROWS, BLOCK_COLS=block_cols, RP=rp)
            sums = parts[0] if programs == 1 else parts.sum(0)
            d_weight, d_bias = sums[:cols * r].view(cols, r), sums[cols * r:]
        grads = (dy if ctx.needs_input_grad[0] else None, d_a, d_weight if ctx.needs_input_grad[2] else None,
                 d_bias if ctx.has_bias and ctx.needs_input_grad[3] else None)
        if len(ctx.needs_input_grad) > 4:  # called with the residual argument
            grads += (dy if ctx.needs_input_grad[4] else None,)
        return grads
