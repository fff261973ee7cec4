"""Sparse attention masks, kept as block lists: for each block of queries, the key blocks it visits.

A mask is designed per token and computed per block. Each image query i has a token window
(the keys it should see); text rows and text columns are always dense. A query block visits
every key block that holds a key of any of its queries' windows, and the sparse step computes
*all* keys of the visited blocks. So the key set S_i of row i is "the keys in the blocks its
query block visits": that is the set whose softmax denominator ρ compares with the full one,
and it is the same at the capture and the sparse steps.

Windows, in image-local raster order (frame t, row y, column x; a window never leaves the
grid: near an edge it is shifted inward, so every query sees the same number of keys):

- ``band``:    consecutive tokens centred on the query *block*: ``density`` times the key
               blocks, rounded to the odd count in (x - 1, x + 1] so that the band centres, of
               whole blocks. That is a band of key blocks, the paper's PixArt / Hunyuan-DiT mask
               as block-sparse kernels and FlexAttention run it. The queries of one block see
               the same keys anyway; sizing the band in blocks computes the asked density, where
               a token window centred on each query spilled over into one or two blocks more.
- ``tube``:    ``round(density * H*W)`` consecutive in-frame positions centred on the query's,
               taken at that same place in every frame (the paper's CogVideoX mask).
- ``local3d``: a (t, h, w) box around the query whose volume is about ``density * T*H*W``.
               Blocks are runs of raster tokens, so a block spans part of a grid row or
               several rows; a box narrower than the rows it touches wastes most of each
               block. The box is therefore chosen, among shapes of the right volume (full
               rows, half rows, quarter rows, or every side the same fraction of the grid),
               as the one whose blocks compute the fewest pairs at the mask's block size.

Building costs O(key blocks) memory per query block, never an N x N tensor.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .layout import TokenLayout

MASK_KINDS = ("band", "tube", "local3d")
BLOCK_SIZES = (16, 32, 64, 128)


def block_size_for(n_tokens: int) -> int:
    """The mask block size for a sequence: 128 (what the kernels are tuned for) from 2048 tokens
    on, smaller below so that short sequences still have enough blocks to be sparse."""
    for block in (128, 64, 32):
        if n_tokens >= 16 * block:
            return block
    return 16


def window_start(position, length: int, width: int):
    """First index of a ``width`` window centred on ``position`` and shifted to fit in ``[0, length)``."""
    return np.clip(np.asarray(position) - width // 2, 0, length - width)


def window_shape(layout: TokenLayout, density: float, kind: str, block_size: int) -> tuple[int, ...]:
    """The window size per kind: (tokens,) for band, (in-frame tokens,) for tube, (t, h, w) for local3d."""
    frames, height, width = layout.grid
    if kind == "band":
        blocks = 2 * math.floor(density * -(-layout.image_tokens // block_size) / 2) + 1
        return (min(layout.image_tokens, blocks * block_size),)
    if kind == "tube":
        return (_fraction_of(height * width, density),)
    if kind == "local3d":
        boxes = {_box_for_density(layout.grid, density, row) for row in (width, -(-width // 2), -(-width // 4), None)}
        # least waste: pairs the blocks compute per pair inside the windows
        return min(sorted(boxes), key=lambda box: build_block_lists(layout, kind, box, block_size).computed_pairs
                   / (math.prod(box) * layout.image_tokens))
    raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")


def _fraction_of(length: int, density: float) -> int:
    return int(min(length, max(1, round(density * length))))


def _box_for_density(grid: tuple[int, int, int], density: float, row: int | None) -> tuple[int, int, int]:
    """A (t, h, w) box of volume close to ``density * T*H*W``.

    With ``row`` None every side is the same fraction of its grid side (floor/ceil roundings,
    closest volume). Otherwise w = ``row``, and (t, h) is chosen with a volume within 10% of the
    target when one exists, then with proportions closest to the grid's (t/T ~ h/H)."""
    frames, height, width = grid
    target = density * frames * height * width
    if row is None:
        free = [side for side in grid if side > 1]
        scale = density ** (1.0 / len(free)) if free else 1.0
        choices = [sorted({min(side, max(1, math.floor(side * scale))), min(side, max(1, math.ceil(side * scale)))})
                   for side in grid]
        boxes = [(t, h, w) for t in choices[0] for h in choices[1] for w in choices[2]]
        return min(boxes, key=lambda box: (abs(math.prod(box) - target), -math.prod(box)))

    def score(box):
        t, h, _ = box
        miss = abs(math.prod(box) - target) / target
        return (miss > 0.1, abs(math.log((t / frames) / (h / height))), miss)

    boxes = [(t, min(height, max(1, round(target / (t * row)))), row) for t in range(1, frames + 1)]
    return min(boxes, key=score)


