"""Block-sparse flash-attention forward with the Re-ttention reshape fused into the epilogue.

Each program owns BM query rows of one (batch, head) and walks the key blocks that its mask
block lists (``indices[qb, :counts[qb]]``, ascending, MB tokens each, visited in BN-token tiles).
Online softmax in fp32 (see _tiles.py) gives the window output and its log-sum-exp:

    O^S_i = acc_i / l_i,     lse^S_i = (m_i + log2 l_i) ln 2.

Epilogues (MODE):
    0  plain:    out = O^S                                  (optionally lse^S)
    1  sparse:   out = w_i O^S_i + R_i                      (w per row, R read once, out written once)
    2  capture:  given the dense O_i and lse_i of the same q, k, v:
                 rho_i = exp(lse^S_i - lse_i)  (= D^S_i / D_i, clamped to <= 1 against rounding),
                 R_i   = O_i - w0_i O^S_i     with w0 = rho (W0_MODE 0) or a per-head value (1);
                 W0_MODE 2 stores O^S_i in R for the caller to finish with any other rule.

Only the N tail is masked: every listed block is full except the last key block of the sequence,
which (lists being ascending) can only be a row's last entry, so only that entry's tiles mask keys.
Inputs are read through strides: (B, H, N, D) tensors or transposed (B, N, H, D) views alike.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._tiles import load_part_b, load_tile, online_step, store_tile
from ._tuning import INTERPRET, Config, candidates, choose, device_key, split_head_dim, wide_offsets

MODE_PLAIN, MODE_SPARSE, MODE_CAPTURE = 0, 1, 2


@triton.jit
def _sparse_attention_fwd(
    Q, K, V, Out, Counts, Indices, Order,
    W, R, OFull, LseFull, Rho, W0, Lse,
    s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_on, s_od,
    s_wb, s_wh, s_wn,
    s_rb, s_rh, s_rn, s_rd,
    s_fb, s_fh, s_fn, s_fd,
    s_lb, s_lh, s_ln,
    H, N, idx_stride, qk_scale,
    HEAD_DIM: tl.constexpr, MB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    DA: tl.constexpr, DB: tl.constexpr, DBX: tl.constexpr, EVEN_N: tl.constexpr,
    MODE: tl.constexpr, W0_MODE: tl.constexpr, WRITE_LSE: tl.constexpr, UPCAST: tl.constexpr,
    WIDE: tl.constexpr,
):
    SPLIT: tl.constexpr = MB // BM          # programs per mask query block
    SUB: tl.constexpr = MB // BN            # key tiles per mask key block
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    qb = tl.load(Order + pid_m // SPLIT)    # heavy (dense text) query blocks first
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

    count = tl.load(Counts + qb)
    row = Indices + qb.to(tl.int64) * idx_stride
    if EVEN_N:
        n_full = count
    else:
        n_full = count - 1                  # the last entry may be the ragged tail block
    for i in range(0, n_full):
        start = tl.load(row + i) * MB
        if WIDE:
            start = start.to(tl.int64)
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i = online_step(
                acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, start + s * BN, N,
                s_kn, s_kd, s_vn, s_vd, qk_scale, BN, DA, DB, DBX, HEAD_DIM, False, UPCAST)
    if not EVEN_N:
        start = tl.load(row + count - 1) * MB
        if WIDE:
            start = start.to(tl.int64)
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i = online_step(
                acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, start + s * BN, N,
                s_kn, s_kd, s_vn, s_vd, qk_scale, BN, DA, DB, DBX, HEAD_DIM, True, UPCAST)

    # ---- epilogue -------------------------------------------------------------------------------
    o_a = acc_a / l_i[:, None]
    o_b = acc_b / l_i[:, None]
    row_ok = offs_m < N
    stat_offs = pid_bh.to(tl.int64) * N + offs_m          # (B, H, N) contiguous stats
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    if WRITE_LSE:
        tl.store(Lse + stat_offs, lse, mask=row_ok)
    if MODE == 0:
        o_base = Out + b * s_ob + h * s_oh
        store_tile(o_base, offs_m, s_on, d_a, s_od, N, 0, o_a, False, PAD_DIM)
        if DB > 0:
            store_tile(o_base, offs_m, s_on, d_b, s_od, N, DA, o_b, COL_MASK_B)
    elif MODE == 1:
        w = tl.load(W + b * s_wb + h * s_wh + offs_m * s_wn, mask=row_ok, other=0.0).to(tl.float32)
        r_base = R + b * s_rb + h * s_rh
        o_base = Out + b * s_ob + h * s_oh
        r_a = load_tile(r_base, offs_m, s_rn, d_a, s_rd, N, HEAD_DIM, True, PAD_A).to(tl.float32)
        store_tile(o_base, offs_m, s_on, d_a, s_od, N, 0, w[:, None] * o_a + r_a, False, PAD_DIM)
        if DB > 0:
            r_b = load_tile(r_base, offs_m, s_rn, d_b, s_rd, N, HEAD_DIM, True, False).to(tl.float32)
            store_tile(o_base, offs_m, s_on, d_b, s_od, N, DA, w[:, None] * o_b + r_b, COL_MASK_B)
    else:
        lse_full = tl.load(LseFull + b * s_lb + h * s_lh + offs_m * s_ln, mask=row_ok, other=0.0)
        rho = tl.minimum(tl.exp(lse - lse_full.to(tl.float32)), 1.0)
        tl.store(Rho + stat_offs, rho, mask=row_ok)
        r_base = R + b * s_rb + h * s_rh
        if W0_MODE == 2:
            store_tile(r_base, offs_m, s_rn, d_a, s_rd, N, 0, o_a, False, PAD_DIM)
            if DB > 0:
                store_tile(r_base, offs_m, s_rn, d_b, s_rd, N, DA, o_b, COL_MASK_B)
        else:
            if W0_MODE == 0:
                w0 = rho
            else:
                w0 = tl.load(W0 + h) + tl.zeros([BM], dtype=tl.float32)
            f_base = OFull + b * s_fb + h * s_fh
            f_a = load_tile(f_base, offs_m, s_fn, d_a, s_fd, N, HEAD_DIM, True, PAD_A).to(tl.float32)
            store_tile(r_base, offs_m, s_rn, d_a, s_rd, N, 0, f_a - w0[:, None] * o_a, False, PAD_DIM)
            if DB > 0:
                f_b = load_tile(f_base, offs_m, s_fn, d_b, s_fd, N, HEAD_DIM, True, False).to(tl.float32)
                store_tile(r_base, offs_m, s_rn, d_b, s_rd, N, DA, f_b - w0[:, None] * o_b, COL_MASK_B)


def _strides(t: torch.Tensor | None, n: int) -> tuple:
    return tuple(t.stride()) if t is not None else (0,) * n


def _check_qkv(q, k, v, counts, indices, mask_block):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must be (B, H, N, D) of one shape, got {q.shape}, {k.shape}, {v.shape}")
    if q.dtype not in (torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must all be fp16 or bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k, v need a unit stride along the head dim")
    n = q.shape[2]
    if mask_block not in (16, 32, 64, 128):
        raise ValueError(f"mask block must be 16, 32, 64 or 128, got {mask_block}")
    blocks = -(-n // mask_block)
    if counts.shape != (blocks,) or indices.dim() != 2 or indices.shape[0] != blocks:
        raise ValueError(f"block lists {tuple(counts.shape)}, {tuple(indices.shape)} do not fit N={n}, "
                         f"block {mask_block}")
    if counts.dtype != torch.int32 or indices.dtype != torch.int32 or indices.stride(1) != 1:
        raise ValueError("counts and indices must be int32 with contiguous rows")
    if counts.device != q.device or indices.device != q.device:
        raise ValueError("block lists must be on q's device")


def sparse_attention(q, k, v, counts, indices, mask_block, *, order=None, weight=None, residual=None,
                     out_full=None, lse_full=None, rho=None, w0=None, return_lse=False,
                     work_hint: int = 0, out=None):
    """Block-sparse attention over per-query-block key-block lists (``out``: optional output buffer).

    - plain (no ``weight``/``residual``/``out_full``): returns O^S (and lse^S if ``return_lse``).
    - sparse step (``weight`` (B,H,N) any float, ``residual`` (B,H,N,D)): returns w*O^S + R.
    - capture epilogue (``out_full``, ``lse_full`` (B,H,N[,1]) natural-log, ``rho`` (B,H,N) fp32
      contiguous and ``residual`` to fill): writes rho and R = out_full - w0*O^S, where ``w0`` is
      None (w0 = rho), an (H,) fp32 tensor (per-head weight) or ``"raw"`` (R <- O^S); returns lse^S
      if asked, else None.
    ``order``: int32 permutation of query blocks (launch order), default ascending.
    """
    _check_qkv(q, k, v, counts, indices, mask_block)
    batch, heads, n, head_dim = q.shape
    if out_full is not None:
        mode = MODE_CAPTURE
        if residual is None or rho is None or lse_full is None:
            raise ValueError("the capture epilogue needs out_full, lse_full, rho and residual")
        if not rho.is_contiguous() or rho.shape != (batch, heads, n) or rho.dtype != torch.float32:
            raise ValueError("rho must be a contiguous fp32 (B, H, N) tensor")
    elif weight is not None or residual is not None:
        mode = MODE_SPARSE
        if weight is None or residual is None:
            raise ValueError("the sparse-step epilogue needs both weight and residual")
    else:
        mode = MODE_PLAIN
    if residual is not None and (residual.shape != q.shape or residual.stride(-1) != 1):
        raise ValueError(f"residual must be {tuple(q.shape)} with unit stride along D")
    if weight is not None and weight.shape != (batch, heads, n):
        raise ValueError(f"weight must be (B, H, N) = {(batch, heads, n)}, got {tuple(weight.shape)}")
    if lse_full is not None:
        lse_full = lse_full.reshape(batch, heads, n) if lse_full.dim() == 4 else lse_full
    w0_mode = 0
    if mode == MODE_CAPTURE and w0 is not None:
        if isinstance(w0, str):
            if w0 != "raw":
                raise ValueError(f"w0 must be None, an (H,) tensor or 'raw', got {w0!r}")
            w0_mode, w0 = 2, None
        else:
            w0_mode, w0 = 1, w0.to(device=q.device, dtype=torch.float32).contiguous()
            if w0.shape != (heads,):
                raise ValueError(f"w0 must have shape ({heads},), got {tuple(w0.shape)}")
    if order is None:
        order = torch.arange(counts.shape[0], dtype=torch.int32, device=q.device)

    if mode == MODE_CAPTURE:
        out = None
    elif out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError("out must match q's shape and dtype, with unit stride along D")
    lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device) if return_lse else None
    da, db = split_head_dim(head_dim, q.dtype)
    dummy = q
    args = (q, k, v, out if out is not None else dummy, counts, indices, order,
            weight if weight is not None else dummy, residual if residual is not None else dummy,
            out_full if out_full is not None else dummy, lse_full if lse_full is not None else dummy,
            rho if rho is not None else dummy, w0 if w0 is not None else dummy,
            lse if lse is not None else dummy,
            *q.stride(), *k.stride(), *v.stride(), *_strides(out, 4), *_strides(weight, 3),
            *_strides(residual, 4), *_strides(out_full, 4), *_strides(lse_full, 3),
            heads, n, indices.stride(0), head_dim ** -0.5 * 1.4426950408889634)

    def launch(config: Config):
        grid = (counts.shape[0] * (mask_block // config.block_m), batch * heads)
        _sparse_attention_fwd[grid](
            *args, HEAD_DIM=head_dim, MB=mask_block, BM=config.block_m, BN=config.block_n,
            DA=da, DB=db, DBX=max(db, 16), EVEN_N=(n % mask_block == 0),
            MODE=mode, W0_MODE=w0_mode, WRITE_LSE=return_lse, UPCAST=INTERPRET,
            WIDE=wide_offsets(n, mask_block, q, k, v, out, weight, residual, out_full, lse_full),
            num_warps=config.num_warps, num_stages=config.num_stages)

    key = ("sparse", device_key(q), q.dtype, head_dim, mask_block, n, batch * heads, mode,
           return_lse, work_hint)
    config = choose(key, candidates(head_dim, mask_block), launch)
    launch(config)
    if mode == MODE_CAPTURE:
        return lse
    return (out, lse) if return_lse else out


def work_hint(counts_host) -> int:
    """A coarse bucket of the mean key blocks per query block (tuning key: sparse vs. dense work)."""
    mean = float(sum(int(c) for c in counts_host)) / max(1, len(counts_host))
    return int(round(math.log2(max(1.0, mean))))
