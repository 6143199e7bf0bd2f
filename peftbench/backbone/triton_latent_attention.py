"""GEM's Context Adapter core (``latent_attention``) as seven Triton kernels: the forward's three here, the
backward's four in ``triton_latent_backward``, their tiles in ``triton_latent_tiles``; the host functions here.

The torch core launches ~13 kernels a forward and ~20 a backward, each over (N, B*m) score matrices; GEM's
step is bound by the host's launches (issue 12). Here the scores never leave registers: the softmax over a
scene's points is an online softmax over row tiles (running column max, sum and weighted values per program,
then one program a latent column combines them); the read-out is one pass over row tiles; the backward is a
pass over the rows for the read-out's gradients, a combine, a pass recomputing the affinity for the keys' and
values' gradients, and a last combine for the latents'. All products are float32 (``input_precision="ieee"``):
the Context Adapter's float32 contract.

Points are masked to their own scene's m latent columns by their scene index (no (N, B*m) bias), and a row tile
scores only the columns of the scenes its rows are in, a window of whole scenes at a time (``Plan``); the row
programs merge their partial sums a window at a time into their slice of the partials, whatever the rows' order.
Imported only where Triton is used (CUDA, or CPU tests with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from peftbench.backbone.triton_latent_backward import (_context_backward_kernel, _latent_grad_kernel,
                                                        _read_backward_kernel, _read_combine_kernel)
from peftbench.backbone.triton_latent_tiles import (_column, _load_cols, _load_rows, _masked_scores, _project,
                                                     _row_tile, _store_column, _store_rows, _tile_scenes, _up_rows,
                                                     _window, _window_softmax, _zero_parts)
from peftbench.backbone.triton_launch import cdiv, launch, next_power_of_2

BLOCK_ROWS = 64
PROGRAMS = 264  # row-reduction programs: two per H100 SM; each sums a contiguous run of row tiles
PARTS_BLOCK = 64  # the combines (one program a latent column) load this many programs' partial sums at once
# 1: the projections of h and h's gradient in the kernels (PROJECT_IN_KERNEL) as tf32x3 products, float32-level
# error on tensor cores (emulated: scripts/tf32x3_error.py); 0: ieee float32. H100, session 46, the sweep
# (context_kernel_sweep.py): the partials kernel 4.19 -> 1.19 ms, the kernels 12.6 -> 9.7 ms a training step, largest
# difference from float64 / largest output 5.1e-7 (ieee: 4.4e-7); a whole GEM step in turns 1.01 [0.99, 1.02]
PROJECT_TF32X3 = 1
# where the kernels project h: the channel tile of h a product takes and the kernel's warps (registers: a (64, 64)
# float32 tile of h beside three (64, 32) accumulators), for a sweep (scripts/context_kernel_sweep.py)
PROJECT_BLOCK_C = 64
PROJECT_WARPS = 4


@triton.jit(do_not_specialize=["rows", "n_cols", "tiles_per_program"])
def _context_partials_kernel(k_ptr, k_stride, v_ptr, v_stride, q_ptr, q_stride, h_ptr, h_stride, wk_ptr, wv_ptr,
                             wq_ptr, lat_ptr, batch_ptr, part_ptr, rows, r, cols, n_cols, m, scenes_per_window,
                             scale, tiles_per_program, PROJECT: tl.constexpr, HAS_V: tl.constexpr,
                             HAS_Q: tl.constexpr, RP: tl.constexpr, WP: tl.constexpr, BLOCK: tl.constexpr,
                             BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """The online softmax's partial sums per program. ``PROJECT``: the keys (and values and queries where
    ``HAS_V`` / ``HAS_Q``) are ``h @ w^T``, computed here and written to their rows for the read-out and the
    backward; else read from them (values: ``v_ptr``, the keys where they double as them). ``part_ptr``: the
    programs' column maxima, then sums, then weighted values (``Plan.parts``), merged a window of columns at a time
    (a row tile's scenes' columns only)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    part_max_ptr, part_sum_ptr, part_ctx_ptr = part_ptr, part_ptr + programs * n_cols, part_ptr + 2 * programs * n_cols
    ch = tl.arange(0, RP)
    for c0 in range(0, n_cols, WP):  # no rows yet: max -inf, sums 0
        col = c0 + tl.arange(0, WP)
        tl.store(part_max_ptr + pid * n_cols + col, tl.full((WP,), float("-inf"), tl.float32), mask=col < n_cols)
        tl.store(part_sum_ptr + pid * n_cols + col, tl.zeros((WP,), tl.float32), mask=col < n_cols)
    _zero_parts(part_ctx_ptr, pid, n_cols, RP, WP)
    for t in range(tiles_per_program):
        row, row_in, row_mask = _row_tile(pid * tiles_per_program + t, rows, r, RP, BLOCK)
        if PROJECT:
            k, v, q = _project(h_ptr, h_stride, wk_ptr, wv_ptr, wq_ptr, row, row_in, r, cols, HAS_V, HAS_Q, RP,
                               BLOCK, BLOCK_C, PRECISION)
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
        scene, first, last = _tile_scenes(batch_ptr, row, row_in)
        for s in range(first, last + 1, scenes_per_window):
            col, col_scene, col_in = _window(s, m, n_cols, scenes_per_window, WP)
            scores = _masked_scores(k, _load_cols(lat_ptr, col, col_in, r, RP), row_in, scene, col_scene, col_in,
                                    scale)
            tl.debug_barrier()  # the program's previous window may have stored these columns from other threads
            run_max = tl.load(part_max_ptr + pid * n_cols + col, mask=col_in, other=float("-inf"))
            new_max = tl.maximum(run_max, tl.max(scores, axis=0))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a column with no rows yet: nothing to shift
            alpha = tl.exp(run_max - shift)
            e = tl.exp(scores - shift[None, :])
            run_sum = tl.load(part_sum_ptr + pid * n_cols + col, mask=col_in, other=0.0) * alpha + tl.sum(e, axis=0)
            ctx_offsets = (pid * n_cols + col[:, None]) * RP + ch[None, :]
            acc = tl.load(part_ctx_ptr + ctx_offsets, mask=col_in[:, None], other=0.0) * alpha[:, None]
            acc += tl.dot(tl.trans(e), v, input_precision="ieee")
            tl.store(part_max_ptr + pid * n_cols + col, new_max, mask=col_in)
            tl.store(part_sum_ptr + pid * n_cols + col, run_sum, mask=col_in)
            tl.store(part_ctx_ptr + ctx_offsets, acc, mask=col_in[:, None])


