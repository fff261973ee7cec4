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

    def batch_rows(self, rows: slice) -> "AttentionStats":
        """The stats of the batch rows ``rows`` (views, no copy)."""
        return AttentionStats(rho=self.rho[rows], residual=self.residual[rows], mask=self.mask, weight=self.weight)


@dataclass(frozen=True)
class _Entry:
    chunks: tuple            # the CFG chunks of the captured batch, in batch order, equal rows each
    stats: AttentionStats

    def rows_of(self, chunk) -> slice:
        size = self.stats.rho.shape[0] // len(self.chunks)
        i = self.chunks.index(chunk)
        return slice(i * size, (i + 1) * size)


class StatsStore:
    """The stats of one sampling run: per layer, each captured batch with the CFG chunks (cond /
    uncond) its rows belong to. A lookup names the chunks of the batch in hand and gets the stored
    batch itself when it was captured with the same chunks (the usual case: no copy, one kernel call
    for the whole batch), else those chunks' rows gathered from the batches that hold them (ComfyUI
    split cond and uncond differently at the two steps; a batch joined so is kept for the next
    steps). A lookup whose mask or shape no longer matches is a miss. ``close()`` frees everything; the store is also a context manager."""

    def __init__(self) -> None:
        self._layers: dict[Hashable, list[_Entry]] = {}
        self.nbytes = 0
        self.peak_nbytes = 0
        self.device: str | None = None      # where the stats live (the device of the first put)

    def put(self, layer: Hashable, chunks: tuple, stats: AttentionStats) -> None:
        """Store ``stats`` of a batch made of ``chunks``; it replaces what held any of them."""
        chunks = tuple(chunks)
        kept = []
        for entry in self._layers.get(layer, []):
            if set(entry.chunks) & set(chunks):
                self.nbytes -= entry.stats.nbytes
            else:
                kept.append(entry)
        kept.append(_Entry(chunks, stats))
        self._layers[layer] = kept
        self.device = self.device or str(stats.residual.device)
        self.nbytes += stats.nbytes
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def get(self, layer: Hashable, chunks: tuple, q: torch.Tensor, mask: SparseMask) -> AttentionStats | None:
        chunks = tuple(chunks)
        entries = self._layers.get(layer, [])
        stats = next((entry.stats for entry in entries if entry.chunks == chunks), None)
        if stats is None:
            parts = []
            for chunk in chunks:
                entry = next((entry for entry in entries if chunk in entry.chunks), None)
                if entry is None:
                    return None
                parts.append(entry.stats.batch_rows(entry.rows_of(chunk)))
            if not parts or any(part.mask != parts[0].mask or part.weight != parts[0].weight for part in parts):
                return None
            if len(parts) == 1:
                stats = parts[0]
            else:               # joined once and kept as this batch: later steps take it as it is
                stats = AttentionStats(rho=torch.cat([p.rho for p in parts]),
                                       residual=torch.cat([p.residual for p in parts]),
                                       mask=parts[0].mask, weight=parts[0].weight)
                if stats.matches(q, mask):
                    self.put(layer, chunks, stats)
        return stats if stats.matches(q, mask) else None

    def drop(self, layer: Hashable) -> None:
        """Forget everything held for ``layer``."""
        for entry in self._layers.pop(layer, []):
            self.nbytes -= entry.stats.nbytes

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._layers.values())

    def close(self) -> None:
        self._layers.clear()
        self.nbytes = 0

    def __enter__(self) -> "StatsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
