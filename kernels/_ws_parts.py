"""Shared by the warp-specialised Gluon kernels (no kernel here): the order of work items, the loader's
TMA steps, the consumers' q hand-off and key-tile step, one program's shared buffers, descriptors.

Notation (one persistent program; its partitions are in sparse_attention_ws.py and capture_attention_ws.py):
    item    = (query tile of MB rows, batch*head); a program takes every num_programs-th one
    half    = a consumer warp group (0 or 1) and its HALF = 64 rows of the query tile
    MB, D   = the mask block (one key tile = one key block of MB rows) and the padded head dim
    ready   = mbarriers that complete when a TMA load lands (expect-tx)
    empty   = mbarriers that complete when the consumers are done with a buffer
Phases follow one counter per ring, identical in all partitions: q and R buffers by work item (n & 1),
key/value stages by key tile (stage tile % STAGES, phase (tile // STAGES) & 1). The online softmax
is _tiles.py's, in base 2: S = q k^T, m' = max(m, max_j S * qk_scale), P = exp2(S * qk_scale - m'),
l and acc rescaled by alpha = exp2(m - m').
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._tiles import tma_view

ROWS_PER_CONSUMER = 64     # query rows per consumer warp group (one wgmma M of 4 warps)
HALF = gl.constexpr(ROWS_PER_CONSUMER)
MAX_REGISTERS = 168        # 12 warps (4 + 4 consumers, the loader's warp group) x 168 = the SM's 64K


@gluon.constexpr_function
def mma_layout(n):
    """The wgmma accumulator layout of a HALF x n tile over the 4 warps of a consumer (16 rows each)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])


def padded_head_dim(head_dim: int) -> int:
    """The head dim rounded up to a power of two (Gluon tiles are): tiles read the columns past it as
    zero (TMA fills out-of-bounds with zeros), so q.k is exact, and the output's extra columns are not
    stored. 72-96 -> 128 costs tensor-core work but no memory traffic (the 1024^2 shapes are memory-bound)."""
    return max(16, triton.next_power_of_2(head_dim))


def descriptor(t: torch.Tensor, rows: int, output: bool = False) -> TensorDescriptor:
    """A TMA descriptor of [1, 1, rows, padded_head_dim] blocks over a (B, H, N, D) tensor (see tma_view)."""
    t = tma_view(t, output)
    gl_dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    block = [1, 1, rows, padded_head_dim(t.shape[-1])]
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gl_dtype))


@gluon.jit
def work_item(item, n_qb, n_bh, H, Order, Counts, Indices, idx_stride, ORDERED: gl.constexpr):
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
def load_halves(desc, smem, ready, empty, b, h, row0, phase):
    """Loader: the work item's q or R tile, a buffer per consumer half, once the consumers have taken
    the previous item's from it."""
    for half in gl.static_range(2):
        mbarrier.wait(empty.index(half), phase ^ 1)
        mbarrier.expect(ready.index(half), desc.block_type.nbytes)
        tma.async_copy_global_to_shared(desc, [b, h, row0 + half * HALF, 0], ready.index(half), smem.index(half))


@gluon.jit
def load_kv(k_desc, v_desc, k_smem, v_smem, kv_ready, kv_empty, b, h, start, tile, STAGES: gl.constexpr):
    """Loader: the key and value tile at key row ``start`` into the ring's next stage."""
    stage = tile % STAGES
    mbarrier.wait(kv_empty.index(stage), ((tile // STAGES) & 1) ^ 1)
    mbarrier.expect(kv_ready.index(stage), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [b, h, start, 0], kv_ready.index(stage), k_smem.index(stage))
    tma.async_copy_global_to_shared(v_desc, [b, h, start, 0], kv_ready.index(stage), v_smem.index(stage))
    return tile + 1


@gluon.jit
def take_q(q_smem, q_ready, q_empty, half: gl.constexpr, phase, MB: gl.constexpr, D: gl.constexpr):
    """Consumer: q to registers (the A operand of S = q k^T, HALF x MB) and its buffer straight back,
    so that the loader fetches the next item's q while this item computes."""
    mbarrier.wait(q_ready.index(half), phase)
    layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout(MB), k_width=2)
    q = q_smem.index(half).reshape([HALF, D]).load(layout)
    gl.thread_barrier()     # all four warps have read the buffer before it is handed back
    mbarrier.arrive(q_empty.index(half), count=1)
    return q


@gluon.jit
def attend_tile(q, k_smem, v_smem, kv_ready, kv_empty, tile, start, m_i, l_i, acc, N, qk_scale,
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
def shared_buffers(q_desc, k_desc, v_desc, o_desc, r_desc, STAGES: gl.constexpr):
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
