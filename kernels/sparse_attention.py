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

Every (B, H, N, D) tensor is read and written through a 4-D tensor descriptor (TMA on Hopper and
newer, plain loads elsewhere; two tuning variants read q or R by masked pointer loads instead,
``Config.gather_q`` and ``early_residual``), so (B, H, N, D) tensors and transposed (B, N, H, D)
views work alike, rows past N read as zero and are never written, and coordinates never overflow.
Only the last key block of the sequence can be ragged; lists being ascending it can only be a row's
last entry, so only that entry's tiles mask keys.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._tiles import (LOG2E, absorb_tile, descriptor_pair, gather_parts, load_parts, load_rows, online_step,
                     qkv_descriptors, store_rows, tile_logits)
from ._tuning import INTERPRET, Config, candidates, choose, device_key, split_head_dim

try:                    # Gluon (triton >= 3.5): the warp-specialised Hopper kernels
    from . import sparse_attention_ws
except Exception:       # noqa: BLE001 - an older Triton: the Triton kernel alone
    sparse_attention_ws = None

MODE_PLAIN, MODE_SPARSE, MODE_CAPTURE = 0, 1, 2


def warp_specialized(q: torch.Tensor, mask_block: int, residual_dtype: torch.dtype | None) -> bool:
    """Whether the Gluon kernels can run this call: Gluon imported, and ``sparse_attention_ws.supported``
    (Hopper, the head dims they are built for, 128-token mask blocks), with R (if any) of q's dtype."""
    return (sparse_attention_ws is not None and sparse_attention_ws.supported(q, mask_block)
            and residual_dtype in (None, q.dtype))


