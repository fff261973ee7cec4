"""Independent references for the tests: naive token masks and textbook attention (fp64 on the CPU).

Written from DESIGN.md's definitions, not from rettention's code: the window rules below are
re-derived here (centred, shifted to stay inside the grid), and attention is the textbook formula.
"""
import numpy as np
import torch


def _start(position, length, width):
    return np.minimum(np.maximum(position - width // 2, 0), length - width)


def token_mask(grid, text_before, text_after, kind, window, block):
    """(N, N) bool: the token-level design mask (image windows; text rows and columns dense).
    A band window is centred on the middle of the image tokens of the query's ``block``."""
    frames, height, width = grid
    n_img = frames * height * width
    n = text_before + n_img + text_after
    i = np.arange(n_img)
    if kind == "band":
        (w,) = window
        query_block = (text_before + i) // block
        first = np.maximum(query_block * block, text_before) - text_before
        last = np.minimum((query_block + 1) * block, text_before + n_img) - 1 - text_before
        padded = max(w, -(-n_img // block) * block)          # shifted inward in whole blocks
        s = _start((first + last + 1) // 2, padded, w)[:, None]
        image = (i[None, :] >= s) & (i[None, :] < s + w)
    elif kind == "tube":
        (w,) = window
        frame = height * width
        s = _start(i % frame, frame, w)[:, None]
        p = (i % frame)[None, :]
        image = (p >= s) & (p < s + w)
    elif kind == "local3d":
        bt, bh, bw = window
        t, rem = np.divmod(i, height * width)
        y, x = np.divmod(rem, width)
        image = np.ones((n_img, n_img), dtype=bool)
        for coord, length, size in ((t, frames, bt), (y, height, bh), (x, width, bw)):
            s = _start(coord, length, size)[:, None]
            image &= (coord[None, :] >= s) & (coord[None, :] < s + size)
    else:
        raise AssertionError(kind)
    full = np.ones((n, n), dtype=bool)
    a, b = text_before, text_before + n_img
    full[a:b, a:b] = image
    return full


def block_mask(token_level, block):
    """(QB, KB) bool: blocks that hold at least one True of the token mask."""
    n = token_level.shape[0]
    nb = -(-n // block)
    padded = np.zeros((nb * block, nb * block), dtype=bool)
    padded[:n, :n] = token_level
    return padded.reshape(nb, block, nb, block).any(axis=(1, 3))


def key_set(mask):
    """(N, N) bool: keys each query computes under ``mask`` (all keys of its visited blocks)."""
    n, block = mask.n_tokens, mask.block_size
    visited = np.zeros((mask.query_blocks, mask.key_blocks), dtype=bool)
    for q in range(mask.query_blocks):
        visited[q, mask.key_block_list(q)] = True
    blocks = np.arange(n) // block
    return visited[blocks][:, blocks]


def attention(q, k, v, keys=None, dtype=torch.float64):
    """Textbook softmax attention in ``dtype`` (fp64 on the CPU, fp32 on a GPU), on q's device;
    ``keys`` (rows, N) bool restricts each row's keys. Returns (out, natural-log lse)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if keys is not None:
        logits = logits.masked_fill(~torch.as_tensor(keys, device=q.device), float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    return torch.exp(logits - lse[..., None]) @ v, lse


def dense_and_window(q, k, v, mask, dtype=torch.float64):
    """(O, lse, O^S, lse^S) of :func:`attention`, one query block at a time (no N x N buffer): all
    keys, and the keys of the key blocks the mask lists for that block (read one block at a time)."""
    b, h, n, d = q.shape
    out, out_w = (torch.empty(b, h, n, d, dtype=dtype, device=q.device) for _ in range(2))
    lse, lse_w = (torch.empty(b, h, n, dtype=dtype, device=q.device) for _ in range(2))
    bs = mask.block_size
    for qb in range(mask.query_blocks):
        rows = slice(qb * bs, min(n, (qb + 1) * bs))
        keep = torch.zeros(n, dtype=torch.bool, device=q.device)
        for kb in mask.key_block_list(qb):
            keep[int(kb) * bs:(int(kb) + 1) * bs] = True
        out[:, :, rows], lse[:, :, rows] = attention(q[:, :, rows], k, v, None, dtype)
        out_w[:, :, rows], lse_w[:, :, rows] = attention(q[:, :, rows], k, v, keep[None, :], dtype)
    return out, lse, out_w, lse_w


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def kernel_tolerance(dtype):
    """Relative L2 bound for a kernel's output against an fp32/fp64 reference (issue 3)."""
    return 1e-2 if dtype == torch.bfloat16 else 2e-3
