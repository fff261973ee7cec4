"""Triton kernels for Re-ttention. They know tensors, strides, block lists and block sizes; nothing else.

- :func:`sparse_attention`: block-sparse flash attention over per-query-block key-block lists, with
  the reshape (out = w * O^S + R) or the capture epilogue (rho, R from a dense O and lse) fused.
  On Hopper a warp-specialised Gluon kernel (``sparse_attention_ws.py``) is one of its launch
  configurations (plain and sparse-step epilogues).
- :func:`capture_attention`: the capture step in one kernel (dense + window accumulators); on
  Hopper also a warp-specialised Gluon kernel (``capture_attention_ws.py``) that walks the window's
  key tiles first. The two Gluon kernels share their pieces (``_ws_parts.py``).
- :func:`choose`, :func:`cached_choices`: the launchers' tuning cache (``_tuning.py``), which times
  candidates with :func:`graph_timer` (CUDA-graph replays timed by CUDA events; the benchmark's
  timer too).
"""
from ._tuning import cached_choices, choose, graph_timer, split_head_dim
from .capture_attention import capture_attention
from .sparse_attention import sparse_attention, work_hint

__all__ = ["sparse_attention", "capture_attention", "work_hint", "split_head_dim", "cached_choices", "choose",
           "graph_timer"]
