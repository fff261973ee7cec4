"""What a patched model carries (PatchConfig) and the keys the pack uses in ComfyUI's transformer_options.

- ``transformer_options[CONFIG_KEY]``: the PatchConfig, set by the Patch Model / Calibrate Stats nodes.
- ``transformer_options[RUN_KEY]``: the RunState of the sampling run in flight (OUTER_SAMPLE).
- ``transformer_options[FORWARD_KEY]``: the ForwardContext of the model forward in flight (APPLY_MODEL).
- ``transformer_options[OBSERVER_KEY]``: optional callable(report: dict), called at the end of each run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..rettention import Schedule
from ..rettention.calibration import CalibrationData
from .families import Family

CONFIG_KEY = "rettention"
RUN_KEY = "rettention_run"
FORWARD_KEY = "rettention_forward"
OBSERVER_KEY = "rettention_observer"
WRAPPER_KEY = "rettention"
RESIDUAL_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PatchConfig:
    """One patched model's settings (immutable; a run's changing state lives in its RunState)."""

    family: Family
    density: float = 0.0625
    mask_kind: str = "auto"
    schedule: Schedule = field(default_factory=Schedule)
    residual_dtype: str = "auto"
    dense_ends: bool = False
    calibration: CalibrationData | None = None
    dense_layers: frozenset = frozenset()
    chained_override: Callable | None = None
    module_paths: tuple[str, ...] = ()
    node_id: str | None = None      # the Patch Model node's id, for the run report in the front end
    # Where the kernels cannot run (no CUDA GPU, old triton), attention stays dense unless this asks
    # for the PyTorch path instead (slower than dense; for tests and debugging: RETTENTION_TORCH_PATH=1).
    torch_path: bool = False
    # calibration runs (Calibrate Stats): dense output, recorded stats written to calibrate_path
    calibrate_path: str | None = None
    calibrate_ramp: float = 0.04
    calibrate_metadata: tuple[tuple[str, str], ...] = ()
