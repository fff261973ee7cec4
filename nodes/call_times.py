"""How long a run's attention calls took, per mode and sequence length, from a sample of the calls:
the first few of each kind are timed (CUDA events on a GPU, read once at the end of the run, so no call
waits on the host; the wall clock on the CPU), every call is counted. From these the run report
estimates the attention time the run saved against running every call dense."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch

from ..rettention import CAPTURE, DENSE, SPARSE


class CallTimes:
    def __init__(self, sample: int = 6):
        self.sample = sample
        self.counts: dict[tuple[str, int], int] = defaultdict(int)
        self._timed: dict[tuple[str, int], list] = defaultdict(list)

    def timed(self, mode: str, n_tokens: int, device: torch.device, call: Callable[[], torch.Tensor]):
        key = (mode, n_tokens)
        self.counts[key] += 1
        timed = self._timed[key]
        if len(timed) >= self.sample:
            return call()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = call()
            end.record()
            timed.append((start, end))
        else:
            begin = time.perf_counter()
            out = call()
            timed.append(time.perf_counter() - begin)
        return out

    def mean_seconds(self) -> dict[tuple[str, int], float]:
        means = {}
        for key, timed in self._timed.items():
            if not timed:
                continue
            if isinstance(timed[0], tuple):
                timed[-1][1].synchronize()
                seconds = [start.elapsed_time(end) / 1e3 for start, end in timed]
            else:
                seconds = timed
            means[key] = sum(seconds) / len(seconds)
        return means

    def saved_seconds(self) -> float | None:
        """sum over sequence lengths of sparse calls x (dense - sparse) minus capture calls x (capture -
        dense), from the mean times; None when a length with sparse or capture calls had no dense one."""
        means = self.mean_seconds()
        saved, lengths = 0.0, {n for mode, n in self.counts if mode in (SPARSE, CAPTURE)}
        for n in lengths:
            dense = means.get((DENSE, n))
            if dense is None:
                return None
            saved += self.counts[(SPARSE, n)] * (dense - means.get((SPARSE, n), dense))
            saved -= self.counts[(CAPTURE, n)] * (means.get((CAPTURE, n), dense) - dense)
        return saved if lengths else None
