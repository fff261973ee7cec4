"""Warp-specialised block-sparse attention for Hopper (Gluon): the sparse step at head dims 64-128.

The same contract as the Triton kernel's plain and sparse-step epilogues (``sparse_attention.py``):

    O^S_i = softmax over the keys of row i's listed key blocks,   out_i = w_i O^S_i + R_i.

What differs is how the work is laid out on an SM. The Triton kernel runs one instruction stream
per program, so a program's q load, its key loop and its R load / out store follow each other, and
the SM only overlaps them across programs. Here each program is persistent and split into
partitions (warp groups) that run side by side, talking through mbarriers:

    loader   (1 warp):  TMA loads of q, of the key and value tiles of each block list (a ring of
                        STAGES buffers) and of R, running ahead into the next work item;
    consumer (2 x 4 warps, 64 query rows each): S = q k^T and O += P v on the tensor cores (wgmma),
                        the online softmax in between, and the epilogue out = w O/l + R, stored by
                        TMA from a buffer of its own.

A consumer copies q (and, in the epilogue, R) from shared memory to registers and hands the buffer
straight back, so the loader fetches the next item's q and R while this item computes. With one key
tile per row (the 1024^2 shapes) an item is short, and these loads no longer wait for it to end.

While one consumer runs its softmax (special-function unit) the other's wgmma keeps the tensor
cores busy, and the loader has the next tiles (and the next item's q) in flight: the overlap that
FlashAttention-3 gets by warp specialisation, which Triton's own pipeliner does not do on Hopper.

The pieces that the capture kernel (``capture_attention_ws.py``) uses too, the barriers' notation
with them, are in ``_ws_parts.py``: work items, loader steps, q hand-off, key-tile step, buffers.

Work items are (query tile of MB rows, batch*head), dealt to the programs round-robin: head by head
when all rows have equal work (neighbouring query tiles of one head run together and share key
tiles in L2), heaviest query blocks first across all heads when text rows make some heavier.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from ._tiles import LOG2E
from ._tuning import split_head_dim
from ._ws_parts import (HALF, MAX_REGISTERS, ROWS_PER_CONSUMER, attend_tile, descriptor, load_halves, load_kv,
                        mma_layout, padded_head_dim, shared_buffers, take_q, work_item)

@gluon.jit
def _load_partition(q_smem, k_smem, v_smem, r_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready, r_empty,
                    q_desc, k_desc, v_desc, r_desc, Counts, Indices, Order, H, n_qb, n_items, idx_stride,
                    MB: gl.constexpr, STAGES: gl.constexpr, HAS_RES: gl.constexpr, ORDERED: gl.constexpr):
    tile = 0
    n = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        qb, b, h, count, row = work_item(item, n_qb, n_items // n_qb, H, Order, Counts, Indices, idx_stride, ORDERED)
        phase = n & 1
        load_halves(q_desc, q_smem, q_ready, q_empty, b, h, qb * MB, phase)
        for t in range(count):
            tile = load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, gl.load(row + t) * MB, tile,
                           STAGES)
            # R once the first ring's worth of key tiles is on its way: it is needed last, and its
            # buffer frees only when the consumers have read the previous item's R.
            if HAS_RES and t == gl.minimum(count, STAGES) - 1:
                load_halves(r_desc, r_smem, r_ready, r_empty, b, h, qb * MB, phase)
        if HAS_RES and count == 0:
            load_halves(r_desc, r_smem, r_ready, r_empty, b, h, qb * MB, phase)
        n += 1


@gluon.jit
def _consumer_partition(q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready,
                        r_empty, o_desc, Counts, Indices, Order, W, Lse, s_wb, s_wh, s_wn, H, N, n_qb, n_items,
                        idx_stride, qk_scale, MB: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                        EVEN_N: gl.constexpr, HAS_RES: gl.constexpr, WRITE_LSE: gl.constexpr, ORDERED: gl.constexpr,
                        half: gl.constexpr):
    dtype: gl.constexpr = o_desc.dtype
    s_layout: gl.constexpr = mma_layout(MB)     # S = q k^T is HALF x MB, O is HALF x D
    o_layout: gl.constexpr = mma_layout(D)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    r_buf = r_smem.index(half).reshape([HALF, D])
    o_buf = o_smem.index(half).reshape([HALF, D])
    tile = 0
    n = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        qb, b, h, count, row = work_item(item, n_qb, n_items // n_qb, H, Order, Counts, Indices, idx_stride, ORDERED)
        row0 = qb * MB + half * HALF
        phase = n & 1

        if HAS_RES:     # w now: its memory latency hides behind the key loop
            rows = row0 + gl.arange(0, HALF, o_rows)
            w = gl.load(W + b.to(gl.int64) * s_wb + h * s_wh + rows * s_wn, mask=rows < N, other=0.0)
        q = take_q(q_smem, q_ready, q_empty, half, phase, MB, D)
        m_i = gl.full([HALF], float("-inf"), gl.float32, s_rows)
        l_i = gl.zeros([HALF], gl.float32, s_rows)
        acc = gl.zeros([HALF, D], gl.float32, o_layout)
        for t in range(count):
            m_i, l_i, acc = attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, gl.load(row + t) * MB, m_i, l_i,
                                        acc, N, qk_scale, s_layout, o_layout, MB, D, STAGES, EVEN_N)
            tile += 1

        # ---- epilogue: out = w O/l + R ----------------------------------------------------------------
        out = acc * gl.expand_dims(gl.convert_layout(1.0 / l_i, o_rows), 1)
        if WRITE_LSE:
            lse_rows = row0 + gl.arange(0, HALF, s_rows)
            lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
            gl.store(Lse + (b * H + h).to(gl.int64) * N + lse_rows, lse, mask=lse_rows < N)
        if HAS_RES:     # R to registers, its buffer back to the loader for the next item's R
            mbarrier.wait(r_ready.index(half), phase)
            residual = r_buf.load(o_layout)
            gl.thread_barrier()
            mbarrier.arrive(r_empty.index(half), count=1)
            out = gl.expand_dims(w.to(gl.float32), 1) * out + residual.to(gl.float32)
        # Stored by TMA from a buffer of its own (stores straight from the MMA layout write 16-byte
        # pieces: 1.2-1.6x slower at 1024^2); the previous item's store has had this item's time to
        # leave it. TMA drops the rows past N and the padding columns past the head dim.
        tma.store_wait(0)
        o_buf.store(out.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, row0, 0], o_smem.index(half))
        n += 1
    tma.store_wait(0)


@gluon.jit
def _sparse_attention_ws(q_desc, k_desc, v_desc, o_desc, r_desc, Counts, Indices, Order, W, Lse,
                         s_wb, s_wh, s_wn, H, N, n_qb, n_items, idx_stride, qk_scale,
                         MB: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, EVEN_N: gl.constexpr,
                         HAS_RES: gl.constexpr, WRITE_LSE: gl.constexpr, ORDERED: gl.constexpr):
    q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, r_ready, r_empty, kv_ready, kv_empty = \
        shared_buffers(q_desc, k_desc, v_desc, o_desc, r_desc, STAGES)
    gl.warp_specialize([
        (_consumer_partition, (q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready,
                               r_empty, o_desc, Counts, Indices, Order, W, Lse, s_wb, s_wh, s_wn, H, N, n_qb,
                               n_items, idx_stride, qk_scale, MB, D, STAGES, EVEN_N, HAS_RES, WRITE_LSE, ORDERED,
                               0)),
        (_consumer_partition, (q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready,
                               r_empty, o_desc, Counts, Indices, Order, W, Lse, s_wb, s_wh, s_wn, H, N, n_qb,
                               n_items, idx_stride, qk_scale, MB, D, STAGES, EVEN_N, HAS_RES, WRITE_LSE, ORDERED,
                               1)),
        (_load_partition, (q_smem, k_smem, v_smem, r_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready, r_empty,
                           q_desc, k_desc, v_desc, r_desc, Counts, Indices, Order, H, n_qb, n_items, idx_stride, MB,
                           STAGES, HAS_RES, ORDERED)),
    ], [4, 1], [240, 24])


# The head dim's two parts (split_head_dim) that the Gluon kernels are built and measured for, in one
# tile of padded_head_dim columns: 64, 64 + 16 (72, 80), 64 + 32 (88, 96) and 128.
HEAD_DIM_PARTS = ((64, 0), (64, 16), (64, 32), (128, 0))


def supported(q: torch.Tensor, mask_block: int) -> bool:
    """Hopper (sm_90), 128-token mask blocks, fp16/bf16, and a head dim of HEAD_DIM_PARTS whose rows
    are whole 16-byte units (TMA's strides; a contiguous copy cannot fix them)."""
    head_dim = q.shape[-1]
    return (q.is_cuda and torch.cuda.get_device_capability(q.device) == (9, 0)
            and split_head_dim(head_dim) in HEAD_DIM_PARTS and head_dim * q.element_size() % 16 == 0
            and mask_block == 128 and q.dtype in (torch.float16, torch.bfloat16))


def launch(q, k, v, out, counts, indices, mask_block, *, order=None, weight=None, residual=None, lse=None,
           stages: int = 2):
    """Fill ``out`` (and ``lse``) as the Triton kernel's plain (no ``weight``) or sparse-step epilogue
    would, on inputs as that kernel's launcher has checked them (R of q's dtype; see ``supported``).
    ``stages``: key/value tiles in flight."""
    batch, heads, n, head_dim = q.shape
    n_qb = counts.shape[0]
    n_items = n_qb * batch * heads
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    has_res = residual is not None
    rows = ROWS_PER_CONSUMER
    _sparse_attention_ws[(min(sms, n_items), )](
        descriptor(q, rows), descriptor(k, mask_block), descriptor(v, mask_block), descriptor(out, rows, True),
        descriptor(residual if has_res else out, rows), counts, indices, order, weight, lse,
        *(weight.stride() if has_res else (0, 0, 0)), heads, n, n_qb, n_items, indices.stride(0),
        head_dim ** -0.5 * LOG2E,
        MB=mask_block, D=padded_head_dim(head_dim), STAGES=stages,
        EVEN_N=(n % mask_block == 0), HAS_RES=has_res, WRITE_LSE=lse is not None, ORDERED=order is not None,
        num_warps=4, maxnreg=MAX_REGISTERS)