@triton.jit(do_not_specialize=["programs", "n_cols"])
def _context_combine_kernel(part_ptr, lat_ptr, shift_ptr, total_ptr, context_ptr, updated_ptr, programs, r, n_cols,
                            RP: tl.constexpr, PB: tl.constexpr):
    part_max_ptr, part_sum_ptr, part_ctx_ptr = part_ptr, part_ptr + programs * n_cols, part_ptr + 2 * programs * n_cols
    col = tl.program_id(0)  # one program a latent column
    p, ch = tl.arange(0, PB), tl.arange(0, RP)
    top = tl.full((PB,), float("-inf"), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        top = tl.maximum(top, tl.load(part_max_ptr + part * n_cols + col, mask=part < programs,
                                      other=float("-inf")))
    top_all = tl.max(top, axis=0)
    shift = tl.where(top_all == float("-inf"), 0.0, top_all)
    total = tl.zeros((PB,), tl.float32)
    context = tl.zeros((PB, RP), tl.float32)
    for start in range(0, programs, PB):
        part = start + p
        part_in = part < programs
        weight = tl.exp(tl.load(part_max_ptr + part * n_cols + col, mask=part_in, other=float("-inf")) - shift)
        total += tl.load(part_sum_ptr + part * n_cols + col, mask=part_in, other=0.0) * weight
        context += tl.load(part_ctx_ptr + (part[:, None] * n_cols + col) * RP + ch[None, :], mask=part_in[:, None],
                           other=0.0) * weight[:, None]
    total_all = tl.sum(total, axis=0)
    # normalised after the sum, as the torch core: a sum of exps <= 1 keeps more bits than N weights of ~1/N
    context_all = tl.sum(context, axis=0) / tl.where(total_all > 0, total_all, 1.0)
    tl.store(shift_ptr + col, shift)
    tl.store(total_ptr + col, total_all)
    _store_column(context_ptr, col, context_all, r, n_cols, RP)
    _store_column(updated_ptr, col, _column(lat_ptr, col, r, n_cols, RP) + context_all, r, n_cols, RP)


@triton.jit(do_not_specialize=["rows", "n_cols"])
def _read_kernel(q_ptr, q_stride, scored_ptr, updated_ptr, batch_ptr, out_ptr, up_ptr, base_ptr, res_ptr, y_ptr,
                 rows, r, n_cols, m, scenes_per_window, scale, cols, UP: tl.constexpr, HAS_BASE: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, RP: tl.constexpr, WP: tl.constexpr, BLOCK: tl.constexpr,
                 BLOCK_COLS: tl.constexpr):
    row, row_in, row_mask = _row_tile(tl.program_id(0), rows, r, RP, BLOCK)
    q = _load_rows(q_ptr, q_stride, row, row_mask, RP)
    scene, first, last = _tile_scenes(batch_ptr, row, row_in)
    out = tl.zeros((BLOCK, RP), tl.float32)
    for s in range(first, last + 1, scenes_per_window):  # each row's scene is in one window
        col, col_scene, col_in = _window(s, m, n_cols, scenes_per_window, WP)
        in_window = row_in & (scene >= s) & (scene < s + scenes_per_window)
        scores = _masked_scores(q, _load_cols(scored_ptr, col, col_in, r, RP), in_window, scene, col_scene, col_in,
                                scale)
        out += tl.dot(_window_softmax(scores, in_window), _load_cols(updated_ptr, col, col_in, r, RP),
                      input_precision="ieee")
    ch = tl.arange(0, RP)
    tl.store(out_ptr + row.to(tl.int64)[:, None] * r + ch[None, :], out, mask=row_mask)
    if UP:  # y = (residual +) ((base +) out @ up^T), a tile of C columns at a time, summed in float32
        for c0 in range(0, cols, BLOCK_COLS):
            up, c, c_in = _up_rows(up_ptr, c0, r, cols, RP, BLOCK_COLS)
            offsets = row.to(tl.int64)[:, None] * cols + c[None, :]
            mask = row_in[:, None] & c_in[None, :]
            y = tl.dot(out, tl.trans(up), input_precision="ieee")
            if HAS_BASE:
                y += tl.load(base_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                y = tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + y
            tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` where its rows are contiguous (a column slice of the projections is read in place)."""
    return t if t.stride(1) == 1 else t.contiguous()


class Plan:
    """Tile sizes and row-reduction programs for N points and M = B*m latent columns of rank r."""

    def __init__(self, rows: int, n_cols: int, r: int, m: int) -> None:
        self.rows, self.n_cols, self.r = rows, n_cols, r
        self.rp = max(16, next_power_of_2(r))  # tl.dot takes sides of at least 16
        # a row tile scores its scenes' columns only, whole scenes a window: the work a point is the same for 3
        # scenes a pass or 24 (all B*m columns, masked, made GEM's 24-scene paper step 1.76x LoRA's, session 46),
        # and the kernels compile one variant whatever the scenes
        self.wp = max(16, next_power_of_2(m))
        self.scenes_per_window = self.wp // m
        tiles = max(1, cdiv(rows, BLOCK_ROWS))
        self.tiles_per_program = cdiv(tiles, PROGRAMS)
        self.programs = cdiv(tiles, self.tiles_per_program)
        self.read_grid = (tiles,)

    def parts(self, *widths: int) -> tuple[int]:
        """The shape of the row programs' partial sums: per program, an (M, width) partial for each of ``widths``,
        one after another, which the kernels take whole."""
        return (self.programs * self.n_cols * sum(widths),)


def _buffers(device: torch.device, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Contiguous float32 tensors of ``shapes``, one after another in one allocation, each at a 16-byte boundary
    (Triton specializes a pointer on it). A ``torch.empty`` is ~4 us of host time on an H100 host (session 27); four
    views of one by ``as_strided`` 4.9 us on a 2-core CPU, by a split and a view each 9.2 (a GEM step makes
    hundreds)."""
    starts, end = [], 0
    for shape in shapes:
        starts.append(end)
        end += -(-math.prod(shape) // 4) * 4
    buffer = torch.empty(end, dtype=torch.float32, device=device)
    views = []
    for shape, start in zip(shapes, starts):
        strides, stride = [], 1
        for size in reversed(shape):
            strides.append(stride)
            stride *= size
        views.append(buffer.as_strided(shape, strides[::-1], start))
    return views


def forward(k: torch.Tensor, v: torch.Tensor | None, q: torch.Tensor | None, lat: torch.Tensor, batch: torch.Tensor,
            m: int, scale: float, read_updated: bool, up: torch.Tensor | None = None,
            base: torch.Tensor | None = None, y: torch.Tensor | None = None,
            project: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
            residual: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(out, updated, shift, total, context)`` for float32 ``k``, ``v``, ``q`` (N, r; column slices of the
    projections are read in place; None: the keys double as values / queries), latents ``lat`` (M, r) or (B, m, r)
    (M = B*m), the points' scenes ``batch`` (N,) and m latents a scene; ``updated`` and ``context`` in ``lat``'s
    shape. ``shift``, ``total`` (M,) and ``context`` are what the backward reads. With the float32 up-projection
    ``up`` (C, r), the read-out kernel also writes ``y = base + out @ up^T`` (N, C; ``base`` contiguous or None, any
    float dtype; summed in float32) into ``y`` (contiguous, any float dtype), and with ``residual`` (as ``base``),
    ``residual + (that)``. ``project``:
    ``(h, weights)``, ``h`` (N, C) contiguous of any float dtype and the projections' (r, C) weights of ``k``, ``v``
    and ``q``, those given: the partials kernel writes ``k``, ``v``, ``q`` (then slices of one buffer to fill) as
    ``h @ w^T`` in float32 (no separate matmul)."""
    has_v, has_q = v is not None, q is not None
    k = _rows(k)
    v, q = (k if t is None else _rows(t) for t in (v, q))
    lat = lat.contiguous()
    rows, r = k.shape
    n_cols = lat.numel() // r
    plan = Plan(rows, n_cols, r, m)
    device = k.device
    # the updated latents apart: they go on to the next block, where the rest is dropped or kept for the backward
    out, parts, shift, total, context = _buffers(device, [(rows, r), plan.parts(1, 1, plan.rp), (n_cols,),
                                                          (n_cols,), lat.shape])
    updated = torch.empty(lat.shape, dtype=torch.float32, device=device)
    rows_meta = dict(RP=plan.rp, WP=plan.wp, BLOCK=BLOCK_ROWS)
    h, wk, wv, wq = _projection(project, k, has_v, has_q)
    launch(_context_partials_kernel, (plan.programs,), k, k.stride(0), v, v.stride(0), q, q.stride(0), h,
           h.stride(0), wk, wv, wq, lat, batch, parts, rows, r, h.shape[1], n_cols, m, plan.scenes_per_window, scale,
           plan.tiles_per_program, PROJECT=project is not None, HAS_V=has_v, HAS_Q=has_q,
           **_projection_options(project is not None, h.shape[1]), **rows_meta)
    launch(_context_combine_kernel, (n_cols,), parts, lat, shift, total, context, updated, plan.programs, r, n_cols,
           RP=plan.rp, PB=PARTS_BLOCK)
    cols = 0 if up is None else up.shape[0]
    launch(_read_kernel, plan.read_grid, q, q.stride(0), updated if read_updated else lat, updated, batch, out,
           out if up is None else up, out if base is None else base, out if residual is None else residual,
           out if y is None else y, rows, r, n_cols, m, plan.scenes_per_window, scale, cols, UP=up is not None,
           HAS_BASE=base is not None, HAS_RESIDUAL=residual is not None, BLOCK_COLS=_channel_block(cols),
           **rows_meta)
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


def _projection_options(projecting: bool, cols: int) -> dict:
    """``BLOCK_C``, ``PRECISION`` (``tl.dot``'s input precision: ``PROJECT_TF32X3``) and, ``projecting`` ``h`` of
    ``cols`` channels, ``num_warps`` (the ``PROJECT_*`` settings) for a kernel that may project ``h``."""
    if not projecting:  # the kernel reads no h: one variant whatever the settings
        return dict(BLOCK_C=_channel_block(cols), PRECISION="ieee")
    return dict(BLOCK_C=min(PROJECT_BLOCK_C, _channel_block(cols)), PRECISION="tf32x3" if PROJECT_TF32X3 else "ieee",
                num_warps=PROJECT_WARPS)


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
    n_cols = lat.numel() // r
    plan = Plan(rows, n_cols, r, m)
    device, rows_meta = k.device, dict(RP=plan.rp, WP=plan.wp, BLOCK=BLOCK_ROWS)
    # the latents' gradient apart: it goes on to the previous block, where the rest is dropped with this backward
    d_rows, parts, d_context, minus_d_total, *d_q = _buffers(
        device, [(rows, r * (1 + (v is not None) + (q is not None))), plan.parts(plan.rp, plan.rp, plan.rp),
                 lat.shape, (n_cols,)] + [(rows, r)] * (q is None))
    d_lat = torch.empty(lat.shape, dtype=torch.float32, device=device)
    d_k = d_rows[:, :r]
    d_v = None if v is None else d_rows[:, r:2 * r]
    d_q = d_q[0] if q is None else d_rows[:, -r:]
    queries = k if q is None else q
    scored = updated if read_updated else lat
    cols = 0 if up is None else up.shape[0]
    launch(_read_backward_kernel, (plan.programs,), queries, queries.stride(0), scored, updated, batch,
           d_out.contiguous(), d_q if up is None else up, d_q, d_q.stride(0), parts,
           d_q if d_base is None else d_base, rows, r, n_cols, m, plan.scenes_per_window, scale,
           plan.tiles_per_program, cols, UP=up is not None, D_BASE=d_base is not None,
           BLOCK_COLS=_channel_block(cols), **rows_meta)
    d_updated_in = d_updated.contiguous() if d_updated is not None else d_lat
    launch(_read_combine_kernel, (n_cols,), parts, d_updated_in, context, total, d_context, minus_d_total,
           d_lat, plan.programs, r, n_cols, HAS_D_UPDATED=d_updated is not None, READ_UPDATED=read_updated,
           RP=plan.rp, PB=PARTS_BLOCK)
    values = k if v is None else v
    h, wk, wv, wq = _projection(project, k, v is not None, q is not None)
    d_h = None if project is None else torch.empty(h.shape, dtype=h.dtype, device=device)
    launch(_context_backward_kernel, (plan.programs,), k, k.stride(0), values, values.stride(0), lat, batch,
           shift, d_context, minus_d_total, d_q, d_q.stride(0), d_k, d_k if d_v is None else d_v, d_rows.stride(0),
           parts, wk, wv, wq, d_k if d_h is None else d_h, rows, r, h.shape[1], n_cols, m, plan.scenes_per_window,
           scale, plan.tiles_per_program, KEYS_READ=q is None, KEYS_ARE_VALUES=v is None, D_H=d_h is not None,
           **_projection_options(d_h is not None, h.shape[1]), **rows_meta)
    launch(_latent_grad_kernel, (n_cols,), parts, d_lat, plan.programs, r, n_cols, RP=plan.rp, PB=PARTS_BLOCK)
    return d_rows, d_lat, d_h