# --- key-token ranges for one block of image queries [first, last] (image-local, inclusive) -------

def _band_key_ranges(layout, shape, first, last, block_size):
    (width,) = shape
    # shifted inward in whole blocks: the last band ends at the padded end of the blocks, so a
    # ragged last block does not make the bands near the end one block wider
    padded = max(width, -(-layout.image_tokens // block_size) * block_size)
    start = window_start((first + last + 1) // 2, padded, width)
    return np.array([start]), np.array([min(start + width, layout.image_tokens)])


def _tube_key_ranges(layout, shape, first, last, block_size):
    (width,) = shape
    frames, height, row_width = layout.grid
    frame = height * row_width
    if last - first + 1 >= frame:
        return np.array([0]), np.array([layout.image_tokens])
    p_first, p_last = first % frame, last % frame
    if first // frame == last // frame:     # in-frame positions p_first..p_last
        lo, hi = window_start([p_first, p_last], frame, width)
        in_frame = [(lo, hi + width)]
    else:                                    # the block wraps into the next frame
        in_frame = [(window_start(p_first, frame, width), frame),
                    (0, window_start(p_last, frame, width) + width)]
    offsets = np.arange(frames) * frame
    starts = np.concatenate([offsets + lo for lo, _ in in_frame])
    ends = np.concatenate([offsets + hi for _, hi in in_frame])
    return starts, ends


def _local3d_key_ranges(layout, shape, first, last, block_size):
    box_t, box_h, box_w = shape
    frames, height, width = layout.grid
    starts, ends = [], []
    for row in range(first // width, last // width + 1):      # one grid row (t, y) at a time
        t, y = divmod(row, height)
        x_first = first - row * width if row == first // width else 0
        x_last = last - row * width if row == last // width else width - 1
        t0 = int(window_start(t, frames, box_t))
        y0 = int(window_start(y, height, box_h))
        x_lo = int(window_start(x_first, width, box_w))
        x_hi = int(window_start(x_last, width, box_w)) + box_w
        rows = (np.arange(t0, t0 + box_t)[:, None] * height + np.arange(y0, y0 + box_h)[None, :]).ravel()
        starts.append(rows * width + x_lo)
        ends.append(rows * width + x_hi)
    return np.concatenate(starts), np.concatenate(ends)


_KEY_RANGES = {"band": _band_key_ranges, "tube": _tube_key_ranges, "local3d": _local3d_key_ranges}


@dataclass(frozen=True)
class BlockLists:
    """Per query block q: ``counts[q]`` key blocks, ascending in ``indices[q, :counts[q]]``.
    Rows are padded with their last valid index, so a padded load stays in bounds."""

    counts: np.ndarray        # (query_blocks,) int32
    indices: np.ndarray       # (query_blocks, max_count) int32
    computed_pairs: int       # (query, key) pairs inside the visited blocks, tails clipped


@functools.lru_cache(maxsize=256)
def build_block_lists(layout: TokenLayout, kind: str, shape: tuple[int, ...], block_size: int) -> BlockLists:
    """The block lists of a mask with window ``shape`` (cached: a run builds each shape's mask once)."""
    key_ranges = _KEY_RANGES[kind]
    n = layout.n_tokens
    blocks = -(-n // block_size)
    lists = []
    for q in range(blocks):
        r0, r1 = q * block_size, min(n, (q + 1) * block_size)
        if r0 < layout.image_start or r1 > layout.image_end:      # text rows are dense
            lists.append(np.arange(blocks, dtype=np.int32))
            continue
        starts, ends = key_ranges(layout, shape, r0 - layout.image_start, r1 - 1 - layout.image_start, block_size)
        starts = np.concatenate([starts + layout.image_start, [0, layout.image_end]])
        ends = np.concatenate([ends + layout.image_start, [layout.text_before, n]])
        keep = ends > starts
        cover = np.zeros(blocks + 1, dtype=np.int64)     # difference array over key blocks
        np.add.at(cover, starts[keep] // block_size, 1)
        np.add.at(cover, (ends[keep] - 1) // block_size + 1, -1)
        lists.append(np.flatnonzero(np.cumsum(cover[:blocks]) > 0).astype(np.int32))

    counts = np.array([len(keys) for keys in lists], dtype=np.int32)
    indices = np.empty((blocks, int(counts.max())), dtype=np.int32)
    for q, keys in enumerate(lists):
        indices[q, : len(keys)] = keys
        indices[q, len(keys):] = keys[-1]
    key_block_sizes = np.full(blocks, block_size, dtype=np.int64)
    key_block_sizes[-1] = n - (blocks - 1) * block_size
    query_block_sizes = key_block_sizes
    computed = int(sum(int(query_block_sizes[q]) * int(key_block_sizes[keys].sum())
                       for q, keys in enumerate(lists)))
    return BlockLists(counts=counts, indices=indices, computed_pairs=computed)


class SparseMask:
    """A block-sparse attention mask over a :class:`TokenLayout`.

    ``requested_density`` is what was asked for; ``density`` is the fraction of (query, key)
    pairs the sparse step computes, measured on the blocks (text rows/columns and block
    granularity make it larger). Immutable; equal masks hash equal, so a mask can key caches.
    """

    __slots__ = ("layout", "requested_density", "kind", "block_size", "window", "_lists", "_on_device")

    def __init__(self, layout: TokenLayout, density: float, kind: str = "band", block_size: int = 128):
        if not isinstance(layout, TokenLayout):
            raise ValueError(f"layout must be a TokenLayout, got {type(layout).__name__}")
        if not (isinstance(density, (int, float)) and math.isfinite(density) and 0.0 < density <= 1.0):
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size!r}")
        self.layout = layout
        self.requested_density = float(density)
        self.kind = kind
        self.block_size = int(block_size)
        self.window = window_shape(layout, self.requested_density, kind, self.block_size)
        self._lists = build_block_lists(layout, kind, self.window, self.block_size)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __setattr__(self, name, value):
        if hasattr(self, "_on_device"):
            raise AttributeError("SparseMask is immutable")
        object.__setattr__(self, name, value)

    def _key(self):
        return (self.layout, self.requested_density, self.kind, self.block_size)

    def __eq__(self, other):
        return isinstance(other, SparseMask) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"SparseMask({self.layout}, density={self.requested_density}, kind={self.kind!r}, "
                f"block_size={self.block_size}, achieved={self.density:.4f})")

    @property
    def n_tokens(self) -> int:
        return self.layout.n_tokens

    @property
    def query_blocks(self) -> int:
        return len(self._lists.counts)

    @property
    def key_blocks(self) -> int:
        return self.query_blocks

    @property
    def density(self) -> float:
        """Fraction of (query, key) pairs inside the visited blocks."""
        return self._lists.computed_pairs / float(self.n_tokens) ** 2

    @property
    def covers_all_keys(self) -> bool:
        """True when every query block visits every key block (the sparse step is dense)."""
        return bool((self._lists.counts == self.key_blocks).all())

    def key_block_list(self, query_block: int) -> np.ndarray:
        """The ascending key blocks that ``query_block`` visits."""
        return self._lists.indices[query_block, : self._lists.counts[query_block]]

    def block_lists(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts, indices)`` as int32 tensors on ``device`` (cached per device)."""
        device = torch.device(device if device is not None else "cpu")
        if device not in self._on_device:
            self._on_device[device] = (
                torch.from_numpy(self._lists.counts).to(device),
                torch.from_numpy(self._lists.indices).to(device),
            )
        return self._on_device[device]
