"""Launch-configuration choice shared by the launchers: head-dim split, candidate configs, a tuning cache.

On a GPU the first call for a key (head dim, dtype, mask block, N, batch*heads, work per row, mode)
times each candidate config once with ``triton.testing.do_bench`` and caches the fastest; every
later call with that key reuses it (a sampling run pays tuning once per shape). Under the CPU
interpreter there is one fixed config.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


class Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Split non-power-of-two head dims in two parts (72 -> 64 + 16) instead of padding them to the next
# power of two (72 -> 128, columns past the head dim masked). Off by default: on the H200 (triton 3.6)
# the split gave wrong results at head dim 72 (rel. error 0.8) and an illegal memory access in one
# case, while it is right under the CPU interpreter; padding was right everywhere. Per dtype.
SPLIT_HEAD_DIM = {"float16": os.environ.get("RETTENTION_SPLIT_D_FP16", "0") == "1",
                  "bfloat16": os.environ.get("RETTENTION_SPLIT_D_BF16", "0") == "1"}


def split_head_dim(head_dim: int, dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(DA, DB): powers of two (DB may be 0) with DA + DB >= head_dim and little waste; with splitting
    off for ``dtype``, (next power of two, 0)."""
    if dtype is not None and not SPLIT_HEAD_DIM.get(str(dtype).rpartition(".")[2], True):
        da = 16
        while da < head_dim:
            da *= 2
        return da, 0
    da = 16
    while da * 2 <= head_dim:
        da *= 2
    rest = head_dim - da
    if rest == 0:
        return da, 0
    db = 16
    while db < rest:
        db *= 2
    return da, db


def wide_offsets(n: int, mask_block: int, *tensors: torch.Tensor | None) -> bool:
    """True when a row offset (token index x stride along N, in elements) can pass 2^31 in one of
    ``tensors`` (B, H, N[, D]): the kernels then index rows in 64 bits (WIDE), else in 32.

    ComfyUI's single-stream blocks (Flux, HunyuanVideo) hand over q, k, v sliced out of one
    projection with stride 3 H D + mlp width along N: 21504 elements for HunyuanVideo, where
    119056 tokens overflow 32-bit row offsets (an illegal memory access, seen on the H200)."""
    rows = n + mask_block                      # tail tiles form (masked) addresses past N
    return any(t is not None and rows * max(t.stride(2), 1) >= 2 ** 31 for t in tensors)


def candidates(head_dim: int, mask_block: int, dense_loop: bool = False) -> list[Config]:
    """Hopper-leaning candidates, filtered so that BLOCK_M and BLOCK_N divide the mask block."""
    if INTERPRET:
        b = min(32, mask_block)
        return [Config(b, b, 4, 1)]
    da, db = split_head_dim(head_dim)
    if da + db > 64:
        cands = [Config(128, 128, 8, 2), Config(128, 64, 8, 3), Config(128, 128, 8, 3),
                 Config(128, 64, 8, 4), Config(64, 64, 4, 3)]
    else:
        cands = [Config(128, 128, 8, 3), Config(128, 64, 4, 3), Config(128, 128, 4, 3),
                 Config(128, 64, 8, 3), Config(64, 64, 4, 3)]
    out = [c for c in cands if c.block_m <= mask_block and c.block_n <= mask_block]
    if not out:
        b = mask_block
        out = [Config(b, b, 4, 2)]
    return out


_CACHE: dict[tuple, Config] = {}


def choose(key: tuple, cands: list[Config], launch: Callable[[Config], None]) -> Config:
    """The cached config for ``key``; on a miss, time each candidate (``launch(config)``) and keep the fastest.

    ``launch`` must be safe to repeat (the kernels only write their outputs)."""
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if len(cands) == 1 or INTERPRET or os.environ.get("RETTENTION_NO_TUNE"):
        _CACHE[key] = cands[0]
        return cands[0]
    best, best_ms = None, float("inf")
    for config in cands:
        try:
            ms = _time(lambda: launch(config))
        except Exception:             # e.g. out of shared memory for this config
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    if best is None:
        raise RuntimeError(f"no launch configuration works for {key}")
    _CACHE[key] = best
    return best


def _time(fn) -> float:
    """Median ms of a few runs after one warm-up (compile) run; fewer runs for long kernels."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    first = start.elapsed_time(end)
    reps = 3 if first > 20 else 10
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def cached_choices() -> dict[tuple, Config]:
    return dict(_CACHE)


def device_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index)
