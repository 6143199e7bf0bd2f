"""Tiles of GEM's Context Adapter kernels (``triton_latent_attention``): rows of points and their masked scores
against the latents, the projections of ``h``, latent columns and their per-program partial sums."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_rows(ptr, stride, row, row_mask, RP: tl.constexpr):
    """(rows tile, RP) of float32 rows (zeros past r and past the rows)."""
    return tl.load(ptr + row.to(tl.int64)[:, None] * stride + tl.arange(0, RP)[None, :], mask=row_mask, other=0.0)


@triton.jit
def _masked_scores(x, lat, row_in, batch_ptr, row, col_scene, col_in, scale):
    """Scores of rows ``x`` (tile, RP) against ``lat`` (MP, RP): -inf off the row's scene."""
    scene = tl.load(batch_ptr + row, mask=row_in, other=-1).to(tl.int32)
    scores = tl.dot(x, tl.trans(lat * scale), input_precision="ieee")
    valid = (scene[:, None] == col_scene[None, :]) & col_in[None, :] & row_in[:, None]
    return tl.where(valid, scores, float("-inf"))


@triton.jit
def _scores(rows_ptr, row_stride, row, row_in, lat, batch_ptr, col_scene, col_in, r, scale,
            RP: tl.constexpr):
    """(rows tile, RP) loaded and its masked scores against ``lat`` (MP, RP)."""
    x = _load_rows(rows_ptr, row_stride, row, row_in[:, None] & (tl.arange(0, RP) < r)[None, :], RP)
    return x, _masked_scores(x, lat, row_in, batch_ptr, row, col_scene, col_in, scale)


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
def _load_latents(ptr, r, n_cols, RP: tl.constexpr, MP: tl.constexpr):
    col, ch = tl.arange(0, MP), tl.arange(0, RP)
    return tl.load(ptr + col[:, None] * r + ch[None, :], mask=(col < n_cols)[:, None] & (ch < r)[None, :], other=0.0)


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
def _sum_column_parts(part_ptr, col, programs, RP: tl.constexpr, MP: tl.constexpr, PB: tl.constexpr):
    """Column ``col``'s (RP,) partial sums of all row programs, PB programs' partials a load."""
    p, ch = tl.arange(0, PB), tl.arange(0, RP)
    acc = tl.zeros((PB, RP), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        acc += tl.load(part_ptr + (part[:, None] * MP + col) * RP + ch[None, :], mask=(part < programs)[:, None],
                       other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _up_rows(up_ptr, c0, r, cols, RP: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Rows c0.. of the up-projection (C, r): (BLOCK_COLS, RP), zeros past C and r; and which exist."""
    c, ch = c0 + tl.arange(0, BLOCK_COLS), tl.arange(0, RP)
    return tl.load(up_ptr + c[:, None] * r + ch[None, :], mask=(c < cols)[:, None] & (ch < r)[None, :],
                   other=0.0), c, c < cols
