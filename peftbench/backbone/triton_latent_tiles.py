"""Tiles of GEM's Context Adapter kernels (``triton_latent_attention``): rows of points, the windows of latent
columns of the scenes in a row tile and the rows' masked scores against them, the projections of ``h``, latent
columns and their per-program partial sums."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_rows(ptr, stride, row, row_mask, RP: tl.constexpr):
    """(rows tile, RP) of float32 rows (zeros past r and past the rows)."""
    return tl.load(ptr + row.to(tl.int64)[:, None] * stride + tl.arange(0, RP)[None, :], mask=row_mask, other=0.0)


@triton.jit
def _tile_scenes(batch_ptr, row, row_in):
    """The row tile's scenes (-1 past the rows) and the lowest and highest of them (none: lowest > highest)."""
    scene = tl.load(batch_ptr + row, mask=row_in, other=-1).to(tl.int32)
    return scene, tl.min(tl.where(row_in, scene, 2147483647), axis=0), tl.max(scene, axis=0)


@triton.jit
def _window(first_scene, m, n_cols, scenes_per_window, WP: tl.constexpr):
    """The latent columns of scenes ``first_scene`` .. + ``scenes_per_window`` (WP wide, the last ones unused where
    m does not divide WP), their scenes and which exist."""
    j = tl.arange(0, WP)
    col = first_scene * m + j
    return col, col // m, (j < scenes_per_window * m) & (col < n_cols)


@triton.jit
def _load_cols(ptr, col, col_in, r, RP: tl.constexpr):
    """Latent columns ``col`` (WP, RP) of an (M, r) float32 tensor, zeros past r and where not ``col_in``."""
    ch = tl.arange(0, RP)
    return tl.load(ptr + col[:, None] * r + ch[None, :], mask=col_in[:, None] & (ch < r)[None, :], other=0.0)


@triton.jit
def _masked_scores(x, lat, row_in, scene, col_scene, col_in, scale):
    """Scores of rows ``x`` (tile, RP) against a window's latents ``lat`` (WP, RP): -inf off the row's scene and
    for rows not ``row_in``."""
    scores = tl.dot(x, tl.trans(lat * scale), input_precision="ieee")
    valid = (scene[:, None] == col_scene[None, :]) & col_in[None, :] & row_in[:, None]
    return tl.where(valid, scores, float("-inf"))


@triton.jit
def _window_softmax(scores, in_window):
    """Each row's softmax over its scene's columns for the rows ``in_window``; zeros for the others."""
    spread = _row_softmax(tl.where(in_window[:, None], scores, 0.0))  # no -inf-only rows
    return tl.where(in_window[:, None], spread, 0.0)


@triton.jit
def _add_parts(ptr, pid, n_cols, col, col_in, x, RP: tl.constexpr):
    """Adds ``x`` (WP, RP) to this program's partial sums of columns ``col``: (programs, M, RP) at ``ptr``. The
    barrier: the program's previous window may have stored these columns from other threads."""
    offsets = (pid * n_cols + col[:, None]) * RP + tl.arange(0, RP)[None, :]
    tl.debug_barrier()
    tl.store(ptr + offsets, tl.load(ptr + offsets, mask=col_in[:, None], other=0.0) + x, mask=col_in[:, None])


@triton.jit
def _zero_parts(ptr, pid, n_cols, RP: tl.constexpr, WP: tl.constexpr):
    """Zeros this program's partial sums of every column: (programs, M, RP) at ``ptr``."""
    for c0 in range(0, n_cols, WP):
        col = c0 + tl.arange(0, WP)
        tl.store(ptr + (pid * n_cols + col[:, None]) * RP + tl.arange(0, RP)[None, :],
                 tl.zeros((WP, RP), tl.float32), mask=(col < n_cols)[:, None])


