"""Benchmark of the Re-ttention kernels against dense and sparse peers (a script, not a test).

    python -m rettention.bench [--shapes wan_720p,flux_1024] [--densities 0.03125,0.125]
                               [--kinds band,local3d] [--no-flex] [--fused all|first|none] [--json F]

For each shape (B, H, N, D, bf16) it prints median ms and the ratio to cuDNN dense attention, all
measured in one run on the same inputs (each timed call is one CUDA-graph replay after an L2 flush,
so the table holds GPU time, not Python launch overhead; see ``bench_ms``): cuDNN SDPA, flash SDPA,
cuDNN + its log-sum-exp, the memory floor (one pass reading q, k, v, R and writing out:
``stream_floor.py``), and per mask (kind, density): PyTorch FlexAttention on the same block
lists (``BlockMask.from_kv_blocks``), our sparse step, our capture step (design "split": cuDNN +
lse, then the sparse kernel's capture epilogue; design "fused": one kernel over all keys, the window's
first; the pack times both per shape and keeps the faster). "eff" is the computed-block efficiency:
(cuDNN dense ms x mask density) / ms, i.e. the fraction of cuDNN's dense FLOP rate reached on the
blocks actually computed. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from .. import triton_path
from ..layout import TokenLayout
from ..masks import SparseMask
from ..weights import RhoWeight
from .stream_floor import stream_floor

# name: (B, H, D, layout). First the shapes (B, H, N, D) of the kernel issue with every token an image
# token, as the targets and the FlexAttention baseline (../shared/h200-peer-sparse.txt) were measured:
# a band over N tokens. Where the model has text tokens, N is kept by a one-frame grid of N tokens
# (its local3d is a 2-D box there). The "+text" rows are the models' own layouts: text rows and
# columns dense, the video grid for local3d.
SHAPES = {
    "pixart_1024": (2, 16, 72, TokenLayout(grid=(1, 64, 64))),
    "pixart_2048": (2, 16, 72, TokenLayout(grid=(1, 128, 128))),
    "flux_1024": (1, 24, 128, TokenLayout(grid=(1, 64, 72))),
    "cogvideox_2b": (2, 30, 64, TokenLayout(grid=(1, 176, 101))),
    "wan_480p": (1, 40, 128, TokenLayout(grid=(21, 30, 52))),
    "wan_720p": (1, 40, 128, TokenLayout(grid=(21, 45, 80))),
    "hunyuan_720p": (1, 24, 128, TokenLayout(grid=(1, 112, 1063))),
    "flux_1024+text": (1, 24, 128, TokenLayout(grid=(1, 64, 64), text_before=512)),
    "cogvideox_2b+text": (2, 30, 64, TokenLayout(grid=(13, 30, 45), text_before=226)),
    "hunyuan_720p+text": (1, 24, 128, TokenLayout(grid=(33, 45, 80), text_after=256)),
}
DENSITIES = (0.03125, 0.0625, 0.125)
KINDS = ("band", "local3d")


def bench_ms(fn, budget_ms: float = 400.0) -> float:
    """Median ms of ``fn`` over repeated runs timed with CUDA events, the L2 cache flushed before
    each (as ``triton.testing.do_bench``). ``fn`` is captured once in a CUDA graph and each run is a
    replay (``kernels.graph_timer``), so the time is the GPU's, not Python's launch overhead (which
    at a few thousand tokens is longer than the kernels); ``fn`` is called directly when it cannot
    be captured."""
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    time_ms = triton_path.kernels.graph_timer(fn)       # compile, tune, build caches; capture
    first = max(time_ms()[0], 1e-3)
    reps = int(min(200, max(5, budget_ms / first)))
    return statistics.median(time_ms(samples=reps, before=flush.zero_))


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return run


def _flex_setup():
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)

    def block_mask(mask: SparseMask, device):
        counts, indices = mask.block_lists(device)
        blocks = mask.key_blocks
        padded = torch.zeros(blocks, blocks, dtype=torch.int32, device=device)
        padded[:, : indices.shape[1]] = indices
        return BlockMask.from_kv_blocks(counts[None, None], padded[None, None],
                                        BLOCK_SIZE=mask.block_size, seq_lengths=(mask.n_tokens, mask.n_tokens))
    return compiled, block_mask


def run(shapes, densities, kinds, flex=True, fused="all", log=print):
    rows = []
    torch.manual_seed(0)
    flex_fn = block_mask_of = None
    if flex:
        try:
            flex_fn, block_mask_of = _flex_setup()
        except Exception as error:                      # noqa: BLE001
            log(f"FlexAttention unavailable: {error}")
    for name in shapes:
        batch, heads, dim, layout = SHAPES[name]
        n = layout.n_tokens
        q, k, v = (torch.randn(batch, heads, n, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        from torch.nn.attention import SDPBackend
        cudnn = bench_ms(lambda: _sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v))

        def add(impl, kind, density, achieved, ms, eff=None):
            rows.append(dict(shape=name, B=batch, H=heads, N=n, D=dim, impl=impl, kind=kind, density=density,
                             achieved=achieved, ms=ms, pct=100.0 * ms / cudnn, eff=eff))
            log(f"{name:14s} {impl:16s} {kind:8s} {density:7.4f} {ms:9.3f} ms {100 * ms / cudnn:7.2f}%"
                + (f"  eff {100 * eff:5.1f}%" if eff is not None else ""))

        add("cudnn", "dense", 1.0, 1.0, cudnn)
        add("cudnn+lse", "dense", 1.0, 1.0, bench_ms(lambda: triton_path.dense_with_lse(q, k, v)))
        add("flash", "dense", 1.0, 1.0, bench_ms(lambda: _sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v)))
        r, out = torch.randn_like(q), torch.empty_like(q)
        add("memory floor", "stream", 1.0, 1.0,
            min(bench_ms(lambda: stream_floor(q, k, v, r, out, block, warps))
                for block, warps in ((2048, 4), (4096, 8), (8192, 8))))
        del r, out
        first = True
        for kind in kinds:
            for density in densities:
                mask = SparseMask(layout, density, kind)
                achieved = mask.density
                if flex_fn is not None:
                    try:
                        bm = block_mask_of(mask, q.device)
                        ms = bench_ms(lambda: flex_fn(q, k, v, block_mask=bm))
                        add("flex", kind, density, achieved, ms, cudnn * achieved / ms)
                    except Exception as error:          # noqa: BLE001
                        log(f"flex failed on {name}: {type(error).__name__}: {error}"[:300])
                out, stats = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype, design="split")
                ms = bench_ms(lambda: triton_path.sparse_with_stats(q, k, v, stats, 1))
                add("sparse", kind, density, achieved, ms, cudnn * achieved / ms)
                del out
                ms = bench_ms(lambda: triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype,
                                                                  design="split"))
                add("capture(split)", kind, density, achieved, ms)
                if fused == "all" or (fused == "first" and first):
                    ms = bench_ms(lambda: triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype,
                                                                      design="fused"))
                    add("capture(fused)", kind, density, achieved, ms)
                first = False
                del stats
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def print_table(rows, out=sys.stdout):
    print(f"\nRe-ttention benchmark on {torch.cuda.get_device_name()} (bf16, median ms; % of cuDNN dense; "
          "eff = % of cuDNN dense FLOP rate on the computed blocks; memory floor = one pass reading q, k, v, R "
          "and writing out, the sparse step's unavoidable traffic)", file=out)
    print(f"{'shape (B,H,N,D)':34s} {'impl':15s} {'kind':8s} {'asked':>7s} {'blocks':>7s} {'ms':>9s} "
          f"{'% cuDNN':>8s} {'eff':>6s}", file=out)
    last = None
    for r in rows:
        shape = f"{r['shape']} ({r['B']},{r['H']},{r['N']},{r['D']})" if r["shape"] != last else ""
        last = r["shape"]
        eff = f"{100 * r['eff']:5.1f}%" if r["eff"] is not None else ""
        print(f"{shape:34s} {r['impl']:15s} {r['kind']:8s} {r['density']:7.4f} {r['achieved']:7.4f} "
              f"{r['ms']:9.3f} {r['pct']:7.2f}% {eff:>6s}", file=out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--densities", default=",".join(str(d) for d in DENSITIES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--fused", choices=("all", "first", "none"), default="all",
                        help="measure the one-kernel capture design at every mask, the first mask only, or not")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("rettention.bench needs a CUDA GPU")
    if not triton_path.available(torch.device("cuda")):
        sys.exit("the Triton kernels cannot run on this GPU")
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    rows = run(shapes, [float(d) for d in args.densities.split(",")], args.kinds.split(","),
               flex=not args.no_flex, fused=args.fused, log=lambda m: print(m, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("\ntuned launch configs:")
    for key, config in triton_path.kernels.cached_choices().items():
        if isinstance(config, str):         # the capture design timed for a shape (triton_path)
            print(f"  {key[0]} (B,H,N,D)={key[3]} MB={key[5]} work={key[6]}: {config}")
            continue
        chosen = " ".join(f"{name}={value}" for name, value in config._asdict().items() if value)
        print(f"  {key[0]} D={key[3]} MB={key[4]} N={key[5]} BH={key[6]} mode={key[7]} work={key[9]}: {chosen}")
    print_table(rows)
