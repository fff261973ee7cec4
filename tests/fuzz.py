"""Random attention calls through the core's entry points against the tests' reference attention.

Each case draws a token layout (N from 1 up, text before / after / both, image or video grids), a
mask kind, density and block size, batch, heads, a head dim (now and then one the pack does not
take), a dtype and a storage of q, k, v: (B, H, N, D), a (B, N, H, D) view, slices of a packed
projection, or a transpose of D. A case passes when the capture's output, rho and the sparse step
match the reference within the kernel tolerance, or when it is a documented fallback: the input
checks refuse it with a ValueError naming the problem (the ComfyUI dispatch then runs ComfyUI's own
attention). Anything else raising is a failure.

    python tests/fuzz.py --cases 300 --max-tokens 130000 --seconds 150     # on a GPU; prints a table
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from reference import dense_and_window, kernel_tolerance, rel_l2  # noqa: E402
from rettention import (HEAD_DIMS, MASK_KINDS, RhoWeight, SparseMask, TokenLayout, UnitWeight,  # noqa: E402
                        block_size_for, check_inputs)
from rettention.masks import BLOCK_SIZES  # noqa: E402

STORAGES = ("bhnd", "bnhd", "packed", "strided_d")
UNSUPPORTED_DIMS = (40, 160)


@dataclass(frozen=True)
class Case:
    layout: TokenLayout
    kind: str
    density: float
    block: int
    batch: int
    heads: int
    dim: int
    dtype: torch.dtype
    storage: str
    weight: str
    seed: int

    def __str__(self):
        l = self.layout
        return (f"N={l.n_tokens} grid={l.grid} text={l.text_before}/{l.text_after} {self.kind}@{self.density} "
                f"block={self.block} B={self.batch} H={self.heads} D={self.dim} {str(self.dtype)[6:]} "
                f"{self.storage} w={self.weight}")


def draw(rng: random.Random, max_tokens: int, seed: int) -> Case:
    target = max(1, int(math.exp(rng.uniform(0.0, math.log(max_tokens)))))
    text = rng.choice(["none", "before", "after", "both"]) if target > 8 else "none"
    text_tokens = min(target - 1, rng.choice([7, 77, 226, 512])) if text != "none" else 0
    before = text_tokens if text == "before" else (text_tokens // 2 if text == "both" else 0)
    after = text_tokens - before
    image = max(1, target - text_tokens)
    frames = min(image, rng.choice([1, 1, 2, 3, 5, 13, 21]))
    rest = max(1, image // frames)
    rows = rng.randint(1, max(1, int(1.5 * math.sqrt(rest))))
    grid = (frames, rows, max(1, rest // rows))
    layout = TokenLayout(grid, before, after)
    n = layout.n_tokens
    block = block_size_for(n) if rng.random() < 0.6 else rng.choice(BLOCK_SIZES)
    dim = rng.choice(UNSUPPORTED_DIMS) if rng.random() < 0.08 else rng.choice(HEAD_DIMS)
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.bfloat16])
    per_head = max(1, 2_000_000 // max(n, 1))                     # keeps the reference affordable
    heads = rng.randint(1, max(1, min(4, per_head)))
    batch = rng.choice([1, 1, 2]) if n < 60_000 else 1
    return Case(layout, rng.choice(MASK_KINDS), rng.choice([0.03125, 0.0625, 0.125, 0.25, 1.0]), block, batch,
                heads, dim, dtype, rng.choice(STORAGES), rng.choice(["one", "rho"]), seed)


def tensors(case: Case, device):
    b, h, n, d = case.batch, case.heads, case.layout.n_tokens, case.dim
    g = torch.Generator(device=device).manual_seed(case.seed)
    scale = 0.5 + 2.5 * torch.rand((), generator=g, device=device)

    def randn(*shape):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(case.dtype)
    if case.storage == "bhnd":
        return [randn(b, h, n, d) for _ in range(3)]
    if case.storage == "bnhd":
        return [randn(b, n, h, d).transpose(1, 2) for _ in range(3)]
    if case.storage == "packed":                                  # q, k, v sliced from one projection
        packed = randn(b, n, 3, h, d)
        return [packed[:, :, i].transpose(1, 2) for i in range(3)]
    return [randn(b, h, d, n).transpose(-1, -2) for _ in range(3)]   # the head dim strided


def run_case(case: Case, full, sparse, device) -> tuple[str, float]:
    """('ok', error) or ('fallback: <cause>', nan); raises on anything else."""
    mask = SparseMask(case.layout, case.density, case.kind, block_size=case.block)
    q, k, v = tensors(case, device)
    try:
        check_inputs(q, k, v, mask)
    except ValueError as error:
        return f"fallback: {str(error).split(';')[0]}", float("nan")
    weight = UnitWeight() if case.weight == "one" else RhoWeight()
    out, stats = full(q, k, v, mask, weight=weight)
    ref_dtype = torch.float64 if device.type == "cpu" else torch.float32
    ref, ref_lse, ref_w, ref_lse_w = dense_and_window(q, k, v, mask, dtype=ref_dtype)
    tol = kernel_tolerance(case.dtype)
    error = rel_l2(out, ref)
    rho_error = float((stats.rho.double() - torch.exp(ref_lse_w - ref_lse).double()).abs().max())
    w = torch.ones_like(stats.rho) if case.weight == "one" else stats.rho
    out_sparse = sparse(q, k, v, mask, stats, weight=weight)
    sparse_error = rel_l2(out_sparse, w[..., None].to(ref_dtype) * ref_w + stats.residual.to(ref_dtype))
    worst = max(error, sparse_error)
    if not (worst < tol and rho_error < 1e-2 and torch.isfinite(out_sparse).all()):
        raise AssertionError(f"{case}: capture {error:.2e}, sparse {sparse_error:.2e}, rho {rho_error:.2e} "
                             f"(tolerance {tol:g})")
    return "ok", worst


def fuzz(cases: int, max_tokens: int, device, full, sparse, seed: int = 0, seconds: float = float("inf"), log=None):
    rng = random.Random(seed)
    results = []
    start = time.perf_counter()
    for i in range(cases):
        if time.perf_counter() - start > seconds:
            break
        case = draw(rng, max_tokens, seed * 100_003 + i)
        outcome, error = run_case(case, full, sparse, device)
        results.append((case, outcome, error))
        if log:
            log(f"{i:4d} {outcome:42s} {error:9.2e}  {case}")
    return results


def table(results) -> str:
    lines = [f"{'outcome':54s} {'cases':>6s} {'max rel err':>12s}"]
    outcomes = sorted({o for _, o, _ in results})
    for outcome in outcomes:
        errs = [e for _, o, e in results if o == outcome]
        worst = max(errs) if outcome == "ok" else float("nan")
        lines.append(f"{outcome:54s} {len(errs):6d} {worst:12.2e}")
    ok = [c for c, o, _ in results if o == "ok"]
    lines.append(f"{'largest N within tolerance':54s} {max((c.layout.n_tokens for c in ok), default=0):6d}")
    for dtype in (torch.float16, torch.bfloat16):
        errs = [e for c, o, e in results if o == "ok" and c.dtype == dtype]
        lines.append(f"{'ok ' + str(dtype)[6:]:54s} {len(errs):6d} {max(errs, default=float('nan')):12.2e}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=130_000)
    parser.add_argument("--seconds", type=float, default=float("inf"), help="stop drawing cases after this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import rettention
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = fuzz(args.cases, args.max_tokens, device, rettention.attend_full, rettention.attend_sparse,
                   args.seed, args.seconds, log=lambda m: print(m, flush=True))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\nfuzz on {name}: {len(results)} cases, seed {args.seed}, N up to {args.max_tokens}")
    print(table(results))


if __name__ == "__main__":
    main()
