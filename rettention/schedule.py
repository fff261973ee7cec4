"""Which steps of a sampling run are dense, capture or sparse, and at what density.

A schedule is written in *progress*: the fraction of the whole denoising done when a step starts
(0 at pure noise, 1 at the end). One schedule therefore fits 8, 20 or 50 steps, and a partial run
(img2img with denoise < 1, or start/end steps) that begins at progress 0.5 skips the warm-up it
has already passed. :func:`run_progress` gives the progress of a run of plain steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .weights import UnitWeight, WeightRule

DENSE, CAPTURE, SPARSE = "dense", "capture", "sparse"
_EPS = 1e-9


@dataclass(frozen=True)
class StepPlan:
    """One mode per step; for capture/sparse steps also the density in effect and, for sparse
    steps, how many steps have passed since the capture their stats come from."""

    modes: tuple[str, ...]
    densities: tuple[float | None, ...]
    steps_since_capture: tuple[int, ...]
    note: str = ""

    @property
    def sparse_steps(self) -> int:
        return self.modes.count(SPARSE)

    def summary(self) -> str:
        """One letter a step: D dense, C capture, S sparse."""
        return "".join(mode[0].upper() for mode in self.modes)


@dataclass(frozen=True)
class Schedule:
    """``warmup``: progress below which steps are dense (the paper runs ~25% of steps dense).
    ``capture_every``: a capture step, then ``capture_every - 1`` sparse steps, repeated.
    ``dense_tail``: the last fraction of the denoising runs dense (0: none).
    ``density_from``: ``((progress, density), ...)``: from that progress on, use that density
    instead of the patch's; it takes effect at the next capture step (stats belong to one mask).
    ``weight``: the reshape-weight rule (weights.py). Default w = 1 (residual sharing): on the trained
    testbed (``python -m rettention.testbed eval``, H200) it beat the paper's w = rho and rho + 0.04 k
    in PSNR and SSIM at every density and mask; only a calibrated w (from a stats file) beat it.
    ``warmup`` 0.25 and ``capture_every`` 5 are the paper's, and the testbed sweep kept them: warm-up
    0.1 cost 3.5-4 dB, a capture every 8 steps 3-4 dB."""

    warmup: float = 0.25
    capture_every: int = 5
    dense_tail: float = 0.0
    density_from: tuple[tuple[float, float], ...] = ()
    weight: WeightRule = field(default_factory=UnitWeight)

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1], got {self.warmup}")
        if not 0.0 <= self.dense_tail <= 1.0:
            raise ValueError(f"dense_tail must be a fraction in [0, 1], got {self.dense_tail}")
        if int(self.capture_every) != self.capture_every or self.capture_every < 2:
            raise ValueError(f"capture_every must be an integer >= 2, got {self.capture_every}")
        pairs = tuple((float(p), float(d)) for p, d in self.density_from)
        for progress, density in pairs:
            if not 0.0 <= progress <= 1.0:
                raise ValueError(f"density_from progress must be in [0, 1], got {progress}")
            if not 0.0 < density <= 1.0:
                raise ValueError(f"density_from density must be in (0, 1], got {density}")
        object.__setattr__(self, "density_from", tuple(sorted(pairs)))
        object.__setattr__(self, "capture_every", int(self.capture_every))

    def density_at(self, progress: float, default: float) -> float:
        density = default
        for start, value in self.density_from:
            if progress + _EPS >= start:
                density = value
        return density

    def plan(self, progress: Sequence[float], density: float) -> StepPlan:
        """The plan for a run whose steps start at ``progress`` (one value per step), with
        ``density`` where no ``density_from`` entry applies."""
        progress = [float(p) for p in progress]
        if any(b < a - _EPS for a, b in zip(progress, progress[1:])):
            raise ValueError("progress must not decrease from one step to the next")
        eligible = [self.warmup - _EPS <= p < 1.0 - self.dense_tail - _EPS for p in progress]
        modes, densities, since = [], [], []
        position = None            # steps since the current capture, None outside a sparse stretch
        for i, ok in enumerate(eligible):
            if not ok:
                position = None
                modes.append(DENSE), densities.append(None), since.append(0)
                continue
            position = 0 if position is None or position + 1 >= self.capture_every else position + 1
            if position == 0:
                modes.append(CAPTURE), densities.append(self.density_at(progress[i], density))
            else:
                modes.append(SPARSE), densities.append(densities[-1])
            since.append(position)
        # A capture step with no sparse step after it only costs time: run it dense.
        for i, mode in enumerate(modes):
            if mode == CAPTURE and (i + 1 == len(modes) or modes[i + 1] != SPARSE):
                modes[i], densities[i] = DENSE, None
        note = ""
        if SPARSE not in modes:
            note = (f"{len(modes)} step(s) leave no sparse step after a capture "
                    f"(warmup {self.warmup:g}, capture every {self.capture_every}): all dense")
        return StepPlan(tuple(modes), tuple(densities), tuple(since), note)


def run_progress(steps: int, first_step: int = 0, total_steps: int | None = None) -> list[float]:
    """Progress of each step of a run that does steps ``first_step .. first_step+steps-1`` of a
    ``total_steps`` schedule (KSamplerAdvanced start/end steps; denoise < 1 is the same thing)."""
    total = steps if total_steps is None else total_steps
    if steps < 0 or first_step < 0 or total < first_step + steps or total < 1 and steps:
        raise ValueError(f"steps {first_step}..{first_step + steps} do not fit a run of {total} steps")
    return [(first_step + i) / total for i in range(steps)]
