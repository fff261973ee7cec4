"""Re-ttention core: token layouts, sparse masks, schedules, run state and the attention entry points.

Host-free: importing this package never imports ComfyUI.
"""
from .attention import HEAD_DIMS, attend_dense, attend_full, attend_sparse, check_inputs, kernels_unavailable
from .layout import TokenLayout
from .masks import MASK_KINDS, SparseMask, block_size_for
from .schedule import CAPTURE, DENSE, SPARSE, Schedule, StepPlan, run_progress
from .stats import AttentionStats, StatsStore
from .weights import CalibratedWeight, RhoRampWeight, RhoWeight, UnitWeight, WeightRule, weight_rule

__version__ = "0.1.0"

__all__ = [
    "TokenLayout", "SparseMask", "MASK_KINDS", "block_size_for", "Schedule", "StepPlan", "run_progress",
    "DENSE", "CAPTURE", "SPARSE", "AttentionStats", "StatsStore",
    "attend_full", "attend_sparse", "attend_dense", "check_inputs", "kernels_unavailable", "HEAD_DIMS",
    "WeightRule", "RhoWeight", "RhoRampWeight", "UnitWeight", "CalibratedWeight", "weight_rule",
]
