"""The attention entry points: input checks, then the Triton kernels on CUDA or the PyTorch path.

Shapes are (B, H, N, D) (a transposed view of (B, N, H, D) works as it is), one mask per call.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import torch_path
from .masks import SparseMask
from .stats import AttentionStats
from .weights import RhoWeight, WeightRule

log = logging.getLogger("rettention")

HEAD_DIMS = (64, 72, 80, 88, 96, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask | None = None) -> None:
    """Raise ValueError naming the problem unless q, k, v are usable (B, H, N, D) inputs for ``mask``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D (B, H, N, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: fp16, bf16, fp32")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} is not supported; supported: {HEAD_DIMS}")
    if mask is not None and q.shape[2] != mask.n_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but the mask's layout has {mask.n_tokens}")


@functools.lru_cache(maxsize=None)
def kernels_unavailable(device: torch.device) -> str | None:
    """None when attention on the CUDA ``device`` runs the Triton kernels, else why not (a sentence).
    (The kernels need triton >= 3.4 for its tensor descriptors, and a GPU of compute capability 8.0+.)
    Checked once per device: the adapter and the entry points ask on every call."""
    try:
        from . import triton_path
    except ImportError as error:
        return f"Triton kernels unavailable ({error})"
    if not triton_path.available(device):
        return f"Triton kernels cannot run on {device}"
    return None


def _backend(q: torch.Tensor):
    """The Triton path for CUDA tensors when it can run there, else the PyTorch path."""
    if not q.is_cuda:
        _warn_once("cpu", f"Re-ttention: attention on {q.device} runs the PyTorch path (slow); "
                          "the Triton kernels need a CUDA GPU")
        return torch_path
    problem = kernels_unavailable(q.device)
    if problem:
        _warn_once("kernels", f"Re-ttention: {problem}; using the PyTorch path")
        return torch_path
    from . import triton_path
    return triton_path


def attend_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain dense attention. On CUDA cuDNN goes first: left to its own order SDPA picked flash on
    the H200, at 1.3-1.9x cuDNN's time (rettention.bench)."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
    try:
        with sdpa_kernel(backends, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)
    except TypeError:                           # torch without set_priority: SDPA's own order
        return F.scaled_dot_product_attention(q, k, v)


def attend_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask, *,
                weight: WeightRule = RhoWeight(), residual_dtype: torch.dtype | None = None,
                ) -> tuple[torch.Tensor, AttentionStats]:
    """A capture step: dense attention and the stats (ρ and R_w) a later sparse step needs.

    ``residual_dtype`` is the storage dtype of R_w (default: the input dtype). Values are not
    inspected (that would cost a host sync per call): NaN or Inf in the inputs reach the output and
    the stats of the rows they reach, as they reach dense attention's output.
    """
    check_inputs(q, k, v, mask)
    residual_dtype = residual_dtype or q.dtype
    return _backend(q).full_with_stats(q, k, v, mask, weight, residual_dtype)


def attend_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask,
                  stats: AttentionStats, *, weight: WeightRule = RhoWeight(),
                  steps_since_capture: int = 1) -> torch.Tensor:
    """A sparse step: block-sparse attention over ``mask``, reshaped with the captured stats,
    ``out = w * O_sparse + R_w`` with ``w = weight.weight(rho, steps_since_capture)``.

    ``weight`` must be the rule the stats were captured with. As in dense attention, a NaN or Inf
    in a row of q gives that output row NaN and leaves the other rows alone; nothing else is inspected.
    """
    check_inputs(q, k, v, mask)
    if not isinstance(stats, AttentionStats) or not stats.matches(q, mask):
        raise ValueError("stats were captured for another mask, shape or device than this call's")
    if stats.weight != weight:
        raise ValueError(f"stats were captured with weight rule {stats.weight!r}, not {weight!r}")
    if steps_since_capture < 0:
        raise ValueError(f"steps_since_capture must be >= 0, got {steps_since_capture}")
    return _backend(q).sparse_with_stats(q, k, v, stats, steps_since_capture)
