"""Capture step in one pass, warp-specialised for Hopper (Gluon): dense attention, rho and R.

The partitions are laid out as the sparse kernel's (``sparse_attention_ws.py``) and built from the
same pieces (``_ws_parts.py``: work items, loader steps, q hand-off, key-tile step, buffers); what
differs is the order in which a work item walks its key tiles, and the epilogue. Each query tile
walks *every* key block, its window blocks first:

    window tiles (the block list):  m, l, acc over the window keys only. At the last one,
                                    O^S = acc / l goes to the out buffer (q's dtype) and
                                    (m_S, l_S) = (m, l) are kept;
    the other key blocks, ascending: the same online softmax carries on to all keys: O = acc / l.

So one accumulator serves both softmaxes (the window's is the full one stopped early), and the
window costs nothing beyond dense attention. The epilogue, per row (base-2 logs, see _tiles.py):

    rho = exp2(m_S + log2 l_S - m - log2 l) = D^S / D        R = O - w0 O^S    (W0_MODE as in
                                                                                sparse_attention.py)

out and R are stored by TMA from their buffers, rho (fp32) directly. Block lists are ascending and
non-empty, as ``SparseMask`` builds them; membership in the second walk is a pointer walk.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma

from ._tiles import LOG2E
from ._ws_parts import (HALF, MAX_REGISTERS, ROWS_PER_CONSUMER, attend_tile, descriptor, load_halves, load_kv,
                        mma_layout, padded_head_dim, shared_buffers, take_q, work_item)


@gluon.jit
def _next_in_window(j, ptr, nxt, row, count):
    """Is key block ``j`` in the ascending list ``row[:count]``? Called for j = 0, 1, ... in turn;
    (ptr, nxt) is the walk's position: the list entry not yet passed, and its value."""
    in_window = j == nxt
    ptr += in_window.to(gl.int32)
    return in_window, ptr, gl.load(row + gl.minimum(ptr, count - 1))


@gluon.jit
def _capture_load_partition(q_smem, k_smem, v_smem, q_ready, q_empty, kv_ready, kv_empty, q_desc, k_desc, v_desc,
                            Counts, Indices, H, n_qb, n_items, idx_stride, MB: gl.constexpr, STAGES: gl.constexpr):
    tile = 0
    n = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        qb, b, h, count, row = work_item(item, n_qb, n_items // n_qb, H, Counts, Counts, Indices, idx_stride, False)
        load_halves(q_desc, q_smem, q_ready, q_empty, b, h, qb * MB, n & 1)
        for t in range(count):
            tile = load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, gl.load(row + t) * MB, tile,
                           STAGES)
        ptr = 0
        nxt = gl.load(row)
        for j in range(n_qb):
            in_window, ptr, nxt = _next_in_window(j, ptr, nxt, row, count)
            if not in_window:
                tile = load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, j * MB, tile, STAGES)
        n += 1