@triton.jit
def _sparse_attention_fwd(
    q_a, q_b, k_a, k_b, v_a, v_b, o_a, o_b, r_a, r_b, f_a, f_b,
    Q, Counts, Indices, Order, W, Res, Rho, W0, LseFull, Lse,
    s_qb, s_qh, s_qn, s_qd, s_wb, s_wh, s_wn, s_rb, s_rh, s_rn, s_rd, s_lb, s_lh, s_ln,
    H, N, idx_stride, qk_scale,
    MB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DA: tl.constexpr,
    DB: tl.constexpr, EVEN_N: tl.constexpr, MODE: tl.constexpr, W0_MODE: tl.constexpr,
    WRITE_LSE: tl.constexpr, UPCAST: tl.constexpr, PIPE: tl.constexpr, EARLY_R: tl.constexpr,
    ORDERED: tl.constexpr, GATHER_Q: tl.constexpr,
):
    SPLIT: tl.constexpr = MB // BM          # programs per mask query block
    SUB: tl.constexpr = MB // BN            # key tiles per mask key block
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
    row_ok = offs_m < N
    if MODE == 1:
        w = tl.load(W + b.to(tl.int64) * s_wb + h * s_wh + offs_m * s_wn, mask=row_ok, other=0.0)
        if EARLY_R:     # R now, so that its latency hides behind the key loop (short rows)
            res_a, res_b = gather_parts(Res, b, h, row0, N, D, s_rb, s_rh, s_rn, s_rd, BM, DA, DB)

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc_a = tl.zeros([BM, DA], dtype=tl.float32)
    acc_b = tl.zeros([BM, DB if DB > 0 else 16], dtype=tl.float32)

    count = tl.load(Counts + qb)
    row = Indices + qb.to(tl.int64) * idx_stride
    first = tl.load(row)                # before q: a descriptor load of q would wait here
    # q: the head dim in two power-of-two parts [0, DA) and [DA, DA + DB), columns past D zero
    if GATHER_Q:        # pointer loads: waited on at the first q.k, not here
        qa, qb_ = gather_parts(Q, b, h, row0, N, D, s_qb, s_qh, s_qn, s_qd, BM, DA, DB)
        if UPCAST:
            qa = qa.to(tl.float32)
            qb_ = qb_.to(tl.float32)
    else:
        qa, qb_ = load_parts(q_a, q_b, b, h, row0, BM, DA, DB, UPCAST)
    if EVEN_N:
        n_full = count
    else:
        n_full = count - 1                  # the last entry may be the ragged tail block
    if PIPE:
        # Software pipelining by hand: the next tile's q.k is issued before this tile's softmax, so
        # the tensor cores run it while the softmax waits on the special-function unit (exp2).
        n_tiles = n_full * SUB
        if n_tiles > 0:
            start = first * MB
            qk = tile_logits(qa, qb_, k_a, k_b, b, h, start, N, BN, DA, DB, False, UPCAST)
            for t in range(1, n_tiles):
                nxt = tl.load(row + t // SUB) * MB + (t % SUB) * BN
                qk_next = tile_logits(qa, qb_, k_a, k_b, b, h, nxt, N, BN, DA, DB, False, UPCAST)
                acc_a, acc_b, l_i, m_i = absorb_tile(acc_a, acc_b, l_i, m_i, qk, v_a, v_b, b, h, start,
                                                     qk_scale, BN, DA, DB, UPCAST)
                qk = qk_next
                start = nxt
            acc_a, acc_b, l_i, m_i = absorb_tile(acc_a, acc_b, l_i, m_i, qk, v_a, v_b, b, h, start,
                                                 qk_scale, BN, DA, DB, UPCAST)
    else:
        for i in range(0, n_full):
            start = tl.load(row + i) * MB
            for s in tl.static_range(SUB):
                acc_a, acc_b, l_i, m_i = online_step(
                    acc_a, acc_b, l_i, m_i, qa, qb_, k_a, k_b, v_a, v_b, b, h, start + s * BN, N, qk_scale,
                    BN, DA, DB, False, UPCAST)
    if not EVEN_N:
        start = tl.load(row + count - 1) * MB
        for s in tl.static_range(SUB):
            acc_a, acc_b, l_i, m_i = online_step(
                acc_a, acc_b, l_i, m_i, qa, qb_, k_a, k_b, v_a, v_b, b, h, start + s * BN, N, qk_scale,
                BN, DA, DB, True, UPCAST)

    # ---- epilogue -------------------------------------------------------------------------------
    inv_l = 1.0 / l_i
    out_a = acc_a * inv_l[:, None]
    out_b = acc_b * inv_l[:, None]
    stat_offs = pid_bh.to(tl.int64) * N + offs_m          # (B, H, N) contiguous stats
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    if WRITE_LSE:
        tl.store(Lse + stat_offs, lse, mask=row_ok)
    if MODE == 1:
        if not EARLY_R:
            res_a = load_rows(r_a, b, h, row0, 0, BM, DA)
            if DB > 0:
                res_b = load_rows(r_b, b, h, row0, DA, BM, DB)
        out_a = w.to(tl.float32)[:, None] * out_a + res_a.to(tl.float32)
        if DB > 0:
            out_b = w.to(tl.float32)[:, None] * out_b + res_b.to(tl.float32)
    if MODE == 2:
        lse_full = tl.load(LseFull + b.to(tl.int64) * s_lb + h * s_lh + offs_m * s_ln, mask=row_ok, other=0.0)
        rho = tl.minimum(tl.exp(lse - lse_full.to(tl.float32)), 1.0)
        tl.store(Rho + stat_offs, rho, mask=row_ok)
        if W0_MODE != 2:                    # R = O - w0 O^S (W0_MODE 2: R <- O^S)
            if W0_MODE == 0:
                w0 = rho
            else:
                w0 = tl.load(W0 + h) + tl.zeros([BM], dtype=tl.float32)
            out_a = load_rows(f_a, b, h, row0, 0, BM, DA) - w0[:, None] * out_a
            if DB > 0:
                out_b = load_rows(f_b, b, h, row0, DA, BM, DB) - w0[:, None] * out_b
        store_rows(r_a, b, h, row0, 0, out_a, BM, DA)
        if DB > 0:
            store_rows(r_b, b, h, row0, DA, out_b, BM, DB)
    else:
        store_rows(o_a, b, h, row0, 0, out_a, BM, DA)
        if DB > 0:
            store_rows(o_b, b, h, row0, DA, out_b, BM, DB)


def _check_qkv(q, k, v, counts, indices, mask_block):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must be (B, H, N, D) of one shape, got {q.shape}, {k.shape}, {v.shape}")
    if q.dtype not in (torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must all be fp16 or bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
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


def w0_argument(w0, heads: int, device) -> tuple[int, torch.Tensor | None]:
    """(W0_MODE, W0 tensor) for the capture epilogues: None -> (0, None) (w0 = rho); an (H,) tensor ->
    (1, fp32 copy on ``device``) (per-head weight); ``"raw"`` -> (2, None) (R <- O^S)."""
    if w0 is None:
        return 0, None
    if isinstance(w0, str):
        if w0 != "raw":
            raise ValueError(f"w0 must be None, an (H,) tensor or 'raw', got {w0!r}")
        return 2, None
    w0 = w0.to(device=device, dtype=torch.float32).contiguous()
    if w0.shape != (heads,):
        raise ValueError(f"w0 must have shape ({heads},), got {tuple(w0.shape)}")
    return 1, w0


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
    ``order``: int32 permutation of query blocks (launch order), or None for ascending.
    (B, H, N, D) inputs without 16-byte aligned rows are copied first, outputs must have them (see
    ``_tiles.tma_view``).
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
    if residual is not None and residual.shape != q.shape:
        raise ValueError(f"residual must be {tuple(q.shape)}")
    if weight is not None and weight.shape != (batch, heads, n):
        raise ValueError(f"weight must be (B, H, N) = {(batch, heads, n)}, got {tuple(weight.shape)}")
    if lse_full is not None:
        lse_full = lse_full.reshape(batch, heads, n) if lse_full.dim() == 4 else lse_full
    w0_mode, w0 = w0_argument(w0 if mode == MODE_CAPTURE else None, heads, q.device)

    if mode == MODE_CAPTURE:
        out = None
    elif out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError("out must match q's shape and dtype")
    lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device) if return_lse else None
    da, db = split_head_dim(head_dim)
    pointers = (q, counts, indices, order, weight, residual, rho, w0, lse_full, lse,  # None where a mode has none
                *q.stride(), *(weight.stride() if weight is not None else (0, 0, 0)),
                *(residual.stride() if residual is not None else (0, 0, 0, 0)),
                *(lse_full.stride() if lse_full is not None else (0, 0, 0)),
                heads, n, indices.stride(0), head_dim ** -0.5 * LOG2E)

    def launch(config: Config):
        if config.warp_specialized:
            sparse_attention_ws.launch(q, k, v, out, counts, indices, mask_block, order=order, weight=weight,
                                       residual=residual, lse=lse, stages=config.num_stages)
            return
        bm = config.block_m
        tensors = (*qkv_descriptors(q, k, v, bm, config.block_n, da, db),
                   *descriptor_pair(out, bm, da, db, output=True),
                   *descriptor_pair(residual, bm, da, db, output=mode == MODE_CAPTURE),
                   *descriptor_pair(out_full, bm, da, db))
        grid = (counts.shape[0] * (mask_block // config.block_m), batch * heads)
        _sparse_attention_fwd[grid](
            *tensors, *pointers, MB=mask_block, BM=config.block_m, BN=config.block_n, D=head_dim, DA=da,
            DB=db, EVEN_N=(n % mask_block == 0), MODE=mode, W0_MODE=w0_mode, WRITE_LSE=return_lse,
            UPCAST=INTERPRET, PIPE=config.pipeline, EARLY_R=config.early_residual and mode == MODE_SPARSE,
            ORDERED=order is not None, GATHER_Q=config.gather_q,
            **config.launch_options())

    key = ("sparse", device_key(q), q.dtype, head_dim, mask_block, n, batch * heads, mode,
           return_lse, work_hint, order is not None)     # order: rows of unequal work (text)
    gluon = mode != MODE_CAPTURE and warp_specialized(q, mask_block, None if residual is None else residual.dtype)
    config = choose(key, candidates(head_dim, mask_block, warp_specialized=gluon), launch)
    launch(config)
    if mode == MODE_CAPTURE:
        return lse
    return (out, lse) if return_lse else out


def work_hint(counts_host) -> int:
    """A coarse bucket of the mean key blocks per query block (tuning key: sparse vs. dense work)."""
    mean = float(sum(int(c) for c in counts_host)) / max(1, len(counts_host))
    return int(round(math.log2(max(1.0, mean))))
