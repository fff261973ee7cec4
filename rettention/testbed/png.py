"""A minimal PNG writer (8-bit RGB, zlib) so that the testbed needs no image library."""
from __future__ import annotations

import os
import struct
import zlib

import torch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str, image: torch.Tensor) -> None:
    """Write ``image`` (3, H, W), values in [-1, 1], as an 8-bit RGB PNG."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    height, width = pixels.shape[1:]
    rows = pixels.permute(1, 2, 0).reshape(height, width * 3).numpy()
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def grid(tiles: list[list[torch.Tensor]], pad: int = 2, fill: float = 1.0) -> torch.Tensor:
    """Rows of (3, h, w) tiles (all the same size) into one (3, H, W) image with ``pad`` pixels between."""
    h, w = tiles[0][0].shape[1:]
    cols = max(len(row) for row in tiles)
    out = torch.full((3, len(tiles) * (h + pad) + pad, cols * (w + pad) + pad), fill)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[:, y:y + h, x:x + w] = tile.detach().float().cpu()
    return out
