"""Re-ttention in plain PyTorch: the CPU fallback and the oracle the kernels are tested against.

Work is chunked over heads and query blocks so that no chunk holds more than ~2^24 logits:
memory stays O(N * block), never N x N. Everything is computed in fp32.
"""
from __future__ import annotations

import numpy as np
import torch

from .masks import SparseMask
from .stats import AttentionStats
from .weights import WeightRule

_CHUNK_LOGITS = 1 << 24


def _head_chunks(batch: int, heads: int, rows: int, keys: int):
    """Slices of heads such that batch * heads * rows * keys stays near the chunk budget."""
    per_head = max(1, batch * rows * keys)
    step = max(1, min(heads, _CHUNK_LOGITS // per_head))
    for h0 in range(0, heads, step):
        yield slice(h0, min(heads, h0 + step))


def _query_block_groups(mask: SparseMask, batch: int, heads: int):
    """Groups of consecutive query blocks sized to the chunk budget: (first, last + 1)."""
    per_block = max(1, batch * heads * mask.block_size * mask.n_tokens)
    step = max(1, _CHUNK_LOGITS // per_block)
    for first in range(0, mask.query_blocks, step):
        yield first, min(mask.query_blocks, first + step)


def _window(mask: SparseMask, first: int, last: int, device) -> torch.Tensor:
    """(rows, N) bool: which keys the rows of query blocks first..last-1 compute at a sparse step."""
    n, block = mask.n_tokens, mask.block_size
    visited = np.zeros((last - first, mask.key_blocks), dtype=bool)
    for q in range(first, last):
        visited[q - first, mask.key_block_list(q)] = True
    per_token = visited[:, np.arange(n) // block]                              # (blocks, N)
    rows_per_block = np.minimum(block, n - np.arange(first, last) * block)
    return torch.from_numpy(np.repeat(per_token, rows_per_block, axis=0)).to(device)


def _key_tokens(mask: SparseMask, query_block: int, device) -> torch.Tensor:
    """Indices of the keys in the blocks ``query_block`` visits, ascending."""
    blocks = mask.key_block_list(query_block).astype(np.int64)
    tokens = (blocks[:, None] * mask.block_size + np.arange(mask.block_size)).ravel()
    return torch.from_numpy(tokens[tokens < mask.n_tokens]).to(device)


def full_with_stats(q, k, v, mask: SparseMask, weight: WeightRule, residual_dtype: torch.dtype):
    """Dense attention plus, per row, ρ = exp(lse_window - lse) and R_w = O - w0 * O_window."""
    batch, heads, n, dim = q.shape
    scale = dim ** -0.5
    out = torch.empty_like(q)
    rho = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
    residual = torch.empty(q.shape, dtype=residual_dtype, device=q.device)
    for first, last in _query_block_groups(mask, batch, 1):
        rows = slice(first * mask.block_size, min(n, last * mask.block_size))
        outside = ~_window(mask, first, last, q.device)
        for hs in _head_chunks(batch, heads, rows.stop - rows.start, n):
            logits = (q[:, hs, rows].float() * scale) @ k[:, hs].float().transpose(-1, -2)
            values = v[:, hs].float()
            window_logits = logits.masked_fill(outside, float("-inf"))
            lse = torch.logsumexp(logits, dim=-1)
            lse_window = torch.logsumexp(window_logits, dim=-1)
            full = torch.exp(logits - lse[..., None]) @ values
            window = torch.exp(window_logits - lse_window[..., None]) @ values
            rho_chunk = torch.exp(lse_window - lse)
            w0 = weight.weight(rho_chunk, 0, hs)
            out[:, hs, rows] = full.to(out.dtype)
            rho[:, hs, rows] = rho_chunk
            residual[:, hs, rows] = (full - w0[..., None] * window).to(residual_dtype)
    return out, AttentionStats(rho=rho, residual=residual, mask=mask, weight=weight)


def sparse_with_stats(q, k, v, stats: AttentionStats, steps_since_capture: int):
    """Block-sparse attention over the mask's key blocks, reshaped: out = w * O_window + R_w."""
    mask, weight = stats.mask, stats.weight
    batch, heads, n, dim = q.shape
    scale = dim ** -0.5
    out = torch.empty_like(q)
    for query_block in range(mask.query_blocks):
        rows = slice(query_block * mask.block_size, min(n, (query_block + 1) * mask.block_size))
        keys = _key_tokens(mask, query_block, q.device)
        for hs in _head_chunks(batch, heads, rows.stop - rows.start, len(keys)):
            logits = (q[:, hs, rows].float() * scale) @ k[:, hs, keys].float().transpose(-1, -2)
            window = torch.softmax(logits, dim=-1) @ v[:, hs, keys].float()
            w = weight.weight(stats.rho[:, hs, rows], steps_since_capture, hs)
            out[:, hs, rows] = (w[..., None] * window + stats.residual[:, hs, rows].float()).to(out.dtype)
    return out
