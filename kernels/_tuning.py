"""Launch-configuration choice shared by the launchers: head-dim split, candidate configs, a tuning cache.

On a GPU the first call for a key (head dim, dtype, mask block, N, batch*heads, work per row, mode)
times each candidate config (median of a few CUDA-graph replays) and caches the fastest; every
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
    early_residual: bool = False   # sparse step: load R (by pointers) before the key loop, not after it
    gather_q: bool = False     # sparse kernel: q by pointer loads (async) instead of a descriptor
    max_registers: int = 0     # per-thread register cap (0: the compiler's); 168 fits three 4-warp
                               # programs on an SM, so one's prologue and epilogue overlap the others' loops
    warp_specialized: bool = False  # the launcher's Gluon kernel (sparse_attention_ws.py or
                               # capture_attention_ws.py; Hopper, 128-token mask blocks): block_m 128 =
                               # two 64-row consumer warp groups, num_stages key/value tiles in flight

    def launch_options(self) -> dict:
        options = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.max_registers and not INTERPRET:
            options["maxnreg"] = self.max_registers
        return options


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


def candidates(head_dim: int, mask_block: int, dense_loop: bool = False,
               warp_specialized: bool = False) -> list[Config]:
    """Hopper-leaning candidates, filtered so that BLOCK_M and BLOCK_N divide the mask block.

    Measured on the H200, sparse step at band 3.125% and 12.5% (% of cuDNN's FLOP rate on the
    computed blocks):
    - long rows, head dim 128: one 8-warp program per SM with the hand-pipelined loop (85-90%);
    - short rows (5-20 key tiles): programs of 64 rows and 4 warps, capped at 168 registers so
      that three share an SM and one's prologue and epilogue overlap the others' key loops
      (Wan 720p 77% -> 81%, Wan 480p 68% -> 75%; uncapped they fit two per SM);
    - one key tile per row (1024^2 images, memory-bound): the same small programs with q by
      pointer loads, in flight while the key tile's descriptor load waits (Flux 15% -> 12% of cuDNN);
    - head dims 64-96: BLOCK_N 64 for long rows, 64-row programs with R loaded early for short ones.
    Configs that spill beyond the 168-register cap, 2-stage 4-warp programs at head dim 128 and an
    L2 prefetch of R were slower everywhere.
    ``warp_specialized``: the launcher's Gluon kernel applies (Hopper, 128-token mask blocks, R of q's
    dtype; not the split design's capture epilogue) and is a candidate too; on the H200 it wins at
    head dim 128 (Wan 720p band 3.125%: 92% of cuDNN's FLOP rate against 80%)."""
    if INTERPRET:
        b = min(32, mask_block)
        return [Config(b, b, 4, 1)]
    da, db = split_head_dim(head_dim)
    if da + db > 64 and db == 0:
        cands = [Config(128, 128, 8, 2, True), Config(128, 128, 8, 2), Config(128, 64, 8, 2),
                 Config(64, 128, 4, 1, gather_q=True, max_registers=168), Config(64, 128, 4, 1, gather_q=True)]
    else:
        cands = [Config(128, 64, 8, 2, True), Config(128, 64, 8, 2), Config(128, 128, 4, 3),
                 Config(128, 64, 4, 3), Config(128, 128, 8, 2, True), Config(128, 64, 8, 2, gather_q=True),
                 Config(64, 128, 4, 2, early_residual=True), Config(64, 128, 4, 1, gather_q=True)]
    out = [c for c in cands if c.block_m <= mask_block and c.block_n <= mask_block]
    if dense_loop:      # the fused capture kernel has none of the sparse kernel's loop variants
        out = list(dict.fromkeys(Config(*c[:4], max_registers=c.max_registers) for c in out))
    if warp_specialized:
        out.append(Config(128, 128, 4, 2, warp_specialized=True))
    if not out:
        b = mask_block
        out = [Config(b, b, 4, 2)]
    return out


_CACHE: dict[tuple, object] = {}


def choose(key: tuple, cands: list, launch: Callable[[object], object]):
    """The cached config for ``key``; on a miss, time each candidate (``launch(config)``) and keep the fastest.
    A candidate is a ``Config`` or any other hashable choice (e.g. a capture design).

    The candidates are timed in turns (one run of each per round, median over the rounds), so a
    drift of the GPU's clocks during tuning weighs on all of them alike.
    ``launch`` must be safe to repeat (the kernels only write their outputs)."""
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if len(cands) == 1 or INTERPRET or os.environ.get("RETTENTION_NO_TUNE"):
        _CACHE[key] = cands[0]
        return cands[0]
    timers, failures = {}, []
    for config in cands:
        try:
            timers[config] = _timer(lambda config=config: launch(config))
        except Exception as error:    # noqa: BLE001 - e.g. out of shared memory for this config
            failures.append(f"{config}: {type(error).__name__}: {error}")
    if not timers:
        raise RuntimeError(f"no launch configuration works for {key}; " + "; ".join(failures))
    slowest = max(first for first, _ in timers.values())
    samples = {config: [] for config in timers}
    for _ in range(3 if slowest > 20 else 9):
        for config, (_, run) in timers.items():
            samples[config].append(run())
    best = min(samples, key=lambda config: sorted(samples[config])[len(samples[config]) // 2])
    _CACHE[key] = best
    return best


def graph_replay(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured once in a CUDA graph, as its replay (after a warm-up run on a side stream, as
    capture wants); ``fn`` itself where it cannot be captured. Timing replays measures the GPU, not
    the host's launch overhead (longer than a small kernel)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay
    except Exception:                 # noqa: BLE001 - not capturable here: the plain launches
        torch.cuda.synchronize()
        return fn


def graph_timer(fn: Callable[[], object]) -> Callable[..., list[float]]:
    """Warm ``fn`` up (compile, tune, build caches), capture it in a CUDA graph (``graph_replay``) and
    return ``time_ms(repeats=1, samples=1, before=None)``: ``samples`` samples, each ``before()`` untimed
    (e.g. an L2 flush), then ``repeats`` replays timed by CUDA events as one; the ms per replay of each
    sample, after one wait for the GPU at the end."""
    fn()
    torch.cuda.synchronize()
    run = graph_replay(fn)

    def time_ms(repeats: int = 1, samples: int = 1, before: Callable[[], object] | None = None) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(samples)]
        for start, end in events:
            if before is not None:
                before()
            start.record()
            for _ in range(repeats):
                run()
            end.record()
        events[-1][1].synchronize()
        return [start.elapsed_time(end) / repeats for start, end in events]
    return time_ms


def _timer(fn) -> tuple[float, Callable[[], float]]:
    """(ms of one run of ``fn``, a function that times one sample in ms; see graph_timer): a sample
    repeats the graph replay of ``fn`` to fill at least half a millisecond."""
    time_ms = graph_timer(fn)
    first = max(time_ms()[0], 1e-3)
    repeats = max(1, min(50, int(0.5 / first)))
    return first, lambda: time_ms(repeats)[0]


def cached_choices() -> dict[tuple, object]:
    return dict(_CACHE)


def device_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index)
