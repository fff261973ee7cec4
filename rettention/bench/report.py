"""The core's numbers, on any machine: ``python -m rettention.bench report``.

1. Achieved density (pairs the blocks compute) per mask kind for requested 3.125 / 6.25 / 12.5%.
2. What each part of the reshape buys, on a smooth synthetic signal: tokens on a grid whose
   q, k, v are smooth random fields of position (nearby tokens alike, so attention is local with a
   long tail), captured at one step and attended sparsely at a nearby step (the fields drift a
   little, as between two sampling steps). Relative L2 error against dense attention of: the
   plain window output, ρ only, the residual only (w = 1), and Re-ttention (ρ·O_S + R).
"""
from __future__ import annotations

import argparse
import math

import torch

from ..attention import attend_dense, attend_full, attend_sparse
from ..layout import TokenLayout
from ..masks import MASK_KINDS, SparseMask
from ..weights import UnitWeight

DENSITIES = (0.03125, 0.0625, 0.125)
LAYOUTS = {"4096 (1,64,64)": TokenLayout((1, 64, 64)), "32760 (21,30,52)": TokenLayout((21, 30, 52))}


def density_table(block_size: int = 128) -> list[str]:
    lines = [f"{'N (grid)':<18}{'kind':<9}" + "".join(f"{f'asked {d:.4f}':>15}" for d in DENSITIES)]
    for name, layout in LAYOUTS.items():
        for kind in MASK_KINDS:
            cells = "".join(f"{SparseMask(layout, d, kind, block_size).density:>15.4f}" for d in DENSITIES)
            lines.append(f"{name:<18}{kind:<9}{cells}")
    return lines


def smooth_field(layout: TokenLayout, channels: int, generator: torch.Generator, frequency: float = 1.5):
    """(N, channels): random Fourier features of the token's (t, y, x) position, unit variance."""
    frames, height, width = layout.grid
    t, y, x = torch.meshgrid(torch.arange(frames) / max(frames, 1), torch.arange(height) / height,
                             torch.arange(width) / width, indexing="ij")
    position = torch.stack([t, y, x], -1).reshape(-1, 3)
    omega = torch.randn(3, channels, generator=generator) * frequency * 2 * math.pi
    phase = torch.rand(channels, generator=generator) * 2 * math.pi
    return torch.cos(position @ omega + phase) * math.sqrt(2)


def signal(layout, heads, dim, generator, base=None, drift=0.0, sharpness=3.0):
    fields = [smooth_field(layout, heads * dim, generator) for _ in range(3)]
    if base is not None:
        fields = [b + drift * f for b, f in zip(base, fields)]
    q, k, v = (f.reshape(1, -1, heads, dim).transpose(1, 2) for f in fields)
    return fields, (q * sharpness ** 0.5, k * sharpness ** 0.5, v)


def reshape_table(kind: str = "band", drift: float = 0.1, seed: int = 0) -> list[str]:
    layout = TokenLayout((1, 64, 64))
    heads, dim = 4, 64
    g = torch.Generator().manual_seed(seed)
    fields, (q0, k0, v0) = signal(layout, heads, dim, g)
    _, (q1, k1, v1) = signal(layout, heads, dim, g, base=fields, drift=drift)
    dense = attend_dense(q1, k1, v1)

    def err(out):
        return float((out - dense).norm() / dense.norm())

    lines = [f"{'density':<10}{'achieved':>9}{'mean rho':>10}{'plain':>9}{'rho only':>10}{'R only':>9}{'rho + R':>9}"]
    for density in DENSITIES:
        mask = SparseMask(layout, density, kind)
        _, rho_stats = attend_full(q0, k0, v0, mask)
        _, unit_stats = attend_full(q0, k0, v0, mask, weight=UnitWeight())
        plain = attend_sparse(q1, k1, v1, mask, unit_stats, weight=UnitWeight()) - unit_stats.residual
        rho = rho_stats.rho[..., None]
        lines.append(f"{density:<10.4f}{mask.density:>9.4f}{float(rho.mean()):>10.3f}{err(plain):>9.4f}"
                     f"{err(rho * plain):>10.4f}"
                     f"{err(attend_sparse(q1, k1, v1, mask, unit_stats, weight=UnitWeight())):>9.4f}"
                     f"{err(attend_sparse(q1, k1, v1, mask, rho_stats)):>9.4f}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="band", choices=MASK_KINDS)
    parser.add_argument("--drift", type=float, default=0.1, help="how far the fields move between the steps")
    args = parser.parse_args(argv)
    print("Achieved density (fraction of (query, key) pairs computed), block 128")
    print("\n".join(density_table()))
    print(f"\nRelative L2 error vs dense, smooth signal, N=4096 (1,64,64), {args.kind}, drift {args.drift}")
    print("\n".join(reshape_table(args.kind, args.drift)))


