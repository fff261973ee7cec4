"""The sparse step's memory floor, for the benchmark: one pass that reads q, k, v and R and writes
out, the traffic no sparse-step kernel can avoid (at one key block per query block, k and v are read
about once), with no attention in it. Where this alone takes longer than a target, the target is
below what the H200's memory delivers at that shape.
"""
import triton
import triton.language as tl


@triton.jit
def _stream_floor(q, k, v, r, out, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    total = tl.load(q + offs, mask=ok).to(tl.float32) + tl.load(k + offs, mask=ok).to(tl.float32)
    total += tl.load(v + offs, mask=ok).to(tl.float32) + tl.load(r + offs, mask=ok).to(tl.float32)
    tl.store(out + offs, total.to(out.dtype.element_ty), mask=ok)


def stream_floor(q, k, v, r, out, block: int = 4096, num_warps: int = 8):
    """out = q + k + v + r elementwise (contiguous tensors of one shape)."""
    tensors = (q, k, v, r, out)
    if any(t.shape != q.shape or not t.is_contiguous() for t in tensors):
        raise ValueError("stream_floor wants contiguous tensors of one shape")
    _stream_floor[(triton.cdiv(q.numel(), block), )](*tensors, q.numel(), BLOCK=block, num_warps=num_warps)
    return out