@triton.jit
def _weight_chunk(w_ptr, c, r, cols, RP: tl.constexpr):
    """Columns ``c`` of a projection weight (r, cols) as float32 (RP, len(c)), zeros past r and cols."""
    ch = tl.arange(0, RP)
    return tl.load(w_ptr + ch[:, None] * cols + c[None, :], mask=(ch < r)[:, None] & (c < cols)[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _project(h_ptr, h_stride, wk_ptr, wv_ptr, wq_ptr, row, row_in, r, cols, HAS_V: tl.constexpr,
             HAS_Q: tl.constexpr, RP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
             PRECISION: tl.constexpr):
    """The row tile's ``h @ w^T`` for the keys' weight and the values' and queries' where present (zeros where
    absent): float32 products (``PRECISION``, ``ieee`` or ``tf32x3``) of ``h`` (any float dtype) read once."""
    k = tl.zeros((BLOCK, RP), tl.float32)
    v = tl.zeros((BLOCK, RP), tl.float32)
    q = tl.zeros((BLOCK, RP), tl.float32)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(h_ptr + row.to(tl.int64)[:, None] * h_stride + c[None, :],
                    mask=row_in[:, None] & (c < cols)[None, :], other=0.0).to(tl.float32)
        k = tl.dot(x, tl.trans(_weight_chunk(wk_ptr, c, r, cols, RP)), k, input_precision=PRECISION)
        if HAS_V:
            v = tl.dot(x, tl.trans(_weight_chunk(wv_ptr, c, r, cols, RP)), v, input_precision=PRECISION)
        if HAS_Q:
            q = tl.dot(x, tl.trans(_weight_chunk(wq_ptr, c, r, cols, RP)), q, input_precision=PRECISION)
    return k, v, q


@triton.jit
def _store_rows(ptr, stride, row, row_mask, x, RP: tl.constexpr):
    tl.store(ptr + row.to(tl.int64)[:, None] * stride + tl.arange(0, RP)[None, :], x, mask=row_mask)


@triton.jit
def _row_tile(tile, rows, r, RP: tl.constexpr, BLOCK: tl.constexpr):
    """Row tile ``tile``'s rows, which of them exist, and the (BLOCK, RP) mask of their r channels."""
    row = tile * BLOCK + tl.arange(0, BLOCK)
    row_in = row < rows
    return row, row_in, row_in[:, None] & (tl.arange(0, RP) < r)[None, :]


@triton.jit
def _row_softmax(scores):
    e = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _column(ptr, col, r, n_cols, RP: tl.constexpr):
    """Latent column ``col``'s (RP,) channels (zeros past r, and for a padded column)."""
    ch = tl.arange(0, RP)
    return tl.load(ptr + col * r + ch, mask=(ch < r) & (col < n_cols), other=0.0)


@triton.jit
def _store_column(ptr, col, value, r, n_cols, RP: tl.constexpr):
    ch = tl.arange(0, RP)
    tl.store(ptr + col * r + ch, value, mask=(ch < r) & (col < n_cols))


@triton.jit
def _sum_column_parts(part_ptr, col, programs, n_cols, RP: tl.constexpr, PB: tl.constexpr):
    """Column ``col``'s (RP,) partial sums of all row programs, PB programs' partials a load."""
    p, ch = tl.arange(0, PB), tl.arange(0, RP)
    acc = tl.zeros((PB, RP), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        acc += tl.load(part_ptr + (part[:, None] * n_cols + col) * RP + ch[None, :],
                       mask=(part < programs)[:, None], other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _up_rows(up_ptr, c0, r, cols, RP: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Rows c0.. of the up-projection (C, r): (BLOCK_COLS, RP), zeros past C and r; and which exist."""
    c, ch = c0 + tl.arange(0, BLOCK_COLS), tl.arange(0, RP)
    return tl.load(up_ptr + c[:, None] * r + ch[None, :], mask=(c < cols)[:, None] & (ch < r)[None, :],
                   other=0.0), c, c < cols
