"""Capture step in one pass: dense flash attention with a second accumulator for the window keys.

Each program owns BM query rows of one (batch, head) and walks *every* key block. Both softmaxes
are online (see _tiles.py); the window keys of a row are whole key blocks, so a window tile's
p = exp2(s - m) is the same tile for both sums and only its accumulation differs:

    full:   m, l, acc       over all key tiles
    window: m_s, l_s, acc_s over the tiles of the listed key blocks only, rescaled lazily
            (acc_s is touched only on window tiles: acc_s <- acc_s * exp2(m_s - m) + p v, m_s <- m)

At the end O = acc / l, O^S = acc_s / l_s, lse = (m + log2 l) ln 2, lse^S likewise, and

    rho = exp(lse^S - lse) = D^S / D        R = O - w0 O^S     (w0 = rho, or per head; fp32 here)

The window lists are ascending, so membership is a pointer walk: block j is in the window when it
equals the list's next entry. Only the N tail (the last key block) is masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import load_part_b, load_tile, store_tile, tile_logits
from ._tuning import INTERPRET, Config, candidates, choose, device_key, split_head_dim, wide_offsets
from .sparse_attention import _check_qkv


@triton.jit
def _dual_step(acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
               q_a, q_b, k_base, v_base, start_n, N, s_kn, s_kd, s_vn, s_vd, qk_scale,
               BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HEAD_DIM: tl.constexpr,
               MASK_N: tl.constexpr, UPCAST: tl.constexpr):
    qk = tile_logits(q_a, q_b, k_base, start_n, N, s_kn, s_kd, qk_scale,
                     BN, DA, DB, HEAD_DIM, MASK_N, UPCAST)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    row_sum = tl.sum(p, 1)
    l_i = l_i * alpha + row_sum
    offs_n = start_n + tl.arange(0, BN)
    v_a = load_tile(v_base, offs_n, s_vn, tl.arange(0, DA), s_vd, N, HEAD_DIM, MASK_N, DA > HEAD_DIM)
    if UPCAST:
        v_a = v_a.to(tl.float32)
    p_v = p.to(v_a.dtype)
    acc_a = tl.dot(p_v, v_a, acc_a * alpha[:, None])
    if DB > 0:
        v_b = load_tile(v_base, offs_n, s_vn, HEAD_DIM - DB + tl.arange(0, DB), s_vd, N, HEAD_DIM,
                        MASK_N, False)
        if UPCAST:
            v_b = v_b.to(tl.float32)
        acc_b = tl.dot(p_v, v_b, acc_b * alpha[:, None])
    if in_win:
        alpha_s = tl.math.exp2(m_s - m_new)
        l_s = l_s * alpha_s + row_sum
        sacc_a = tl.dot(p_v, v_a, sacc_a * alpha_s[:, None])
        if DB > 0:
            sacc_b = tl.dot(p_v, v_b, sacc_b * alpha_s[:, None])
        m_s = m_new
    return acc_a, acc_b, l_i, m_new, sacc_a, sacc_b, l_s, m_s


@triton.jit
def _capture_attention_fwd(
    Q, K, V, Out, Counts, Indices, Order, R, Rho, W0, Lse, LseS,
    s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_on, s_od, s_rb, s_rh, s_rn, s_rd,
    H, N, idx_stride, qk_scale,
    HEAD_DIM: tl.constexpr, MB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    DA: tl.constexpr, DB: tl.constexpr, DBX: tl.constexpr, EVEN_N: tl.constexpr,
    W0_MODE: tl.constexpr, WRITE_LSE: tl.constexpr, UPCAST: tl.constexpr, WIDE: tl.constexpr,
):
    SPLIT: tl.constexpr = MB // BM
    SUB: tl.constexpr = MB // BN
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    qb = tl.load(Order + pid_m // SPLIT)
    if WIDE:                                # row x stride can pass 2^31: 64-bit row offsets
        qb = qb.to(tl.int64)
    offs_m = qb * MB + (pid_m % SPLIT) * BM + tl.arange(0, BM)
    d_a = tl.arange(0, DA)
    d_b = HEAD_DIM - DBX + tl.arange(0, DBX)   # B part: the last DB columns (see _tiles.py)
    COL_MASK_B: tl.constexpr = DA + DB > HEAD_DIM
    PAD_A: tl.constexpr = DA > HEAD_DIM           # head dim padded to a power of two
    PAD_DIM: tl.constexpr = HEAD_DIM if DA > HEAD_DIM else 0

    q_base = Q + b * s_qb + h * s_qh
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    q_a = load_tile(q_base, offs_m, s_qn, d_a, s_qd, N, HEAD_DIM, True, PAD_A)
    if DB > 0:
        q_b = load_part_b(q_base, offs_m, s_qn, d_b, s_qd, N, DA)
    else:
        q_b = tl.zeros([BM, DBX], dtype=Q.dtype.element_ty)
    if UPCAST:
        q_a = q_a.to(tl.float32)
        q_b = q_b.to(tl.float32)

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc_a = tl.zeros([BM, DA], dtype=tl.float32)
    acc_b = tl.zeros([BM, DBX], dtype=tl.float32)
    m_s = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_s = tl.zeros([BM], dtype=tl.float32)
    sacc_a = tl.zeros([BM, DA], dtype=tl.float32)
    sacc_b = tl.zeros([BM, DBX], dtype=tl.float32)

    count = tl.load(Counts + qb)
    row = Indices + qb.to(tl.int64) * idx_stride
    n_blocks = tl.cdiv(N, MB)
    if EVEN_N:
        n_full = n_blocks
    else:
        n_full = n_blocks - 1
    ptr = 0
    nxt = tl.load(row)
    for j in range(0, n_full):
        in_win = j == nxt
        key0 = j * MB
        if WIDE:
            key0 = key0.to(tl.int64)
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s = _dual_step(
                acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
                q_a, q_b, k_base, v_base, key0 + s * BN, N, s_kn, s_kd, s_vn, s_vd, qk_scale,
                BN, DA, DB, HEAD_DIM, False, UPCAST)
        ptr += in_win.to(tl.int32)
        nxt = tl.load(row + tl.minimum(ptr, count - 1))
    if not EVEN_N:
        j = n_blocks - 1
        in_win = j == nxt
        key0 = j * MB
        if WIDE:
            key0 = key0.to(tl.int64)
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s = _dual_step(
                acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
                q_a, q_b, k_base, v_base, key0 + s * BN, N, s_kn, s_kd, s_vn, s_vd, qk_scale,
                BN, DA, DB, HEAD_DIM, True, UPCAST)

    # ---- epilogue: O, rho, R --------------------------------------------------------------------
    LN2: tl.constexpr = 0.6931471805599453
    o_a = acc_a / l_i[:, None]
    o_b = acc_b / l_i[:, None]
    os_a = sacc_a / l_s[:, None]
    os_b = sacc_b / l_s[:, None]
    lse = (m_i + tl.math.log2(l_i)) * LN2
    lse_s = (m_s + tl.math.log2(l_s)) * LN2
    rho = tl.minimum(tl.exp(lse_s - lse), 1.0)
    row_ok = offs_m < N
    stat_offs = pid_bh.to(tl.int64) * N + offs_m
    tl.store(Rho + stat_offs, rho, mask=row_ok)
    if WRITE_LSE:
        tl.store(Lse + stat_offs, lse, mask=row_ok)
        tl.store(LseS + stat_offs, lse_s, mask=row_ok)
    o_base = Out + b * s_ob + h * s_oh
    r_base = R + b * s_rb + h * s_rh
    store_tile(o_base, offs_m, s_on, d_a, s_od, N, 0, o_a, False, PAD_DIM)
    if DB > 0:
        store_tile(o_base, offs_m, s_on, d_b, s_od, N, DA, o_b, COL_MASK_B)
    if W0_MODE == 2:
        w0 = tl.zeros([BM], dtype=tl.float32)   # R <- O^S: caller finishes with its own rule
        r_a = os_a
        r_b = os_b
    else:
        if W0_MODE == 0:
            w0 = rho
        else:
            w0 = tl.load(W0 + h) + tl.zeros([BM], dtype=tl.float32)
        r_a = o_a - w0[:, None] * os_a
        r_b = o_b - w0[:, None] * os_b
    store_tile(r_base, offs_m, s_rn, d_a, s_rd, N, 0, r_a, False, PAD_DIM)
    if DB > 0:
        store_tile(r_base, offs_m, s_rn, d_b, s_rd, N, DA, r_b, COL_MASK_B)


def capture_attention(q, k, v, counts, indices, mask_block, *, residual_dtype=None, order=None,
                      w0=None, return_lse=False, work_hint: int = 0, out=None, rho=None, residual=None):
    """Dense attention plus Re-ttention stats in one kernel.

    Returns ``(out, rho, residual)`` (and ``(lse, lse_window)`` if ``return_lse``): out (B,H,N,D) in
    q's dtype and layout, rho (B,H,N) fp32, residual (B,H,N,D) contiguous in ``residual_dtype``.
    ``w0``: None (w0 = rho), an (H,) tensor (per-head weight) or ``"raw"`` (residual <- O^S).
    """
    _check_qkv(q, k, v, counts, indices, mask_block)
    batch, heads, n, head_dim = q.shape
    residual_dtype = residual_dtype or q.dtype
    w0_mode = 0
    if isinstance(w0, str):
        if w0 != "raw":
            raise ValueError(f"w0 must be None, an (H,) tensor or 'raw', got {w0!r}")
        w0_mode, w0 = 2, None
    elif w0 is not None:
        w0_mode, w0 = 1, w0.to(device=q.device, dtype=torch.float32).contiguous()
        if w0.shape != (heads,):
            raise ValueError(f"w0 must have shape ({heads},), got {tuple(w0.shape)}")
    if order is None:
        order = torch.arange(counts.shape[0], dtype=torch.int32, device=q.device)
    # optional preallocated outputs (tests poison them to catch unwritten elements)
    out = torch.empty_like(q) if out is None else out
    residual = torch.empty(q.shape, dtype=residual_dtype, device=q.device) if residual is None else residual
    rho = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device) if rho is None else rho
    if out.shape != q.shape or residual.shape != q.shape or rho.shape != (batch, heads, n) \
            or not rho.is_contiguous() or out.stride(-1) != 1 or residual.stride(-1) != 1:
        raise ValueError("out/residual must be (B, H, N, D) with unit stride along D, rho contiguous (B, H, N)")
    lse = torch.empty_like(rho) if return_lse else rho
    lse_s = torch.empty_like(rho) if return_lse else rho
    da, db = split_head_dim(head_dim, q.dtype)
    args = (q, k, v, out, counts, indices, order, residual, rho, w0 if w0 is not None else rho, lse, lse_s,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *residual.stride(),
            heads, n, indices.stride(0), head_dim ** -0.5 * 1.4426950408889634)

    def launch(config: Config):
        grid = (counts.shape[0] * (mask_block // config.block_m), batch * heads)
        _capture_attention_fwd[grid](
            *args, HEAD_DIM=head_dim, MB=mask_block, BM=config.block_m, BN=config.block_n,
            DA=da, DB=db, DBX=max(db, 16), EVEN_N=(n % mask_block == 0),
            W0_MODE=w0_mode, WRITE_LSE=return_lse, UPCAST=INTERPRET,
            WIDE=wide_offsets(n, mask_block, q, k, v, out, residual),
            num_warps=config.num_warps, num_stages=config.num_stages)

    key = ("capture", device_key(q), q.dtype, head_dim, mask_block, n, batch * heads, w0_mode,
           return_lse, work_hint)
    config = choose(key, candidates(head_dim, mask_block, dense_loop=True), launch)
    launch(config)
    if return_lse:
        return out, rho, residual, lse, lse_s
    return out, rho, residual
