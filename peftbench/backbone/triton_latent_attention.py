"""GEM's Context Adapter core (``latent_attention``) as seven Triton kernels, forward and backward.

The torch core launches ~13 kernels a forward and ~20 a backward, each over (N, B*m) score matrices; GEM's
step is bound by the host's launches (issue 12). Here the scores never leave registers: the softmax over a
scene's points is an online softmax over row tiles (running column max, sum and weighted values per program,
then one program a latent column combines them); the read-out is one pass over row tiles; the backward is a
pass over the rows for the read-out's gradients, a combine, a pass recomputing the affinity for the keys' and
values' gradients, and a last combine for the latents'. All products are float32 (``input_precision="ieee"``):
the Context Adapter's float32 contract.

Points are masked to their own scene's m latent columns by their scene index (no (N, B*m) bias).
Imported only where Triton is used (CUDA, or CPU tests with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from peftbench.backbone.triton_launch import cdiv, launch, next_power_of_2

BLOCK_ROWS = 64
PROGRAMS = 264  # row-reduction programs: two per H100 SM; each sums a contiguous run of row tiles
PARTS_BLOCK = 64  # the combines (one program a latent column) load this many programs' partial sums at once


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
             HAS_Q: tl.constexpr, RP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """The row tile's ``h @ w^T`` for the keys' weight and the values' and queries' where present (zeros where
    absent): float32 products of ``h`` (any float dtype) read once."""
    k = tl.zeros((BLOCK, RP), tl.float32)
    v = tl.zeros((BLOCK, RP), tl.float32)
    q = tl.zeros((BLOCK, RP), tl.float32)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(h_ptr + row.to(tl.int64)[:, None] * h_stride + c[None, :],
                    mask=row_in[:, None] & (c < cols)[None, :], other=0.0).to(tl.float32)
        k = tl.dot(x, tl.trans(_weight_chunk(wk_ptr, c, r, cols, RP)), k, input_precision="ieee")
        if HAS_V:
            v = tl.dot(x, tl.trans(_weight_chunk(wv_ptr, c, r, cols, RP)), v, input_precision="ieee")
        if HAS_Q:
            q = tl.dot(x, tl.trans(_weight_chunk(wq_ptr, c, r, cols, RP)), q, input_precision="ieee")
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


@triton.jit(do_not_specialize=["rows"])
def _context_partials_kernel(k_ptr, k_stride, v_ptr, v_stride, q_ptr, q_stride, h_ptr, h_stride, wk_ptr, wv_ptr,
                             wq_ptr, lat_ptr, batch_ptr, part_ptr, rows, r, cols,
                             n_cols, m, scale, tiles_per_program, PROJECT: tl.constexpr, HAS_V: tl.constexpr,
                             HAS_Q: tl.constexpr, RP: tl.constexpr, MP: tl.constexpr, BLOCK: tl.constexpr,
                             BLOCK_C: tl.constexpr):
    """The online softmax's partial sums per program. ``PROJECT``: the keys (and values and queries where
    ``HAS_V`` / ``HAS_Q``) are ``h @ w^T``, computed here and written to their rows for the read-out and the
    backward; else read from them (values: ``v_ptr``, the keys where they double as them). ``part_ptr``: the
    programs' column maxima, then sums, then weighted values (``Plan.parts``)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    part_max_ptr, part_sum_ptr, part_ctx_ptr = part_ptr, part_ptr + programs * MP, part_ptr + 2 * programs * MP
    col = tl.arange(0, MP)
    col_in = col < n_cols
    lat = _load_latents(lat_ptr, r, n_cols, RP, MP)
    run_max = tl.full((MP,), float("-inf"), tl.float32)
    run_sum = tl.zeros((MP,), tl.float32)
    acc = tl.zeros((MP, RP), tl.float32)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        if PROJECT:
            k, v, q = _project(h_ptr, h_stride, wk_ptr, wv_ptr, wq_ptr, row, row_in, r, cols, HAS_V, HAS_Q, RP,
                               BLOCK, BLOCK_C)
            _store_rows(k_ptr, k_stride, row, row_mask, k, RP)
            if HAS_V:
                _store_rows(v_ptr, v_stride, row, row_mask, v, RP)
            else:
                v = k
            if HAS_Q:
                _store_rows(q_ptr, q_stride, row, row_mask, q, RP)
        else:
            k = _load_rows(k_ptr, k_stride, row, row_mask, RP)
            v = _load_rows(v_ptr, v_stride, row, row_mask, RP)
        scores = _masked_scores(k, lat, row_in, batch_ptr, row, col // m, col_in, scale)
        new_max = tl.maximum(run_max, tl.max(scores, axis=0))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a column with no rows yet: nothing to shift
        alpha = tl.exp(run_max - shift)
        e = tl.exp(scores - shift[None, :])
        run_sum = run_sum * alpha + tl.sum(e, axis=0)
        acc = acc * alpha[:, None] + tl.dot(tl.trans(e), v, input_precision="ieee")
        run_max = new_max
    tl.store(part_max_ptr + pid * MP + col, run_max)
    tl.store(part_sum_ptr + pid * MP + col, run_sum)
    ch = tl.arange(0, RP)
    tl.store(part_ctx_ptr + (pid * MP + col[:, None]) * RP + ch[None, :], acc)


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
def _context_combine_kernel(part_ptr, lat_ptr, shift_ptr, total_ptr, context_ptr, updated_ptr, programs, r, n_cols,
                            RP: tl.constexpr, MP: tl.constexpr, PB: tl.constexpr):
    part_max_ptr, part_sum_ptr, part_ctx_ptr = part_ptr, part_ptr + programs * MP, part_ptr + 2 * programs * MP
    col = tl.program_id(0)  # one program a latent column (padded ones too: the row kernels read their shift)
    p, ch = tl.arange(0, PB), tl.arange(0, RP)
    top = tl.full((PB,), float("-inf"), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        top = tl.maximum(top, tl.load(part_max_ptr + part * MP + col, mask=part < programs, other=float("-inf")))
    top_all = tl.max(top, axis=0)
    shift = tl.where(top_all == float("-inf"), 0.0, top_all)
    total = tl.zeros((PB,), tl.float32)
    context = tl.zeros((PB, RP), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        part_in = part < programs
        weight = tl.exp(tl.load(part_max_ptr + part * MP + col, mask=part_in, other=float("-inf")) - shift)
        total += tl.load(part_sum_ptr + part * MP + col, mask=part_in, other=0.0) * weight
        context += tl.load(part_ctx_ptr + (part[:, None] * MP + col) * RP + ch[None, :], mask=part_in[:, None],
                           other=0.0) * weight[:, None]
    total_all = tl.sum(total, axis=0)
    # normalised after the sum, as the torch core: a sum of exps <= 1 keeps more bits than N weights of ~1/N
    context_all = tl.sum(context, axis=0) / tl.where(total_all > 0, total_all, 1.0)
    tl.store(shift_ptr + col, shift)
    tl.store(total_ptr + col, total_all)
    _store_column(context_ptr, col, context_all, r, n_cols, RP)
    _store_column(updated_ptr, col, _column(lat_ptr, col, r, n_cols, RP) + context_all, r, n_cols, RP)


@triton.jit
def _up_rows(up_ptr, c0, r, cols, RP: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Rows c0.. of the up-projection (C, r): (BLOCK_COLS, RP), zeros past C and r; and which exist."""
    c, ch = c0 + tl.arange(0, BLOCK_COLS), tl.arange(0, RP)
    return tl.load(up_ptr + c[:, None] * r + ch[None, :], mask=(c < cols)[:, None] & (ch < r)[None, :],
                   other=0.0), c, c < cols


@triton.jit(do_not_specialize=["rows"])
def _read_kernel(q_ptr, q_stride, scored_ptr, updated_ptr, batch_ptr, out_ptr, up_ptr, base_ptr, y_ptr, rows, r,
                 n_cols, m, scale, cols, UP: tl.constexpr, HAS_BASE: tl.constexpr, RP: tl.constexpr,
                 MP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_COLS: tl.constexpr):
    row, row_in, row_mask = _row_tile(tl.program_id(0), rows, r, RP, BLOCK)
    col = tl.arange(0, MP)
    scored = _load_latents(scored_ptr, r, n_cols, RP, MP)
    _, scores = _scores(q_ptr, q_stride, row, row_in, scored, batch_ptr, col // m, col < n_cols, r, scale, RP)
    spread = _row_softmax(tl.where(row_in[:, None], scores, 0.0))  # rows past the end: no -inf-only rows
    out = tl.dot(spread, _load_latents(updated_ptr, r, n_cols, RP, MP), input_precision="ieee")
    ch = tl.arange(0, RP)
    tl.store(out_ptr + row.to(tl.int64)[:, None] * r + ch[None, :], out, mask=row_mask)
    if UP:  # y = (base +) out @ up^T, a tile of C columns at a time, summed in float32
        for c0 in range(0, cols, BLOCK_COLS):
            up, c, c_in = _up_rows(up_ptr, c0, r, cols, RP, BLOCK_COLS)
            offsets = row.to(tl.int64)[:, None] * cols + c[None, :]
            mask = row_in[:, None] & c_in[None, :]
            y = tl.dot(out, tl.trans(up), input_precision="ieee")
            if HAS_BASE:
                y += tl.load(base_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rows"])
def _read_backward_kernel(q_ptr, q_stride, scored_ptr, updated_ptr, batch_ptr, d_out_ptr, up_ptr, d_q_ptr,
                          d_q_stride, part_ptr, d_base_ptr, rows, r, n_cols, m, scale,
                          tiles_per_program, cols, UP: tl.constexpr, D_BASE: tl.constexpr, RP: tl.constexpr,
                          MP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """The read-out's backward per row tile, the latents' partial sums per program. ``D_BASE`` (with ``UP``): also
    ``y``'s gradient, which is ``base``'s, written in ``d_base``'s dtype as it is read (no cast kernel).
    ``part_ptr``: the programs' partial sums for ``Plan.parts(.., RP, RP, RP)``'s first two."""
    pid = tl.program_id(0)
    part_du_ptr, part_ds_ptr = part_ptr, part_ptr + tl.num_programs(0) * MP * RP
    col, ch = tl.arange(0, MP), tl.arange(0, RP)
    scored = _load_latents(scored_ptr, r, n_cols, RP, MP)
    updated = _load_latents(updated_ptr, r, n_cols, RP, MP)
    d_updated = tl.zeros((MP, RP), tl.float32)
    d_scored = tl.zeros((MP, RP), tl.float32)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        q, scores = _scores(q_ptr, q_stride, row, row_in, scored, batch_ptr, col // m, col < n_cols, r, scale, RP)
        spread = tl.where(row_in[:, None], _row_softmax(tl.where(row_in[:, None], scores, 0.0)), 0.0)
        if UP:  # d_out_ptr holds the gradient of y = base + out @ up^T (N, C): d_out = dy @ up
            d_out = tl.zeros((BLOCK, RP), tl.float32)
            for c0 in range(0, cols, BLOCK_COLS):
                up, c, c_in = _up_rows(up_ptr, c0, r, cols, RP, BLOCK_COLS)
                offsets, mask = row.to(tl.int64)[:, None] * cols + c[None, :], row_in[:, None] & c_in[None, :]
                dy = tl.load(d_out_ptr + offsets, mask=mask, other=0.0)
                if D_BASE:
                    tl.store(d_base_ptr + offsets, dy.to(d_base_ptr.dtype.element_ty), mask=mask)
                d_out = tl.dot(dy, up, d_out, input_precision="ieee")
        else:
            d_out = tl.load(d_out_ptr + row.to(tl.int64)[:, None] * r + ch[None, :], mask=row_mask, other=0.0)
        d_spread = tl.dot(d_out, tl.trans(updated), input_precision="ieee")
        d_read = spread * (d_spread - tl.sum(d_spread * spread, axis=1)[:, None])
        d_q = tl.dot(d_read, scored, input_precision="ieee") * scale
        tl.store(d_q_ptr + row.to(tl.int64)[:, None] * d_q_stride + ch[None, :], d_q, mask=row_mask)
        d_updated += tl.dot(tl.trans(spread), d_out, input_precision="ieee")
        d_scored += tl.dot(tl.trans(d_read), q, input_precision="ieee")
    tl.store(part_du_ptr + (pid * MP + col[:, None]) * RP + ch[None, :], d_updated)
    tl.store(part_ds_ptr + (pid * MP + col[:, None]) * RP + ch[None, :], d_scored * scale)


@triton.jit
def _read_combine_kernel(part_ptr, d_updated_in_ptr, context_ptr, total_ptr, d_context_ptr,
                         minus_d_total_ptr, d_lat_ptr, programs, r, n_cols,
                         HAS_D_UPDATED: tl.constexpr, READ_UPDATED: tl.constexpr, RP: tl.constexpr,
                         MP: tl.constexpr, PB: tl.constexpr):
    col = tl.program_id(0)  # one program a latent column (padded ones too: the row pass reads their -dT)
    d_updated = _sum_column_parts(part_ptr, col, programs, RP, MP, PB)
    d_scored = _sum_column_parts(part_ptr + programs * MP * RP, col, programs, RP, MP, PB)
    if HAS_D_UPDATED:
        d_updated += _column(d_updated_in_ptr, col, r, n_cols, RP)
    if READ_UPDATED:
        d_updated += d_scored
        d_lat = d_updated
    else:
        d_lat = d_updated + d_scored
    # U = L + C / T: d(C/T) = dU / T, and -dT = sum_r (dU / T) (C / T)
    total = tl.load(total_ptr + col)
    d_context = d_updated / tl.where(total > 0, total, 1.0)
    tl.store(minus_d_total_ptr + col, tl.sum(d_context * _column(context_ptr, col, r, n_cols, RP), axis=0))
    _store_column(d_context_ptr, col, d_context, r, n_cols, RP)
    _store_column(d_lat_ptr, col, d_lat, r, n_cols, RP)


@triton.jit(do_not_specialize=["rows"])
def _context_backward_kernel(k_ptr, k_stride, v_ptr, v_stride, lat_ptr, batch_ptr, shift_ptr, d_context_ptr,
                             minus_d_total_ptr, d_q_ptr, d_q_stride, d_k_ptr, d_v_ptr, d_stride, part_ptr, wk_ptr,
                             wv_ptr, wq_ptr, d_h_ptr, rows, r, cols, n_cols, m, scale, tiles_per_program,
                             KEYS_READ: tl.constexpr, KEYS_ARE_VALUES: tl.constexpr, D_H: tl.constexpr,
                             RP: tl.constexpr, MP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """The keys' and values' gradients per row tile and the latents' partial sums per program. ``D_H``: also the
    gradient of ``h`` where the rows are ``h @ w^T`` (``_project``), ``d_rows @ w`` in float32, in ``d_h``'s
    dtype (the queries' gradient, where they are their own rows, read back from ``d_q``)."""
    pid = tl.program_id(0)
    col, ch = tl.arange(0, MP), tl.arange(0, RP)
    lat = _load_latents(lat_ptr, r, n_cols, RP, MP)
    d_context = _load_latents(d_context_ptr, r, n_cols, RP, MP)
    shift = tl.load(shift_ptr + col)
    minus_d_total = tl.load(minus_d_total_ptr + col)
    d_lat = tl.zeros((MP, RP), tl.float32)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        k, scores = _scores(k_ptr, k_stride, row, row_in, lat, batch_ptr, col // m, col < n_cols, r, scale, RP)
        v = tl.load(v_ptr + row.to(tl.int64)[:, None] * v_stride + ch[None, :], mask=row_mask, other=0.0)
        exp = tl.exp(scores - shift[None, :])  # E; 0 off the scene
        # C = E^T V, T = colsum E, E = exp(A - shift): dA = E * (V dC^T - dT)
        d_scores = exp * (tl.dot(v, tl.trans(d_context), input_precision="ieee") - minus_d_total[None, :])
        d_v = tl.dot(exp, d_context, input_precision="ieee")
        d_k = tl.dot(d_scores, lat, input_precision="ieee") * scale
        if KEYS_READ:
            d_k += tl.load(d_q_ptr + row.to(tl.int64)[:, None] * d_q_stride + ch[None, :], mask=row_mask, other=0.0)
        if KEYS_ARE_VALUES:
            d_k += d_v
        else:
            tl.store(d_v_ptr + row.to(tl.int64)[:, None] * d_stride + ch[None, :], d_v, mask=row_mask)
        tl.store(d_k_ptr + row.to(tl.int64)[:, None] * d_stride + ch[None, :], d_k, mask=row_mask)
        d_lat += tl.dot(tl.trans(d_scores), k, input_precision="ieee")
        if D_H:
            if not KEYS_READ:
                d_q = _load_rows(d_q_ptr, d_q_stride, row, row_mask, RP)
            for c0 in range(0, cols, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                d_h = tl.dot(d_k, _weight_chunk(wk_ptr, c, r, cols, RP), input_precision="ieee")
                if not KEYS_ARE_VALUES:
                    d_h = tl.dot(d_v, _weight_chunk(wv_ptr, c, r, cols, RP), d_h, input_precision="ieee")
                if not KEYS_READ:
                    d_h = tl.dot(d_q, _weight_chunk(wq_ptr, c, r, cols, RP), d_h, input_precision="ieee")
                tl.store(d_h_ptr + row.to(tl.int64)[:, None] * cols + c[None, :], d_h.to(d_h_ptr.dtype.element_ty),
                         mask=row_in[:, None] & (c < cols)[None, :])
    part_dl_ptr = part_ptr + 2 * tl.num_programs(0) * MP * RP  # the third of Plan.parts(.., RP, RP, RP)
    tl.store(part_dl_ptr + (pid * MP + col[:, None]) * RP + ch[None, :], d_lat * scale)


@triton.jit
def _latent_grad_kernel(part_ptr, d_lat_ptr, programs, r, n_cols, RP: tl.constexpr, MP: tl.constexpr,
                        PB: tl.constexpr):
    col = tl.program_id(0)
    part_dl = part_ptr + 2 * programs * MP * RP
    d_lat = _column(d_lat_ptr, col, r, n_cols, RP) + _sum_column_parts(part_dl, col, programs, RP, MP, PB)
    _store_column(d_lat_ptr, col, d_lat, r, n_cols, RP)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` where its rows are contiguous (a column slice of the projections is read in place)."""
    return t if t.stride(1) == 1 else t.contiguous()


class Plan:
    """Tile sizes and row-reduction programs for N points and M = B*m latent columns of rank r."""

    def __init__(self, rows: int, n_cols: int, r: int) -> None:
        self.rows, self.n_cols, self.r = rows, n_cols, r
        self.rp = max(16, next_power_of_2(r))  # tl.dot takes sides of at least 16
        self.mp = max(16, next_power_of_2(n_cols))
        tiles = max(1, cdiv(rows, BLOCK_ROWS))
        self.tiles_per_program = cdiv(tiles, PROGRAMS)
        self.programs = cdiv(tiles, self.tiles_per_program)
        self.read_grid = (tiles,)

    def parts(self, device: torch.device, *widths: int) -> torch.Tensor:
        """Per row program, a (programs, MP, width) partial for each of ``widths``, one after another in one
        allocation that the kernels take whole: each ``torch.empty`` is ~4 us of host time on an H100 host, and a
        view of a part ~2 more (a GEM step would make hundreds)."""
        return torch.empty(self.programs * self.mp * sum(widths), dtype=torch.float32, device=device)


def _views(buffer: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Contiguous tensors of ``shapes`` one after another in ``buffer``."""
    sizes = [math.prod(shape) for shape in shapes]
    return [part.view(shape) for part, shape in zip(buffer.split(sizes), shapes)]


def forward(k: torch.Tensor, v: torch.Tensor | None, q: torch.Tensor | None, lat: torch.Tensor, batch: torch.Tensor,
            m: int, scale: float, read_updated: bool, up: torch.Tensor | None = None,
            base: torch.Tensor | None = None, y: torch.Tensor | None = None,
            project: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, ...]:
    """``(out, updated, shift, total, context)`` for float32 ``k``, ``v``, ``q`` (N, r; column slices of the
    projections are read in place; None: the keys double as values / queries), latents ``lat`` (M, r), the
    points' scenes ``batch`` (N,) and m latents a scene. ``shift``, ``total`` (M,) and ``context`` (M, r)
    are what the backward reads. With the float32 up-projection ``up`` (C, r), the read-out kernel also writes
    ``y = base + out @ up^T`` (N, C; ``base`` contiguous or None, any float dtype; summed in float32) into
    ``y`` (contiguous, any float dtype). ``project``: ``(h, weights)``, ``h`` (N, C) contiguous of any float
    dtype and the projections' (r, C) weights of ``k``, ``v`` and ``q``, those given: the partials kernel writes
    ``k``, ``v``, ``q`` (then slices of one buffer to fill) as ``h @ w^T`` in float32 (no separate matmul)."""
    has_v, has_q = v is not None, q is not None
    k = _rows(k)
    v, q = (k if t is None else _rows(t) for t in (v, q))
    lat = lat.contiguous()
    rows, r = k.shape
    n_cols = lat.shape[0]
    plan = Plan(rows, n_cols, r)
    device = k.device
    parts = plan.parts(device, 1, 1, plan.rp)
    shift, total, context, updated = _views(torch.empty(2 * (plan.mp + lat.numel()), dtype=torch.float32,
                                                        device=device), [(plan.mp,)] * 2 + [lat.shape] * 2)
    meta = dict(RP=plan.rp, MP=plan.mp)
    h, wk, wv, wq = _projection(project, k, has_v, has_q)
    launch(_context_partials_kernel, (plan.programs,), k, k.stride(0), v, v.stride(0), q, q.stride(0), h,
           h.stride(0), wk, wv, wq, lat, batch, parts, rows, r, h.shape[1], n_cols, m, scale,
           plan.tiles_per_program, PROJECT=project is not None, HAS_V=has_v, HAS_Q=has_q, BLOCK=BLOCK_ROWS,
           BLOCK_C=_channel_block(h.shape[1]), **meta)
    launch(_context_combine_kernel, (plan.mp,), parts, lat, shift, total, context, updated, plan.programs, r, n_cols,
           PB=PARTS_BLOCK, **meta)
    out = torch.empty((rows, r), dtype=torch.float32, device=device)
    cols = 0 if up is None else up.shape[0]
    launch(_read_kernel, plan.read_grid, q, q.stride(0), updated if read_updated else lat, updated, batch, out,
           out if up is None else up, out if base is None else base, out if y is None else y, rows, r, n_cols, m,
           scale, cols, UP=up is not None, HAS_BASE=base is not None, BLOCK=BLOCK_ROWS, BLOCK_COLS=_channel_block(cols),
           **meta)
    return out, updated, shift, total, context


def _projection(project: tuple[torch.Tensor, list[torch.Tensor]] | None, k: torch.Tensor, has_v: bool,
                has_q: bool) -> tuple[torch.Tensor, ...]:
    """``(h, w_k, w_v, w_q)`` for the kernels from ``project`` (the keys' weight where ``v`` / ``q`` have none), or
    ``k`` for each where there is no projection (the kernels then read none of them)."""
    if project is None:
        return k, k, k, k
    h, weights = project
    weights = [w.contiguous() for w in weights]
    return h, weights[0], weights[1] if has_v else weights[0], weights[-1] if has_q else weights[0]


def _channel_block(cols: int) -> int:
    """The tile of C channels of the up-projection and of ``h`` (unused without them)."""
    return max(16, min(64, next_power_of_2(max(cols, 1))))


def backward(d_out: torch.Tensor, d_updated: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor | None,
             q: torch.Tensor | None, lat: torch.Tensor, batch: torch.Tensor, m: int, scale: float, read_updated: bool,
             updated: torch.Tensor, shift: torch.Tensor, total: torch.Tensor, context: torch.Tensor,
             up: torch.Tensor | None = None, project: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
             d_base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(d_rows, d_lat, d_h)`` of ``forward``: ``d_rows`` (N, P*r) holds the gradients of ``k`` and of ``v`` and
    ``q`` where given, side by side in that order (as a projection ``[k | v | q]`` that they are slices of);
    where ``v`` / ``q`` is None the keys doubled as them, and ``k``'s columns hold their gradient too.
    With ``up`` (C, r), ``d_out`` is the float32 gradient of ``y`` (N, C) instead of ``out``'s. With ``project``
    (``forward``'s), ``d_h`` is ``h``'s gradient in its dtype, else None. With ``up``, ``d_base`` (N, C),
    contiguous, if given, receives ``d_out`` in its own dtype."""
    k, v, q = (None if t is None else _rows(t) for t in (k, v, q))
    lat = lat.contiguous()
    rows, r = k.shape
    n_cols = lat.shape[0]
    plan = Plan(rows, n_cols, r)
    device, meta = k.device, dict(RP=plan.rp, MP=plan.mp)
    d_rows = torch.empty((rows, r * (1 + (v is not None) + (q is not None))), dtype=torch.float32, device=device)
    d_k = d_rows[:, :r]
    d_v = None if v is None else d_rows[:, r:2 * r]
    d_q = torch.empty((rows, r), dtype=torch.float32, device=device) if q is None else d_rows[:, -r:]
    queries = k if q is None else q
    parts = plan.parts(device, plan.rp, plan.rp, plan.rp)
    scored = updated if read_updated else lat
    cols = 0 if up is None else up.shape[0]
    launch(_read_backward_kernel, (plan.programs,), queries, queries.stride(0), scored, updated, batch,
           d_out.contiguous(), d_q if up is None else up, d_q, d_q.stride(0), parts,
           d_q if d_base is None else d_base, rows, r, n_cols, m, scale, plan.tiles_per_program, cols,
           UP=up is not None, D_BASE=d_base is not None, BLOCK=BLOCK_ROWS, BLOCK_COLS=_channel_block(cols), **meta)
    d_context, d_lat, minus_d_total = _views(torch.empty(2 * lat.numel() + plan.mp, dtype=torch.float32,
                                                         device=device), [lat.shape] * 2 + [(plan.mp,)])
    d_updated_in = d_updated.contiguous() if d_updated is not None else d_lat
    launch(_read_combine_kernel, (plan.mp,), parts, d_updated_in, context, total, d_context, minus_d_total,
           d_lat, plan.programs, r, n_cols, HAS_D_UPDATED=d_updated is not None, READ_UPDATED=read_updated,
           PB=PARTS_BLOCK, **meta)
    values = k if v is None else v
    h, wk, wv, wq = _projection(project, k, v is not None, q is not None)
    d_h = None if project is None else torch.empty(h.shape, dtype=h.dtype, device=device)
    launch(_context_backward_kernel, (plan.programs,), k, k.stride(0), values, values.stride(0), lat, batch,
           shift, d_context, minus_d_total, d_q, d_q.stride(0), d_k, d_k if d_v is None else d_v, d_rows.stride(0),
           parts, wk, wv, wq, d_k if d_h is None else d_h, rows, r, h.shape[1], n_cols, m, scale,
           plan.tiles_per_program, KEYS_READ=q is None, KEYS_ARE_VALUES=v is None, D_H=d_h is not None,
           BLOCK=BLOCK_ROWS, BLOCK_C=_channel_block(h.shape[1]), **meta)
    launch(_latent_grad_kernel, (plan.mp,), parts, d_lat, plan.programs, r, n_cols, PB=PARTS_BLOCK, **meta)
    return d_rows, d_lat, d_h