@gluon.jit
def _capture_consumer_partition(q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty,
                                o_desc, r_desc, Counts, Indices, Rho, W0, Lse, LseS, H, N, n_qb, n_items,
                                idx_stride, qk_scale, MB: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                                EVEN_N: gl.constexpr, W0_MODE: gl.constexpr, WRITE_LSE: gl.constexpr,
                                half: gl.constexpr):
    dtype: gl.constexpr = o_desc.dtype
    s_layout: gl.constexpr = mma_layout(MB)
    o_layout: gl.constexpr = mma_layout(D)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    r_buf = r_smem.index(half).reshape([HALF, D])
    o_buf = o_smem.index(half).reshape([HALF, D])
    tile = 0
    n = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        qb, b, h, count, row = work_item(item, n_qb, n_items // n_qb, H, Counts, Counts, Indices, idx_stride, False)
        row0 = qb * MB + half * HALF
        q = take_q(q_smem, q_ready, q_empty, half, n & 1, MB, D)
        m_i = gl.full([HALF], float("-inf"), gl.float32, s_rows)
        l_i = gl.zeros([HALF], gl.float32, s_rows)
        acc = gl.zeros([HALF, D], gl.float32, o_layout)
        for t in range(count):
            m_i, l_i, acc = attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, gl.load(row + t) * MB, m_i, l_i,
                                        acc, N, qk_scale, s_layout, o_layout, MB, D, STAGES, EVEN_N)
            tile += 1
        # the window's softmax ends here: O^S to the out buffer, its running max and sum kept. Of the
        # previous item's two stores (out, then R) only the first must have left by now.
        tma.store_wait(1)
        o_buf.store((acc * gl.expand_dims(gl.convert_layout(1.0 / l_i, o_rows), 1)).to(dtype))
        m_s = m_i
        l_s = l_i
        ptr = 0
        nxt = gl.load(row)
        for j in range(n_qb):
            in_window, ptr, nxt = _next_in_window(j, ptr, nxt, row, count)
            if not in_window:
                m_i, l_i, acc = attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, j * MB, m_i, l_i, acc, N,
                                            qk_scale, s_layout, o_layout, MB, D, STAGES, EVEN_N)
                tile += 1

        # ---- epilogue: O, rho, R ---------------------------------------------------------------------
        rows = row0 + gl.arange(0, HALF, s_rows)
        stat = (b * H + h).to(gl.int64) * N + rows          # (B, H, N) contiguous stats
        lse = m_i + gl.log2(l_i)                            # base 2
        lse_s = m_s + gl.log2(l_s)
        rho = gl.minimum(gl.exp2(lse_s - lse), 1.0)
        gl.store(Rho + stat, rho, mask=rows < N)
        if WRITE_LSE:
            gl.store(Lse + stat, lse * 0.6931471805599453, mask=rows < N)
            gl.store(LseS + stat, lse_s * 0.6931471805599453, mask=rows < N)
        out = acc * gl.expand_dims(gl.convert_layout(1.0 / l_i, o_rows), 1)
        window = o_buf.load(o_layout).to(gl.float32)
        if W0_MODE == 2:        # R <- O^S: the caller finishes with its own rule
            residual = window
        else:
            if W0_MODE == 0:
                w0 = gl.convert_layout(rho, o_rows)
            else:
                w0 = gl.full([HALF], 0.0, gl.float32, o_rows) + gl.load(W0 + h)
            residual = out - gl.expand_dims(w0, 1) * window
        tma.store_wait(0)
        r_buf.store(residual.to(dtype))
        o_buf.store(out.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, row0, 0], o_smem.index(half))
        tma.async_copy_shared_to_global(r_desc, [b, h, row0, 0], r_smem.index(half))
        n += 1
    tma.store_wait(0)


@gluon.jit
def _capture_attention_ws(q_desc, k_desc, v_desc, o_desc, r_desc, Counts, Indices, Rho, W0, Lse, LseS,
                          H, N, n_qb, n_items, idx_stride, qk_scale, MB: gl.constexpr, D: gl.constexpr,
                          STAGES: gl.constexpr, EVEN_N: gl.constexpr, W0_MODE: gl.constexpr,
                          WRITE_LSE: gl.constexpr):
    q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, _, _, kv_ready, kv_empty = \
        shared_buffers(q_desc, k_desc, v_desc, o_desc, r_desc, STAGES)
    gl.warp_specialize([
        (_capture_consumer_partition, (q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty,
                                       o_desc, r_desc, Counts, Indices, Rho, W0, Lse, LseS, H, N, n_qb, n_items,
                                       idx_stride, qk_scale, MB, D, STAGES, EVEN_N, W0_MODE, WRITE_LSE, 0)),
        (_capture_consumer_partition, (q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty,
                                       o_desc, r_desc, Counts, Indices, Rho, W0, Lse, LseS, H, N, n_qb, n_items,
                                       idx_stride, qk_scale, MB, D, STAGES, EVEN_N, W0_MODE, WRITE_LSE, 1)),
        (_capture_load_partition, (q_smem, k_smem, v_smem, q_ready, q_empty, kv_ready, kv_empty, q_desc, k_desc,
                                   v_desc, Counts, Indices, H, n_qb, n_items, idx_stride, MB, STAGES)),
    ], [4, 1], [240, 24])


def launch(q, k, v, out, residual, rho, counts, indices, mask_block, *, w0_mode=0, w0=None, lse=None, lse_window=None,
           stages: int = 2):
    """Fill ``out``, ``rho`` and ``residual`` (and the natural-log ``lse`` and ``lse_window``) as the
    Triton capture kernel would, on inputs as its launcher has checked them (R of q's dtype; see
    ``sparse_attention_ws.supported``). ``stages``: key/value tiles in flight."""
    batch, heads, n, head_dim = q.shape
    n_qb = counts.shape[0]
    n_items = n_qb * batch * heads
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    rows = ROWS_PER_CONSUMER
    _capture_attention_ws[(min(sms, n_items), )](
        descriptor(q, rows), descriptor(k, mask_block), descriptor(v, mask_block), descriptor(out, rows, True),
        descriptor(residual, rows, True), counts, indices, rho, w0, lse, lse_window,
        heads, n, n_qb, n_items, indices.stride(0), head_dim ** -0.5 * LOG2E,
        MB=mask_block, D=padded_head_dim(head_dim), STAGES=stages, EVEN_N=(n % mask_block == 0), W0_MODE=w0_mode,
        WRITE_LSE=lse is not None, num_warps=4, maxnreg=MAX_REGISTERS)
