"""The backward kernels of GEM's Context Adapter core (``triton_latent_attention``, which launches them): a pass over
the rows for the read-out's gradients, a combine, a pass recomputing the affinity for the keys' and values' (and
``h``'s) gradients, and a last combine for the latents'."""

from __future__ import annotations

import triton
import triton.language as tl

from peftbench.backbone.triton_latent_tiles import (_add_parts, _column, _load_cols, _load_rows, _masked_scores,
                                                     _row_tile, _store_column, _sum_column_parts, _tile_scenes,
                                                     _up_rows, _weight_chunk, _window, _window_softmax, _zero_parts)


@triton.jit(do_not_specialize=["rows", "n_cols", "tiles_per_program"])
def _read_backward_kernel(q_ptr, q_stride, scored_ptr, updated_ptr, batch_ptr, d_out_ptr, up_ptr, d_q_ptr,
                          d_q_stride, part_ptr, d_base_ptr, rows, r, n_cols, m, scenes_per_window, scale,
                          tiles_per_program, cols, UP: tl.constexpr, D_BASE: tl.constexpr, RP: tl.constexpr,
                          WP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """The read-out's backward per row tile, the latents' partial sums per program. ``D_BASE`` (with ``UP``): also
    ``y``'s gradient, which is ``base``'s, written in ``d_base``'s dtype as it is read (no cast kernel).
    ``part_ptr``: the programs' partial sums for ``Plan.parts(.., RP, RP, RP)``'s first two."""
    pid = tl.program_id(0)
    part_du_ptr, part_ds_ptr = part_ptr, part_ptr + tl.num_programs(0) * n_cols * RP
    ch = tl.arange(0, RP)
    _zero_parts(part_du_ptr, pid, n_cols, RP, WP)
    _zero_parts(part_ds_ptr, pid, n_cols, RP, WP)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        q = _load_rows(q_ptr, q_stride, row, row_mask, RP)
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
        scene, first, last = _tile_scenes(batch_ptr, row, row_in)
        d_q = tl.zeros((BLOCK, RP), tl.float32)
        for s in range(first, last + 1, scenes_per_window):  # each row's scene is in one window
            col, col_scene, col_in = _window(s, m, n_cols, scenes_per_window, WP)
            in_window = row_in & (scene >= s) & (scene < s + scenes_per_window)
            scored = _load_cols(scored_ptr, col, col_in, r, RP)
            spread = _window_softmax(_masked_scores(q, scored, in_window, scene, col_scene, col_in, scale), in_window)
            d_spread = tl.dot(d_out, tl.trans(_load_cols(updated_ptr, col, col_in, r, RP)), input_precision="ieee")
            d_read = spread * (d_spread - tl.sum(d_spread * spread, axis=1)[:, None])
            d_q += tl.dot(d_read, scored, input_precision="ieee") * scale
            _add_parts(part_du_ptr, pid, n_cols, col, col_in, tl.dot(tl.trans(spread), d_out, input_precision="ieee"),
                       RP)
            _add_parts(part_ds_ptr, pid, n_cols, col, col_in,
                       tl.dot(tl.trans(d_read), q, input_precision="ieee") * scale, RP)
        tl.store(d_q_ptr + row.to(tl.int64)[:, None] * d_q_stride + ch[None, :], d_q, mask=row_mask)


@triton.jit(do_not_specialize=["programs", "n_cols"])
def _read_combine_kernel(part_ptr, d_updated_in_ptr, context_ptr, total_ptr, d_context_ptr,
                         minus_d_total_ptr, d_lat_ptr, programs, r, n_cols,
                         HAS_D_UPDATED: tl.constexpr, READ_UPDATED: tl.constexpr, RP: tl.constexpr,
                         PB: tl.constexpr):
    col = tl.program_id(0)  # one program a latent column
    d_updated = _sum_column_parts(part_ptr, col, programs, n_cols, RP, PB)
    d_scored = _sum_column_parts(part_ptr + programs * n_cols * RP, col, programs, n_cols, RP, PB)
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


@triton.jit(do_not_specialize=["rows", "n_cols", "tiles_per_program"])
def _context_backward_kernel(k_ptr, k_stride, v_ptr, v_stride, lat_ptr, batch_ptr, shift_ptr, d_context_ptr,
                             minus_d_total_ptr, d_q_ptr, d_q_stride, d_k_ptr, d_v_ptr, d_stride, part_ptr, wk_ptr,
                             wv_ptr, wq_ptr, d_h_ptr, rows, r, cols, n_cols, m, scenes_per_window, scale,
                             tiles_per_program, KEYS_READ: tl.constexpr, KEYS_ARE_VALUES: tl.constexpr,
                             D_H: tl.constexpr, RP: tl.constexpr, WP: tl.constexpr, BLOCK: tl.constexpr,
                             BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """The keys' and values' gradients per row tile and the latents' partial sums per program. ``D_H``: also the
    gradient of ``h`` where the rows are ``h @ w^T`` (``_project``), ``d_rows @ w`` in float32 (``PRECISION``), in
    ``d_h``'s dtype (the queries' gradient, where they are their own rows, read back from ``d_q``)."""
    pid = tl.program_id(0)
    ch = tl.arange(0, RP)
    part_dl_ptr = part_ptr + 2 * tl.num_programs(0) * n_cols * RP  # the third of Plan.parts(.., RP, RP, RP)
    _zero_parts(part_dl_ptr, pid, n_cols, RP, WP)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        k = _load_rows(k_ptr, k_stride, row, row_mask, RP)
        v = tl.load(v_ptr + row.to(tl.int64)[:, None] * v_stride + ch[None, :], mask=row_mask, other=0.0)
        scene, first, last = _tile_scenes(batch_ptr, row, row_in)
        d_k = tl.zeros((BLOCK, RP), tl.float32)
        d_v = tl.zeros((BLOCK, RP), tl.float32)
        for s in range(first, last + 1, scenes_per_window):
            col, col_scene, col_in = _window(s, m, n_cols, scenes_per_window, WP)
            lat = _load_cols(lat_ptr, col, col_in, r, RP)
            d_context = _load_cols(d_context_ptr, col, col_in, r, RP)
            scores = _masked_scores(k, lat, row_in, scene, col_scene, col_in, scale)
            exp = tl.exp(scores - tl.load(shift_ptr + col, mask=col_in, other=0.0)[None, :])  # E; 0 off the scene
            # C = E^T V, T = colsum E, E = exp(A - shift): dA = E * (V dC^T - dT)
            minus_d_total = tl.load(minus_d_total_ptr + col, mask=col_in, other=0.0)
            d_scores = exp * (tl.dot(v, tl.trans(d_context), input_precision="ieee") - minus_d_total[None, :])
            d_v += tl.dot(exp, d_context, input_precision="ieee")
            d_k += tl.dot(d_scores, lat, input_precision="ieee") * scale
            _add_parts(part_dl_ptr, pid, n_cols, col, col_in,
                       tl.dot(tl.trans(d_scores), k, input_precision="ieee") * scale, RP)
        if KEYS_READ:
            d_k += tl.load(d_q_ptr + row.to(tl.int64)[:, None] * d_q_stride + ch[None, :], mask=row_mask, other=0.0)
        if KEYS_ARE_VALUES:
            d_k += d_v
        else:
            tl.store(d_v_ptr + row.to(tl.int64)[:, None] * d_stride + ch[None, :], d_v, mask=row_mask)
        tl.store(d_k_ptr + row.to(tl.int64)[:, None] * d_stride + ch[None, :], d_k, mask=row_mask)
        if D_H:
            if not KEYS_READ:
                d_q = _load_rows(d_q_ptr, d_q_stride, row, row_mask, RP)
            for c0 in range(0, cols, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                d_h = tl.dot(d_k, _weight_chunk(wk_ptr, c, r, cols, RP), input_precision=PRECISION)
                if not KEYS_ARE_VALUES:
                    d_h = tl.dot(d_v, _weight_chunk(wv_ptr, c, r, cols, RP), d_h, input_precision=PRECISION)
                if not KEYS_READ:
                    d_h = tl.dot(d_q, _weight_chunk(wq_ptr, c, r, cols, RP), d_h, input_precision=PRECISION)
                tl.store(d_h_ptr + row.to(tl.int64)[:, None] * cols + c[None, :], d_h.to(d_h_ptr.dtype.element_ty),
                         mask=row_in[:, None] & (c < cols)[None, :])


@triton.jit(do_not_specialize=["programs", "n_cols"])
def _latent_grad_kernel(part_ptr, d_lat_ptr, programs, r, n_cols, RP: tl.constexpr, PB: tl.constexpr):
    col = tl.program_id(0)
    part_dl = part_ptr + 2 * programs * n_cols * RP
    d_lat = _column(d_lat_ptr, col, r, n_cols, RP) + _sum_column_parts(part_dl, col, programs, n_cols, RP, PB)
    _store_column(d_lat_ptr, col, d_lat, r, n_cols, RP)
