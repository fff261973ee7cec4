"""Re-ttention on CUDA through the Triton kernels in ``kernels/``: the glue that knows masks and stats.

Same semantics as :mod:`rettention.torch_path` (the oracle): S_i = the keys of the key blocks that
row i's query block lists; rho = exp(lse_window - lse); R_w = O - w0 * O_window with
w0 = weight.weight(rho, 0); a sparse step returns w * O_window + R_w, w = weight.weight(rho, k).

Capture step designs (DESIGN.md section 4): ``"split"``: the fastest dense attention that returns
its log-sum-exp (cuDNN) followed by the sparse kernel with the capture epilogue (reads O and lse,
writes rho and R); ``"fused"``: one kernel that walks all keys, the window's first. Neither wins
everywhere (``python -m rettention.bench`` on an H200: fused from 1.01x of cuDNN at CogVideoX, split
at HunyuanVideo's 3.1% band), so the first capture of a shape times both and keeps the faster, as
kernel launch configurations are tuned. The environment variable ``RETTENTION_CAPTURE``
(split/fused) forces one.

Per mask and device the block lists, the launch order (heaviest query blocks first) and the tuning
hint are built once and cached; a call makes no host sync and no N x N buffer.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import torch

from . import torch_path
from .masks import SparseMask
from .stats import AttentionStats
from .weights import CalibratedWeight, RhoRampWeight, RhoWeight, UnitWeight, WeightRule

# The kernels sit beside the core. Inside ComfyUI the repository is one package (<pack>.rettention
# next to <pack>.kernels); run from the repository root (tests, benchmarks) both are top-level.
if __package__ == "rettention":
    import kernels
else:
    from .. import kernels

CAPTURE_DESIGNS = ("split", "fused")
KERNEL_DTYPES = (torch.float16, torch.bfloat16)

_available: dict[torch.device, bool] = {}
_plans: "OrderedDict[tuple, _Plan]" = OrderedDict()
_MAX_PLANS = 64
_dense_broken: set[tuple] = set()


class _Plan:
    """What the kernels need for one mask on one device, built once."""

    __slots__ = ("counts", "indices", "order", "work_hint", "dense_counts", "dense_indices")

    def __init__(self, mask: SparseMask, device: torch.device):
        self.counts, self.indices = mask.block_lists(device)
        counts_host = mask.block_lists("cpu")[0].numpy()
        # Launch order: query blocks with the most key blocks (dense text rows) first, so that the
        # long programs do not trail at the end of the grid; stable, so image blocks keep their order.
        order = sorted(range(len(counts_host)), key=lambda qb: -int(counts_host[qb]))
        ascending = order == list(range(len(order)))
        self.order = None if ascending else torch.tensor(order, dtype=torch.int32, device=device)
        self.work_hint = kernels.work_hint(counts_host)
        self.dense_counts = None
        self.dense_indices = None

    def dense_lists(self, mask: SparseMask, device):
        if self.dense_counts is None:
            blocks = mask.key_blocks
            self.dense_counts = torch.full((blocks,), blocks, dtype=torch.int32, device=device)
            self.dense_indices = torch.arange(blocks, dtype=torch.int32, device=device).repeat(blocks, 1)
        return self.dense_counts, self.dense_indices


def _on(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _plan(mask: SparseMask, device: torch.device) -> _Plan:
    key = (mask, device)
    plan = _plans.get(key)
    if plan is None:
        plan = _Plan(mask, device)
        _plans[key] = plan
        while len(_plans) > _MAX_PLANS:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


def available(device) -> bool:
    """True when the kernels compile and run on ``device`` (checked once per device)."""
    device = torch.device(device)
    if device in _available:
        return _available[device]
    ok = False
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            if torch.cuda.get_device_capability(device) >= (8, 0):
                from .layout import TokenLayout
                mask = SparseMask(TokenLayout(grid=(1, 4, 8)), 0.5, "band", block_size=16)
                q = torch.randn(1, 1, 32, 64, device=device, dtype=torch.float16)
                counts, indices = mask.block_lists(device)
                with torch.cuda.device(device):
                    out = kernels.sparse_attention(q, q, q, counts, indices, 16)
                ok = bool(torch.isfinite(out).all())
        except Exception:                       # no compiler, unsupported GPU, ...
            ok = False
    _available[device] = ok
    return ok


def dense_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask | None = None):
    """The fastest dense attention that returns its natural-log log-sum-exp: (out, lse (B,H,N[,1]) fp32).

    cuDNN first, then flash, then the sparse kernel over all key blocks (needs ``mask``)."""
    key = (q.device, q.dtype, q.shape[-1])
    if ("cudnn",) + key not in _dense_broken:
        try:
            res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)
            return res[0], res[1]
        except Exception:
            _dense_broken.add(("cudnn",) + key)
    if ("flash",) + key not in _dense_broken:
        try:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)
            return res[0], res[1]
        except Exception:
            _dense_broken.add(("flash",) + key)
    if mask is None:
        raise RuntimeError("no dense attention with log-sum-exp available and no mask to build one")
    plan = _plan(mask, q.device)
    counts, indices = plan.dense_lists(mask, q.device)
    return kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, return_lse=True)


def _w0_argument(weight: WeightRule, heads: int, device):
    """w0 = weight(rho, 0) in a form the kernels evaluate: None (rho), (H,) per head, or 'raw'."""
    if isinstance(weight, (RhoWeight, RhoRampWeight)):
        return None                             # min(rho + 0, 1) = rho
    if isinstance(weight, UnitWeight):
        return torch.ones(heads, dtype=torch.float32, device=device)
    if isinstance(weight, CalibratedWeight) and tuple(weight.per_head.shape) == (heads,):
        return weight.per_head.to(device=device, dtype=torch.float32)
    return "raw"


def capture_design() -> str | None:
    """The design ``RETTENTION_CAPTURE`` forces, or None: timed per shape."""
    design = os.environ.get("RETTENTION_CAPTURE")
    return design if design in CAPTURE_DESIGNS else None


def _rows_readable(t: torch.Tensor) -> bool:
    """What a tensor descriptor reads as it is: unit stride along D, a 16-byte aligned base and every
    other stride a whole number of 16 bytes (also those of size-1 dimensions, which ``is_contiguous``
    ignores: a (B, H, D, 1) tensor transposed to (B, H, 1, D) passes it with a row stride of 1)."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all((s * size) % 16 == 0 for s in t.stride()[:-1])


