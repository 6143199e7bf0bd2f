"""LayerNorm over the rows of an (N, C) matrix as Triton kernels, a tile of rows per program.

Why: torch's CUDA LayerNorm runs one thread block per row. At Sonata's narrow levels (C = 48 or 96,
~100k-300k rows) that leaves most threads idle: 0.47 ms a forward on an H100 at 307k x 48. Here a
program normalises a tile of rows at once: 0.09 ms (``scripts/layer_norm_bench.py``). Statistics, affine and
gradients are computed in float32 whatever the input dtype, as torch's kernel does.

Imported only where Triton is used (CUDA, or CPU tests with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from peftbench.backbone.triton_launch import cdiv, launch, next_power_of_2

TILE_ELEMENTS = 4096  # rows per program = this / the padded row width


@triton.jit(do_not_specialize=["rows"])  # a new point count each batch: no variant per rows % 16
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, rows, cols, eps,
                    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = tl.arange(0, BLOCK_COLS)
    row_in, col_in = row < rows, col < cols
    mask = row_in[:, None] & col_in[None, :]
    offsets = row.to(tl.int64)[:, None] * cols + col[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / cols
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / cols + eps)
    w = tl.load(w_ptr + col, mask=col_in, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + col, mask=col_in, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean, mask=row_in)
    tl.store(rstd_ptr + row, rstd, mask=row_in)


@triton.jit(do_not_specialize=["rows"])
def _backward_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, mean_ptr, rstd_ptr, dw_part_ptr, db_part_ptr, rows, cols,
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, AFFINE_GRAD: tl.constexpr):
    tile = tl.program_id(0)
    row = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = tl.arange(0, BLOCK_COLS)
    row_in, col_in = row < rows, col < cols
    mask = row_in[:, None] & col_in[None, :]
    offsets = row.to(tl.int64)[:, None] * cols + col[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + row, mask=row_in, other=0.0)
    rstd = tl.load(rstd_ptr + row, mask=row_in, other=0.0)
    w = tl.load(w_ptr + col, mask=col_in, other=0.0).to(tl.float32)
    x_hat = (x - mean[:, None]) * rstd[:, None]  # 0 in masked rows (x, mean, rstd loaded as 0)
    w_dy = dy * w[None, :]
    # dx = rstd * (w*dy - mean(w*dy) - x_hat * mean(w*dy * x_hat)), means over the row
    dot = tl.sum(w_dy * x_hat, axis=1) / cols
    mean_w_dy = tl.sum(w_dy, axis=1) / cols
    dx = (w_dy - x_hat * dot[:, None] - mean_w_dy[:, None]) * rstd[:, None]
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if AFFINE_GRAD:  # this tile's column sums; the caller sums the tiles
        tl.store(dw_part_ptr + tile * cols + col, tl.sum(dy * x_hat, axis=0), mask=col_in)
        tl.store(db_part_ptr + tile * cols + col, tl.sum(dy, axis=0), mask=col_in)


def _blocks(cols: int) -> tuple[int, int]:
    block_cols = next_power_of_2(cols)
    return max(1, TILE_ELEMENTS // block_cols), block_cols


class TritonLayerNorm(torch.autograd.Function):
    """LayerNorm of the rows of a contiguous (N, C) ``x``; the output in ``out_dtype``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
        x = x.contiguous()
        rows, cols = x.shape
        block_rows, block_cols = _blocks(cols)
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        mean, rstd = torch.empty((2, rows), dtype=torch.float32, device=x.device)
        if rows:
            launch(_forward_kernel, (cdiv(rows, block_rows),), x, weight, bias, y, mean, rstd, rows, cols, eps,
                   BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        rows, cols = x.shape
        block_rows, block_cols = _blocks(cols)
        tiles = cdiv(rows, block_rows)
        affine_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dx = torch.empty_like(x)
        if affine_grad:  # per-tile column sums of the affine gradients
            parts = torch.empty((2, tiles, cols), dtype=torch.float32, device=x.device)
            dw_parts, db_parts = parts
        else:  # x stands in, never written
            dw_parts = db_parts = x
        if rows:
            launch(_backward_kernel, (tiles,), x, weight, dy.contiguous(), dx, mean, rstd, dw_parts, db_parts, rows,
                   cols, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, AFFINE_GRAD=affine_grad)
        dw, db = parts.sum(dim=1).to(weight.dtype) if affine_grad else (None, None)
        return dx, dw, db, None, None
