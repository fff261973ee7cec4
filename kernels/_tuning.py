"""Launch-configuration choice shared by the launchers: head-dim split, candidate configs, a tuning cache.

On a GPU the first call for a key (head dim, dtype, mask block, N, batch*heads, work per row, mode)
times each candidate config (median of a few CUDA-event-timed runs) and caches the fastest; every
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
    pipeline: bool = False     # issue the next tile's q.k before this tile's softmax (sparse kernel)


def split_head_dim(head_dim: int) -> tuple[int, int]:
    """(DA, DB): the head dim in two power-of-two parts, DA the largest power of two <= head_dim and
    DB (0 when DA is the head dim) the smallest one >= 16 that covers the rest: 72 -> 64 + 16,
    80 -> 64 + 16, 88 -> 64 + 32, 96 -> 64 + 32 (the descriptors read columns past D as zero)."""
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


def candidates(head_dim: int, mask_block: int, dense_loop: bool = False) -> list[Config]:
    """Hopper-leaning candidates, filtered so that BLOCK_M and BLOCK_N divide the mask block.

    Measured on the H200 (out of 8-9 configs each): with 8 warps and 2 stages the hand-pipelined
    loop wins at head dim 128 (81-88% of cuDNN's FLOP rate on the computed blocks against 74-78%);
    at head dims 64-96 BLOCK_N 64 wins; at a few thousand tokens the plain loop does."""
    if INTERPRET:
        b = min(32, mask_block)
        return [Config(b, b, 4, 1)]
    da, db = split_head_dim(head_dim)
    if da + db > 64 and db == 0:
        cands = [Config(128, 128, 8, 2, True), Config(128, 128, 8, 2), Config(128, 64, 8, 2, True),
                 Config(128, 64, 8, 2), Config(128, 64, 4, 3)]
    else:
        cands = [Config(128, 64, 8, 2, True), Config(128, 64, 8, 2), Config(128, 128, 4, 3),
                 Config(128, 64, 4, 3), Config(128, 128, 8, 2, True)]
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