def _readable(*tensors):
    """q, k, v as the kernels read them: one that a descriptor cannot read as it is (a transpose of D,
    odd strides) is copied once to plain strides, which costs one pass over it, far less than the
    attention that reads it; the outputs, made like q, are then plain too."""
    return tuple(t if _rows_readable(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
                 for t in tensors)


def full_with_stats(q, k, v, mask: SparseMask, weight: WeightRule, residual_dtype: torch.dtype,
                    design: str | None = None):
    """A capture step: dense output, rho and R_w (see the module docstring)."""
    if q.dtype not in KERNEL_DTYPES:
        return torch_path.full_with_stats(q, k, v, mask, weight, residual_dtype)
    q, k, v = _readable(q, k, v)
    batch, heads, n, _ = q.shape
    plan = _plan(mask, q.device)
    w0 = _w0_argument(weight, heads, q.device)

    def capture(design: str):
        if design == "fused":
            return kernels.capture_attention(q, k, v, plan.counts, plan.indices, mask.block_size,
                                             residual_dtype=residual_dtype, order=plan.order, w0=w0,
                                             work_hint=plan.work_hint)
        out, lse = dense_with_lse(q, k, v, mask)
        rho = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
        residual = torch.empty(q.shape, dtype=residual_dtype, device=q.device)
        kernels.sparse_attention(q, k, v, plan.counts, plan.indices, mask.block_size, order=plan.order,
                                 out_full=out, lse_full=lse, rho=rho, residual=residual, w0=w0,
                                 work_hint=plan.work_hint)
        return out, rho, residual

    with _on(q.device):
        design = design or capture_design() or kernels.choose(
            ("capture design", q.device, q.dtype, tuple(q.shape), residual_dtype, mask.block_size,
             plan.work_hint, plan.order is not None), list(CAPTURE_DESIGNS), capture)
        out, rho, residual = capture(design)
    if isinstance(w0, str):                     # any other rule: the kernel left O_window in R
        w = weight.weight(rho, 0, slice(None)).float()
        residual = (out.float() - w[..., None] * residual.float()).to(residual_dtype)
    return out, AttentionStats(rho=rho, residual=residual, mask=mask, weight=weight)


def sparse_with_stats(q, k, v, stats: AttentionStats, steps_since_capture: int):
    """A sparse step: w * O_window + R_w in one kernel (w computed here, (B,H,N), no copy for w = rho)."""
    if q.dtype not in KERNEL_DTYPES:
        return torch_path.sparse_with_stats(q, k, v, stats, steps_since_capture)
    q, k, v = _readable(q, k, v)
    mask = stats.mask
    plan = _plan(mask, q.device)
    w = stats.weight.weight(stats.rho, steps_since_capture, slice(None))
    residual = stats.residual
    if residual.stride(-1) != 1:
        residual = residual.contiguous()
    with _on(q.device):
        return kernels.sparse_attention(q, k, v, plan.counts, plan.indices, mask.block_size,
                                        order=plan.order, weight=w, residual=residual,
                                        work_hint=plan.work_hint)

