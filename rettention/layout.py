"""Where the image/video tokens and the text tokens sit in one attention sequence."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """A sequence of ``text_before`` text tokens, ``T*H*W`` image tokens in raster
    order (frame, row, column), then ``text_after`` text tokens.

    Images are ``grid=(1, H, W)``; a 2-tuple ``(H, W)`` is accepted and means the same.
    """

    grid: tuple[int, int, int]
    text_before: int = 0
    text_after: int = 0

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.grid)
        if len(grid) == 2:
            grid = (1,) + grid
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be (T, H, W) of positive ints, got {self.grid!r}")
        if self.text_before < 0 or self.text_after < 0:
            raise ValueError(
                f"text_before and text_after must be >= 0, got {self.text_before}, {self.text_after}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "text_before", int(self.text_before))
        object.__setattr__(self, "text_after", int(self.text_after))

    @property
    def image_tokens(self) -> int:
        frames, height, width = self.grid
        return frames * height * width

    @property
    def n_tokens(self) -> int:
        return self.text_before + self.image_tokens + self.text_after

    @property
    def image_start(self) -> int:
        """Index of the first image token in the sequence."""
        return self.text_before

    @property
    def image_end(self) -> int:
        """One past the index of the last image token."""
        return self.text_before + self.image_tokens
