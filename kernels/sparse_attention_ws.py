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

Barriers: ``ready`` barriers complete when a TMA load lands (expect-tx), ``empty`` barriers when the
consumers are done with a buffer. Phases follow one counter per ring, identical in all partitions:
q and R buffers by work item, key/value stages by key tile (one tile = one mask block).

Work items are (query tile of MB rows, batch*head), dealt to the programs round-robin: head by head
when all rows have equal work (neighbouring query tiles of one head run together and share key
tiles in L2), heaviest query blocks first across all heads when text rows make some heavier.
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._tiles import tma_view

ROWS_PER_CONSUMER = 64     # query rows per consumer warp group (one wgmma M of 4 warps)
HALF = gl.constexpr(ROWS_PER_CONSUMER)


@gluon.constexpr_function
def mma_layout(n):
    """The wgmma accumulator layout of a HALF x n tile over the 4 warps of a consumer (16 rows each)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


@gluon.jit
def _item(item, n_qb, n_bh, H, Order, Counts, Indices, idx_stride, ORDERED: gl.constexpr):
    """(query block, b, h, key-block count, key-block list) of work item ``item``.

    Rows of equal work: query blocks vary fastest, so the items running at one time are neighbours
    in one head and share key tiles in L2. With an ``Order`` (dense text rows first): heads vary
    fastest and the heavy query blocks of every head come first, so that the static round-robin over
    programs deals them out evenly."""
    if ORDERED:
        qb = gl.load(Order + item // n_bh)
        bh = item % n_bh
    else:
        qb = item % n_qb
        bh = item // n_qb
    return qb, bh // H, bh % H, gl.load(Counts + qb), Indices + qb.to(gl.int64) * idx_stride


@gluon.jit
def _load_halves(desc, smem, ready, empty, b, h, row0, phase):
    """Loader: the work item's q or R tile, a buffer per consumer half, once the consumers have taken
    the previous item's from it."""
    for half in gl.static_range(2):
        mbarrier.wait(empty.index(half), phase ^ 1)
        mbarrier.expect(ready.index(half), desc.block_type.nbytes)
        tma.async_copy_global_to_shared(desc, [b, h, row0 + half * HALF, 0], ready.index(half), smem.index(half))


