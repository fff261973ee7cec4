"""Shared by the attention kernels (no kernel here): tensor descriptors, one online-softmax step, LOG2E.

Notation (per query row i, keys j of one tile):
    s_ij  = (q_i . k_j) * scale * log2(e)          logits in base-2 units, so exp2 replaces exp
    m_i   = running max of s_ij over the keys seen so far
    l_i   = sum_j exp2(s_ij - m_i)                  running softmax denominator
    acc_i = sum_j exp2(s_ij - m_i) v_j              running un-normalised output
A new tile with max m' = max(m_i, max_j s_ij) rescales the old terms by alpha = exp2(m_i - m'),
so at the end O_i = acc_i / l_i and lse_i = (m_i + log2 l_i) * ln 2 (natural log-sum-exp).

Head dims that are not a power of two are split in two power-of-two parts: A = columns [0, DA)
and B = columns [DA, DA + DB) (72 -> 64 + 16, 88 -> 64 + 32). The descriptors read the columns
past the head dim as zero, so q.k = q_a.k_a + q_b.k_b exactly and the B part's extra output
columns, outside the descriptor, are never stored.
"""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634     # qk_scale = D^-0.5 * log2(e), so that exp2 replaces exp


def tma_ready(t: torch.Tensor) -> bool:
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and all((s * size) % 16 == 0 for s in t.stride()[:-1])


def tma_view(t: torch.Tensor, output: bool = False) -> torch.Tensor:
    """``t`` as TMA reads it: a 16-byte aligned base and row strides, unit stride along D. An input
    that is not gets a contiguous copy, an output must be."""
    if tma_ready(t):
        return t
    if output:
        raise ValueError("outputs need a 16-byte aligned base and strides, unit stride along D")
    return t.contiguous()


def descriptor_pair(t: torch.Tensor | None, rows: int, da: int, db: int, output: bool = False):
    """Descriptors of [1, 1, rows, DA] and [1, 1, rows, DB] blocks over a (B, H, N, D) tensor (None
    for a missing tensor or a missing part B); see tma_view."""
    if t is None:
        return None, None
    t = tma_view(t, output)
    a = TensorDescriptor.from_tensor(t, [1, 1, rows, da])
    return a, (TensorDescriptor.from_tensor(t, [1, 1, rows, db]) if db else None)


def qkv_descriptors(q, k, v, block_m: int, block_n: int, da: int, db: int):
    """The six descriptors of q (BLOCK_M rows), k and v (BLOCK_N rows), parts A and B each."""
    return (*descriptor_pair(q, block_m, da, db), *descriptor_pair(k, block_n, da, db),
            *descriptor_pair(v, block_n, da, db))


@triton.jit
def tile_logits(q_a, q_b, k_a, k_b, b, h, start_n, N, BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
                MASK_N: tl.constexpr, UPCAST: tl.constexpr):
    """Raw logits q.k (BM x BN) of the key tile at ``start_n`` (scale them by qk_scale); keys at or
    past N get -inf."""
    ka = k_a.load([b, h, start_n, 0]).reshape(BN, DA)
    if UPCAST:   # the CPU interpreter computes bf16 dots wrongly: do them in fp32 there
        ka = ka.to(tl.float32)
    qk = tl.dot(q_a, ka.T)
    if DB > 0:
        kb = k_b.load([b, h, start_n, DA]).reshape(BN, DB)
        if UPCAST:
            kb = kb.to(tl.float32)
        qk = tl.dot(q_b, kb.T, qk)
    if MASK_N:
        qk = tl.where((start_n + tl.arange(0, BN))[None, :] < N, qk, float("-inf"))
    return qk


@triton.jit
def load_parts(desc_a, desc_b, b, h, row0, ROWS: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
               UPCAST: tl.constexpr):
    """Rows [row0, row0 + ROWS) of (batch b, head h) as the head dim's two parts (part B is part A
    again when DB is 0, unused then)."""
    va = desc_a.load([b, h, row0, 0]).reshape(ROWS, DA)
    if DB > 0:
        vb = desc_b.load([b, h, row0, DA]).reshape(ROWS, DB)
    else:
        vb = va
    if UPCAST:
        va = va.to(tl.float32)
        vb = vb.to(tl.float32)
    return va, vb


@triton.jit
def absorb_tile(acc_a, acc_b, l_i, m_i, qk, v_a, v_b, b, h, start_n, qk_scale,
                BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, UPCAST: tl.constexpr):
    """Fold one key tile's raw logits ``qk`` into the running terms: rescale them, add the tile's."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])          # one FMA per logit
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    va, vb = load_parts(v_a, v_b, b, h, start_n, BN, DA, DB, UPCAST)
    acc_a = tl.dot(p.to(va.dtype), va, acc_a * alpha[:, None])
    if DB > 0:
        acc_b = tl.dot(p.to(vb.dtype), vb, acc_b * alpha[:, None])
    return acc_a, acc_b, l_i, m_new


@triton.jit
def online_step(acc_a, acc_b, l_i, m_i, q_a, q_b, k_a, k_b, v_a, v_b, b, h, start_n, N, qk_scale,
                BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, MASK_N: tl.constexpr,
                UPCAST: tl.constexpr):
    """One key tile of the online softmax."""
    qk = tile_logits(q_a, q_b, k_a, k_b, b, h, start_n, N, BN, DA, DB, MASK_N, UPCAST)
    return absorb_tile(acc_a, acc_b, l_i, m_i, qk, v_a, v_b, b, h, start_n, qk_scale, BN, DA, DB, UPCAST)


@triton.jit
def load_rows(desc, b, h, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A (ROWS x COLS) fp32 tile of (batch b, head h) from row ``row0``, column ``col0``."""
    return desc.load([b, h, row0, col0]).reshape(ROWS, COLS).to(tl.float32)


@triton.jit
def gather_rows(ptr, b, h, row0, col0, N, D, s_b, s_h, s_n, s_d, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A (ROWS x COLS) tile of (batch b, head h) by pointer loads, zero past N and D, in its own dtype.
    Unlike a descriptor load it is waited on only where it is first used: issued early, its memory
    latency hides behind the work in between."""
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, COLS)
    ptrs = (ptr + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + rows.to(tl.int64)[:, None] * s_n
            + cols[None, :] * s_d)
    return tl.load(ptrs, mask=(rows[:, None] < N) & (cols[None, :] < D), other=0.0)


@triton.jit
def gather_parts(ptr, b, h, row0, N, D, s_b, s_h, s_n, s_d, ROWS: tl.constexpr, DA: tl.constexpr,
                 DB: tl.constexpr):
    """load_parts by pointer loads (see gather_rows), in the tensor's own dtype."""
    pa = gather_rows(ptr, b, h, row0, 0, N, D, s_b, s_h, s_n, s_d, ROWS, DA)
    if DB > 0:
        pb = gather_rows(ptr, b, h, row0, DA, N, D, s_b, s_h, s_n, s_d, ROWS, DB)
    else:
        pb = pa
    return pa, pb


@triton.jit
def store_rows(desc, b, h, row0, col0, value, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Store a (ROWS x COLS) tile; rows past N and columns past D lie outside the descriptor and
    are skipped."""
    desc.store([b, h, row0, col0], value.reshape(1, 1, ROWS, COLS).to(desc.dtype))
