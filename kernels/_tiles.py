"""Device helpers shared by the attention kernels (no kernel here): tile loads and one online-softmax step.

Notation (per query row i, keys j of one tile):
    s_ij  = (q_i . k_j) * scale * log2(e)          logits in base-2 units, so exp2 replaces exp
    m_i   = running max of s_ij over the keys seen so far
    l_i   = sum_j exp2(s_ij - m_i)                  running softmax denominator
    acc_i = sum_j exp2(s_ij - m_i) v_j              running un-normalised output
A new tile with max m' = max(m_i, max_j s_ij) rescales the old terms by alpha = exp2(m_i - m'),
so at the end O_i = acc_i / l_i and lse_i = (m_i + log2 l_i) * ln 2 (natural log-sum-exp).

Head dims that are not a power of two are split in two power-of-two parts: A = columns [0, DA) and
B = columns [HEAD_DIM - DB, HEAD_DIM) (72 -> 64 + 16 overlapping by 8, 80 -> 64 + 16, 88 -> 64 + 32).
The B part of q is zeroed on the overlap, so q.k = q_a.k_a + q_b.k_b exactly, and K/V tiles are
always read in bounds without column masks; the output's B accumulator is stored only past DA.
"""
import triton
import triton.language as tl


@triton.jit
def load_tile(base, rows, stride_row, cols, stride_col, n_rows, n_cols,
              ROW_MASK: tl.constexpr, COL_MASK: tl.constexpr):
    """A (rows x cols) tile at ``base`` read through strides; masked rows/cols read as zero."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :] * stride_col
    if ROW_MASK or COL_MASK:
        x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def load_part_b(base, rows, stride_row, cols, stride_col, n_rows, first_col):
    """The B part of a q tile: columns below ``first_col`` (already in the A part) read as zero."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :] * stride_col
    return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] >= first_col), other=0.0)


@triton.jit
def store_tile(base, rows, stride_row, cols, stride_col, n_rows, first_col, value,
               COL_MASK: tl.constexpr, HEAD_DIM: tl.constexpr = 0):
    """Store rows < n_rows; with COL_MASK only columns >= first_col (the B part past the A part);
    with HEAD_DIM > 0 only columns < HEAD_DIM (a padded A part)."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :] * stride_col
    value = value.to(base.dtype.element_ty)
    if HEAD_DIM > 0:
        tl.store(ptrs, value, mask=(rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM))
    elif COL_MASK:
        tl.store(ptrs, value, mask=(rows[:, None] < n_rows) & (cols[None, :] >= first_col))
    else:
        tl.store(ptrs, value, mask=rows[:, None] < n_rows)


@triton.jit
def tile_logits(q_a, q_b, k_base, start_n, N, stride_kn, stride_kd, qk_scale,
                BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HEAD_DIM: tl.constexpr,
                MASK_N: tl.constexpr, UPCAST: tl.constexpr):
    """Raw logits q.k (BM x BN) of one key tile (scale them by qk_scale); keys at or past N get -inf."""
    offs_n = start_n + tl.arange(0, BN)
    k_a = load_tile(k_base, offs_n, stride_kn, tl.arange(0, DA), stride_kd, N, HEAD_DIM, MASK_N, DA > HEAD_DIM)
    if UPCAST:   # the CPU interpreter computes bf16 dots wrongly: do them in fp32 there
        k_a = k_a.to(tl.float32)
    qk = tl.dot(q_a, tl.trans(k_a))
    if DB > 0:
        k_b = load_tile(k_base, offs_n, stride_kn, HEAD_DIM - DB + tl.arange(0, DB), stride_kd, N, HEAD_DIM,
                        MASK_N, False)
        if UPCAST:
            k_b = k_b.to(tl.float32)
        qk += tl.dot(q_b, tl.trans(k_b))
    if MASK_N:
        qk = tl.where(offs_n[None, :] < N, qk, float("-inf"))
    return qk


@triton.jit
def online_step(acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, start_n, N,
                stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, DBX: tl.constexpr,
                HEAD_DIM: tl.constexpr, MASK_N: tl.constexpr, UPCAST: tl.constexpr):
    """One key tile of the online softmax: rescale the running terms, add the tile's."""
    qk = tile_logits(q_a, q_b, k_base, start_n, N, stride_kn, stride_kd, qk_scale,
                     BN, DA, DB, HEAD_DIM, MASK_N, UPCAST)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])          # one FMA per logit
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    offs_n = start_n + tl.arange(0, BN)
    v_a = load_tile(v_base, offs_n, stride_vn, tl.arange(0, DA), stride_vd, N, HEAD_DIM, MASK_N, DA > HEAD_DIM)
    if UPCAST:
        v_a = v_a.to(tl.float32)
    acc_a = tl.dot(p.to(v_a.dtype), v_a, acc_a * alpha[:, None])
    if DB > 0:
        v_b = load_tile(v_base, offs_n, stride_vn, HEAD_DIM - DB + tl.arange(0, DB), stride_vd, N, HEAD_DIM,
                        MASK_N, False)
        if UPCAST:
            v_b = v_b.to(tl.float32)
        acc_b = tl.dot(p.to(v_b.dtype), v_b, acc_b * alpha[:, None])
    return acc_a, acc_b, l_i, m_new