@gluon.jit
def _load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, start, tile, STAGES: gl.constexpr):
    """Loader: the key and value tile at key row ``start`` into the ring's next stage."""
    stage = tile % STAGES
    mbarrier.wait(kv_empty.index(stage), ((tile // STAGES) & 1) ^ 1)
    mbarrier.expect(kv_ready.index(stage), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [b, h, start, 0], kv_ready.index(stage), k_smem.index(stage))
    tma.async_copy_global_to_shared(v_desc, [b, h, start, 0], kv_ready.index(stage), v_smem.index(stage))
    return tile + 1


@gluon.jit
def _load_partition(q_smem, k_smem, v_smem, r_smem, q_ready, q_empty, kv_ready, kv_empty, r_ready, r_empty,
                    q_desc, k_desc, v_desc, r_desc, Counts, Indices, Order, H, n_qb, n_items, idx_stride,
                    MB: gl.constexpr, STAGES: gl.constexpr, HAS_RES: gl.constexpr, ORDERED: gl.constexpr):
    tile = 0
    n = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        qb, b, h, count, row = _item(item, n_qb, n_items // n_qb, H, Order, Counts, Indices, idx_stride, ORDERED)
        phase = n & 1
        _load_halves(q_desc, q_smem, q_ready, q_empty, b, h, qb * MB, phase)
        for t in range(count):
            tile = _load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, gl.load(row + t) * MB, tile,
                            STAGES)
            # R once the first ring's worth of key tiles is on its way: it is needed last, and its
            # buffer frees only when the consumers have read the previous item's R.
            if HAS_RES and t == gl.minimum(count, STAGES) - 1:
                _load_halves(r_desc, r_smem, r_ready, r_empty, b, h, qb * MB, phase)
        if HAS_RES and count == 0:
            _load_halves(r_desc, r_smem, r_ready, r_empty, b, h, qb * MB, phase)
        n += 1


@gluon.jit
def _take_q(q_smem, q_ready, q_empty, half: gl.constexpr, phase, MB: gl.constexpr, D: gl.constexpr):
    """Consumer: q to registers (the A operand of S = q k^T, HALF x MB) and its buffer straight back,
    so that the loader fetches the next item's q while this item computes."""
    mbarrier.wait(q_ready.index(half), phase)
    layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout(MB), k_width=2)
    q = q_smem.index(half).reshape([HALF, D]).load(layout)
    gl.thread_barrier()     # all four warps have read the buffer before it is handed back
    mbarrier.arrive(q_empty.index(half), count=1)
    return q


@gluon.jit
def _attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, start, m_i, l_i, acc, N, qk_scale,
                 s_layout: gl.constexpr, o_layout: gl.constexpr, MB: gl.constexpr, D: gl.constexpr,
                 STAGES: gl.constexpr, EVEN_N: gl.constexpr):
    """Consumer: one key tile (key rows ``start`` + [0, MB), in the ring's next stage) into the
    online softmax (m_i, l_i, acc), in base 2 (see _tiles.py). Returns the running terms."""
    stage = tile % STAGES
    mbarrier.wait(kv_ready.index(stage), (tile // STAGES) & 1)
    k_buf = k_smem.index(stage).reshape([MB, D])
    v_buf = v_smem.index(stage).reshape([MB, D])
    qk = warpgroup_mma(q, k_buf.permute((1, 0)), gl.zeros([HALF, MB], gl.float32, s_layout),
                       use_acc=False, is_async=True)
    qk = warpgroup_mma_wait(0, deps=(qk, ))
    if not EVEN_N:      # only the sequence's last key block is ragged: keys past N get -inf
        cols = start + gl.arange(0, MB, gl.SliceLayout(0, s_layout))
        qk = gl.where(gl.expand_dims(cols < N, 0), qk, float("-inf"))
    # rescale the running terms by alpha = exp2(m_old - m_new); P (bf16/fp16) is the A operand of
    # O += P v, from registers in the dot-operand layout of O's MMA
    m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
    p = gl.exp2(qk * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    acc = warpgroup_mma(gl.convert_layout(p.to(v_buf.dtype), p_layout), v_buf, acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(kv_empty.index(stage), count=1)
    return m_new, l_i, acc


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
        qb, b, h, count, row = _item(item, n_qb, n_items // n_qb, H, Order, Counts, Indices, idx_stride, ORDERED)
        row0 = qb * MB + half * HALF
        phase = n & 1

        if HAS_RES:     # w now: its memory latency hides behind the key loop
            rows = row0 + gl.arange(0, HALF, o_rows)
            w = gl.load(W + b.to(gl.int64) * s_wb + h * s_wh + rows * s_wn, mask=rows < N, other=0.0)
        q = _take_q(q_smem, q_ready, q_empty, half, phase, MB, D)
        m_i = gl.full([HALF], float("-inf"), gl.float32, s_rows)
        l_i = gl.zeros([HALF], gl.float32, s_rows)
        acc = gl.zeros([HALF, D], gl.float32, o_layout)
        for t in range(count):
            m_i, l_i, acc = _attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, gl.load(row + t) * MB, m_i, l_i,
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
def _shared_buffers(q_desc, k_desc, v_desc, o_desc, r_desc, STAGES: gl.constexpr):
    """Shared memory of one program: q, R and out buffers (one per consumer half), the key/value
    ring, and their barriers (initialised). q 32 KB, the ring 128 KB, R and out 32 KB each at
    head dim 128: 224 KB of the H100/H200's 227."""
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    r_smem = gl.allocate_shared_memory(dtype, [2] + r_desc.block_type.shape, r_desc.layout)
    o_smem = gl.allocate_shared_memory(dtype, [2] + o_desc.block_type.shape, o_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    r_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    r_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    kv_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
        mbarrier.init(r_ready.index(i), count=1)
        mbarrier.init(r_empty.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)        # both consumers release a key/value stage
    return q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, r_ready, r_empty, kv_ready, kv_empty


@gluon.jit
def _sparse_attention_ws(q_desc, k_desc, v_desc, o_desc, r_desc, Counts, Indices, Order, W, Lse,
                         s_wb, s_wh, s_wn, H, N, n_qb, n_items, idx_stride, qk_scale,
                         MB: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, EVEN_N: gl.constexpr,
                         HAS_RES: gl.constexpr, WRITE_LSE: gl.constexpr, ORDERED: gl.constexpr):
    q_smem, k_smem, v_smem, r_smem, o_smem, q_ready, q_empty, r_ready, r_empty, kv_ready, kv_empty = \
        _shared_buffers(q_desc, k_desc, v_desc, o_desc, r_desc, STAGES)
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


MAX_REGISTERS = 168     # 12 warps (4 + 4 consumers, the loader's warp group) x 168 = the SM's 64K
HEAD_DIMS = (64, 72, 80, 88, 96, 128)


def padded_head_dim(head_dim: int) -> int:
    """The head dim rounded up to a power of two (Gluon tiles are): tiles read the columns past it as
    zero (TMA fills out-of-bounds with zeros), so q.k is exact, and the output's extra columns are not
    stored. 72-96 -> 128 costs tensor-core work but no memory traffic (the 1024^2 shapes are memory-bound)."""
    return max(16, triton.next_power_of_2(head_dim))


def supported(q: torch.Tensor, mask_block: int) -> bool:
    """Hopper (sm_90), the pack's head dims, 128-token mask blocks, fp16/bf16."""
    return (q.is_cuda and torch.cuda.get_device_capability(q.device) == (9, 0) and q.shape[-1] in HEAD_DIMS
            and mask_block == 128 and q.dtype in (torch.float16, torch.bfloat16))


def _descriptor(t: torch.Tensor, rows: int, output: bool = False) -> TensorDescriptor:
    t = tma_view(t, output)
    gl_dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    block = [1, 1, rows, padded_head_dim(t.shape[-1])]
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gl_dtype))


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
        _descriptor(q, rows), _descriptor(k, mask_block), _descriptor(v, mask_block), _descriptor(out, rows, True),
        _descriptor(residual if has_res else out, rows), counts, indices, order, weight, lse,
        *(weight.stride() if has_res else (0, 0, 0)), heads, n, n_qb, n_items, indices.stride(0),
        head_dim ** -0.5 * 1.4426950408889634,
        MB=mask_block, D=padded_head_dim(head_dim), STAGES=stages,
        EVEN_N=(n % mask_block == 0), HAS_RES=has_res, WRITE_LSE=lse is not None, ORDERED=order is not None,
        num_warps=4, maxnreg=MAX_REGISTERS)
