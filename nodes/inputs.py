"""Node inputs to core objects, checked: a bad value raises a ValueError naming the input. Shared by the
nodes (at queue time) and the plan route of the front end (web_api.py); no ComfyUI here."""
from __future__ import annotations

import torch

from ..rettention import CalibratedWeight, Schedule, weight_rule
from ..rettention.weights import WEIGHT_RULES

WEIGHT_CHOICES = list(WEIGHT_RULES)


def check_unit(name: str, value: float, low: float = 0.0, high: float = 1.0, open_low: bool = False) -> float:
    """``value`` as a float in [low, high] (or (low, high] with ``open_low``), else a ValueError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (low < value <= high if open_low else low <= value <= high) or value != value:
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{low}, {high}], got {value}")
    return value


def parse_density_steps(text: str) -> tuple[tuple[float, float], ...]:
    """'0.5:0.03, 0.8:0.02' -> ((0.5, 0.03), (0.8, 0.02)): from that progress on, that density."""
    pairs = []
    for item in (text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            progress, density = (float(part) for part in item.split(":"))
        except ValueError:
            raise ValueError(f"density_steps: {item!r} is not 'progress:density' (e.g. '0.5:0.03')") from None
        check_unit("density_steps progress", progress)
        check_unit("density_steps density", density, open_low=True)
        pairs.append((progress, density))
    return tuple(pairs)


def schedule_from_widgets(start_percent, end_percent, capture_every, density_steps, weight, ramp) -> Schedule:
    """The Schedule the Sparsity Schedule node's widget values describe."""
    start = check_unit("start_percent", start_percent)
    end = check_unit("end_percent", end_percent)
    if end < start:
        raise ValueError(f"end_percent ({end}) must not be below start_percent ({start})")
    if weight not in WEIGHT_CHOICES:
        raise ValueError(f"weight must be one of {WEIGHT_CHOICES}, got {weight!r}")
    try:
        every = int(capture_every)
    except (TypeError, ValueError):
        raise ValueError(f"capture_every must be an integer, got {capture_every!r}") from None
    rule = (CalibratedWeight(torch.ones(1)) if weight == "calibrated"
            else weight_rule(weight, ramp=check_unit("ramp", ramp)) if weight == "rho_ramp"
            else weight_rule(weight))
    try:
        return Schedule(warmup=start, capture_every=every, dense_tail=1.0 - end,
                        density_from=parse_density_steps(density_steps), weight=rule)
    except ValueError as error:
        raise ValueError(f"Re-ttention Sparsity Schedule: {error}") from None
