"""What a capture step leaves for the sparse steps, and the per-run store that holds it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch

from .masks import SparseMask
from .weights import RhoWeight, WeightRule


@dataclass(frozen=True, eq=False)
class AttentionStats:
    """Per row: ``rho = D_sparse / D_full`` (B, H, N) fp32 and the residual ``R_w = O - w0 * O_sparse``
    (B, H, N, D) in a storage dtype, captured under ``mask`` with the weight rule ``weight``."""

    rho: torch.Tensor
    residual: torch.Tensor
    mask: SparseMask
    weight: WeightRule = RhoWeight()

    @property
    def nbytes(self) -> int:
        return self.rho.numel() * self.rho.element_size() + self.residual.numel() * self.residual.element_size()

    def matches(self, q: torch.Tensor, mask: SparseMask) -> bool:
        """True when these stats can reshape a sparse step on ``q`` (B, H, N, D) under ``mask``."""
        return (self.mask == mask and tuple(self.residual.shape) == tuple(q.shape)
                and self.residual.device == q.device)


class StatsStore:
    """The stats of one sampling run, keyed by (layer, CFG chunk). A lookup whose mask or shape no
    longer matches is a miss. ``close()`` frees everything; the store is also a context manager."""

    def __init__(self) -> None:
        self._stats: dict[tuple[Hashable, Hashable], AttentionStats] = {}
        self.nbytes = 0
        self.peak_nbytes = 0

    def put(self, layer: Hashable, chunk: Hashable, stats: AttentionStats) -> None:
        old = self._stats.pop((layer, chunk), None)
        self.nbytes += stats.nbytes - (old.nbytes if old is not None else 0)
        self._stats[(layer, chunk)] = stats
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def get(self, layer: Hashable, chunk: Hashable, q: torch.Tensor, mask: SparseMask) -> AttentionStats | None:
        stats = self._stats.get((layer, chunk))
        return stats if stats is not None and stats.matches(q, mask) else None

    def __len__(self) -> int:
        return len(self._stats)

    def close(self) -> None:
        self._stats.clear()
        self.nbytes = 0

    def __enter__(self) -> "StatsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
