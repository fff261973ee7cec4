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
equals the list's next entry. Only the N tail (the last key block) is masked. Tensors go through
descriptors as in sparse_attention.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import LOG2E, descriptor_pair, load_parts, qkv_descriptors, store_rows, tile_logits
from ._tuning import INTERPRET, Config, candidates, choose, device_key, split_head_dim
from .sparse_attention import _check_qkv, sparse_attention_ws, w0_argument, warp_specialized

if sparse_attention_ws is not None:     # Gluon imports cleanly: the warp-specialised capture too
    from . import capture_attention_ws


@triton.jit
def _dual_step(acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
               q_a, q_b, k_a, k_b, v_a, v_b, b, h, start_n, N, qk_scale,
               BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, MASK_N: tl.constexpr,
               UPCAST: tl.constexpr):
    qk = tile_logits(q_a, q_b, k_a, k_b, b, h, start_n, N, BN, DA, DB, MASK_N, UPCAST)
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    row_sum = tl.sum(p, 1)
    l_i = l_i * alpha + row_sum
    va, vb = load_parts(v_a, v_b, b, h, start_n, BN, DA, DB, UPCAST)
    p_v = p.to(va.dtype)
    acc_a = tl.dot(p_v, va, acc_a * alpha[:, None])
    if DB > 0:
        acc_b = tl.dot(p_v, vb, acc_b * alpha[:, None])
    if in_win:
        alpha_s = tl.math.exp2(m_s - m_new)
        l_s = l_s * alpha_s + row_sum
        sacc_a = tl.dot(p_v, va, sacc_a * alpha_s[:, None])
        if DB > 0:
            sacc_b = tl.dot(p_v, vb, sacc_b * alpha_s[:, None])
        m_s = m_new
    return acc_a, acc_b, l_i, m_new, sacc_a, sacc_b, l_s, m_s


@triton.jit
def _capture_attention_fwd(
    q_a, q_b, k_a, k_b, v_a, v_b, o_a, o_b, r_a, r_b,
    Counts, Indices, Order, Rho, W0, Lse, LseS,
    H, N, idx_stride, qk_scale,
    MB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
    EVEN_N: tl.constexpr, W0_MODE: tl.constexpr, WRITE_LSE: tl.constexpr, UPCAST: tl.constexpr,
    ORDERED: tl.constexpr,
):
    SPLIT: tl.constexpr = MB // BM
    SUB: tl.constexpr = MB // BN
    DBX: tl.constexpr = DB if DB > 0 else 16
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    if ORDERED:
        qb = tl.load(Order + pid_m // SPLIT)    # heavy (dense text) query blocks first
    else:
        qb = pid_m // SPLIT
    row0 = qb * MB + (pid_m % SPLIT) * BM
    offs_m = row0 + tl.arange(0, BM)

    qa, qb_ = load_parts(q_a, q_b, b, h, row0, BM, DA, DB, UPCAST)

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
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s = _dual_step(
                acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
                qa, qb_, k_a, k_b, v_a, v_b, b, h, j * MB + s * BN, N, qk_scale, BN, DA, DB, False, UPCAST)
        ptr += in_win.to(tl.int32)
        nxt = tl.load(row + tl.minimum(ptr, count - 1))
    if not EVEN_N:
        j = n_blocks - 1
        in_win = j == nxt
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s = _dual_step(
                acc_a, acc_b, l_i, m_i, sacc_a, sacc_b, l_s, m_s, in_win,
                qa, qb_, k_a, k_b, v_a, v_b, b, h, j * MB + s * BN, N, qk_scale, BN, DA, DB, True, UPCAST)

    # ---- epilogue: O, rho, R --------------------------------------------------------------------
    LN2: tl.constexpr = 0.6931471805599453
    o_a_ = acc_a / l_i[:, None]
    o_b_ = acc_b / l_i[:, None]
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
    store_rows(o_a, b, h, row0, 0, o_a_, BM, DA)
    if DB > 0:
        store_rows(o_b, b, h, row0, DA, o_b_, BM, DB)
    if W0_MODE == 2:                            # R <- O^S: the caller finishes with its own rule
        res_a = os_a
        res_b = os_b
    else:
        if W0_MODE == 0:
            w0 = rho
        else:
            w0 = tl.load(W0 + h) + tl.zeros([BM], dtype=tl.float32)
        res_a = o_a_ - w0[:, None] * os_a
        res_b = o_b_ - w0[:, None] * os_b
    store_rows(r_a, b, h, row0, 0, res_a, BM, DA)
    if DB > 0:
        store_rows(r_b, b, h, row0, DA, res_b, BM, DB)


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
    w0_mode, w0 = w0_argument(w0, heads, q.device)
    # optional preallocated outputs (tests poison them to catch unwritten elements)
    out = torch.empty_like(q) if out is None else out
    residual = torch.empty(q.shape, dtype=residual_dtype, device=q.device) if residual is None else residual
    rho = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device) if rho is None else rho
    if out.shape != q.shape or residual.shape != q.shape or rho.shape != (batch, heads, n) \
            or not rho.is_contiguous():
        raise ValueError("out/residual must be (B, H, N, D), rho contiguous (B, H, N)")
    lse = torch.empty_like(rho) if return_lse else None
    lse_s = torch.empty_like(rho) if return_lse else None
    da, db = split_head_dim(head_dim)
    pointers = (counts, indices, order, rho, w0, lse, lse_s,
                heads, n, indices.stride(0), head_dim ** -0.5 * LOG2E)

    def launch(config: Config):
        if config.warp_specialized:
            capture_attention_ws.launch(q, k, v, out, residual, rho, counts, indices, mask_block, w0_mode=w0_mode,
                                        w0=w0, lse=lse, lse_window=lse_s, stages=config.num_stages)
            return
        bm = config.block_m
        tensors = (*qkv_descriptors(q, k, v, bm, config.block_n, da, db),
                   *descriptor_pair(out, bm, da, db, output=True), *descriptor_pair(residual, bm, da, db, output=True))
        grid = (counts.shape[0] * (mask_block // config.block_m), batch * heads)
        _capture_attention_fwd[grid](
            *tensors, *pointers, MB=mask_block, BM=config.block_m, BN=config.block_n, DA=da, DB=db,
            EVEN_N=(n % mask_block == 0), W0_MODE=w0_mode, WRITE_LSE=return_lse, UPCAST=INTERPRET,
            ORDERED=order is not None, **config.launch_options())

    key = ("capture", device_key(q), q.dtype, head_dim, mask_block, n, batch * heads, w0_mode,
           return_lse, work_hint)
    cands = candidates(head_dim, mask_block, dense_loop=True,
                       warp_specialized=warp_specialized(q, mask_block, residual.dtype))
    config = choose(key, cands, launch)
    launch(config)
    if return_lse:
        return out, rho, residual, lse, lse_s
    return out, rho, residual
