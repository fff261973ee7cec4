"""RunState: everything one sampling run holds (its plan, the stats store, masks, counters), freed by close().

Created by the OUTER_SAMPLE wrapper for each run and closed in its ``finally`` (also when the user
cancels); nothing outlives the run but the report it returns.
"""
from __future__ import annotations

import logging
import math

import torch

from ..rettention import (CAPTURE, DENSE, SPARSE, CalibratedWeight, SparseMask, StatsStore, StepPlan, UnitWeight,
                          WeightRule, block_size_for)
from ..rettention.calibration import CalibrationRecorder, save_stats_file
from .call_times import CallTimes
from .config import PatchConfig

log = logging.getLogger("rettention")


def progress_of(model_sampling, sigma: float) -> float:
    """The fraction of the whole denoising done at ``sigma``: inverts ``percent_to_sigma``
    (monotone decreasing) by bisection, so any model sampling (eps, flow, shifted) works."""
    def at(p):
        return float(model_sampling.percent_to_sigma(p))
    if sigma >= at(0.0) or math.isclose(sigma, at(0.0), rel_tol=1e-6):
        return 0.0
    if sigma <= at(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if at(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class RunState:
    """One sampling run: the plan made from its sigmas, the step in progress, the stats store and
    the per-step call counts; :meth:`close` frees the stats and returns the run's report."""

    def __init__(self, config: PatchConfig, model_sampling, sigmas: torch.Tensor):
        self.config = config
        self.sigmas = [float(s) for s in sigmas.flatten().tolist()]
        steps = max(0, len(self.sigmas) - 1)
        self.progress = [progress_of(model_sampling, s) for s in self.sigmas[:steps]]
        self.calibrating = config.calibrate_path is not None
        if self.calibrating:
            modes = tuple(CAPTURE for _ in range(steps))
            self.plan = StepPlan(modes, tuple(config.density for _ in modes), tuple(0 for _ in modes))
            self.recorder = CalibrationRecorder(self.sigmas, ramp=config.calibrate_ramp)
        else:
            self.plan = config.schedule.plan(self.progress, config.density)
            self.recorder = None
        self.store = StatsStore()
        self.masks: dict = {}
        self.step = -1
        self.mode = DENSE
        self.density = None
        self.since = 0
        self.sigma = None
        self.layers_per_forward = None
        self.counts: dict[int, dict[str, int]] = {}
        self.notes: dict[str, str] = {}
        self.times = CallTimes()
        self.outcome = "failed"          # until the sampler returns ("finished") or the user cancels
        self.failed_layers: set[int] = set()
        self.failures: list[str] = []
        self.override_replaced = False
        self.grid = None

    @property
    def finished(self) -> bool:
        return self.outcome == "finished"

    # --- per evaluation ---------------------------------------------------------------------
    def begin_evaluation(self, sigma: float) -> None:
        """The model is evaluated at ``sigma``: find its step and that step's mode and density."""
        steps = len(self.plan.modes)
        self.sigma = sigma
        step = 0
        for i in range(steps):
            if self.sigmas[i] >= sigma * (1 - 1e-5) - 1e-9:
                step = i
        self.step = step
        if steps == 0:
            self.mode, self.density, self.since = DENSE, None, 0
            return
        self.mode = self.plan.modes[step]
        self.density = self.plan.densities[step]
        self.since = self.plan.steps_since_capture[step]

    def count(self, what: str) -> None:
        per_step = self.counts.setdefault(self.step, {})
        per_step[what] = per_step.get(what, 0) + 1

    def note_once(self, key: str, message: str) -> None:
        if key not in self.notes:
            self.notes[key] = message
            log.warning("Re-ttention: %s", message)

    def fail_layer(self, layer: int, mode: str, error: BaseException) -> None:
        """An attention call of ``layer`` raised: that call is dense, and after a failed capture the
        layer is dense for the rest of the run (its stats are dropped, so none half-written is used)."""
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        self.failures.append(f"layer {layer} step {self.step} {mode}: {cause}")
        if mode == SPARSE:
            self.note_once(f"failed-{cause}", f"a sparse attention call failed ({cause}); dense attention "
                           "for that call")
            return
        self.failed_layers.add(layer)
        self.store.drop(layer)
        self.note_once(f"failed-{cause}", f"a capture failed ({cause}); layer {layer} (and any other layer "
                       "that fails so) stays dense for the rest of this run")

    def mask_for(self, layout, density: float, kind: str) -> SparseMask:
        key = (layout, density, kind)
        mask = self.masks.get(key)
        if mask is None:
            mask = self.masks[key] = SparseMask(layout, density, kind, block_size=block_size_for(layout.n_tokens))
        return mask

    def weight_for(self, layer: int, heads: int) -> WeightRule:
        """The reshape-weight rule for a capture of ``layer`` now (calibrated: w per head at this sigma)."""
        rule = self.config.schedule.weight
        if not isinstance(rule, CalibratedWeight):
            return rule
        data = self.config.calibration
        calibrated = data.weight_rule_at(layer, self.sigma or 0.0, heads) if data is not None else None
        if calibrated is None:
            self.note_once(f"calib-{layer}", f"no calibrated weight for layer {layer} with {heads} heads "
                           "in the stats file; using w = 1 there")
            return UnitWeight()
        return calibrated

    # --- end of the run ---------------------------------------------------------------------
    def report(self) -> dict:
        return {
            "family": self.config.family.name,
            "plan": self.plan.summary(),
            "note": self.plan.note,
            "counts": {step: dict(c) for step, c in sorted(self.counts.items())},
            "layers_per_forward": self.layers_per_forward,
            "peak_bytes": self.store.peak_nbytes,
            "bytes_held": self.store.nbytes,
            "stats_entries": len(self.store),
            "masks": [{"kind": kind, "grid": layout.grid, "text_tokens": layout.text_before + layout.text_after,
                       "requested_density": density, "density": mask.density}
                      for (layout, density, kind), mask in self.masks.items()],
            "calibration_file": self.config.calibrate_path if self.calibrating else None,
            "failures": list(self.failures),
            "failed_layers": sorted(self.failed_layers),
            "finished": self.finished,
        }

    def dense_reasons(self) -> list[str]:
        """Why calls ran dense beyond the plan's dense steps, in words."""
        reasons = list(self.notes.values())
        if self.plan.note:
            reasons.insert(0, self.plan.note)
        if self.config.dense_layers:
            reasons.append(f"{len(self.config.dense_layers)} layer(s) dense by the stats file "
                           "(recorded error above error_threshold)")
        return reasons

    def summary(self) -> dict:
        """The run in a few numbers, for the front end (web_api.send_report) and the log."""
        calls = {mode: sum(c.get(mode, 0) for c in self.counts.values())
                 for mode in (CAPTURE, SPARSE, DENSE, "passthrough")}
        densities = [mask.density for mask in self.masks.values()]
        saved = self.times.saved_seconds()
        return {"status": self.outcome, "family": self.config.family.name, "plan": self.plan.summary(),
                "steps_run": self.step + 1, "calls": calls,
                "density": sum(densities) / len(densities) if densities else None,
                "stats_peak_mb": round(self.store.peak_nbytes / 2**20, 2), "stats_device": self.store.device,
                "saved_seconds": None if saved is None else round(saved, 4),
                "dense_reasons": self.dense_reasons(), "failures": list(self.failures)}

    def close(self) -> dict:
        written = None
        if self.recorder is not None:
            self.recorder.release()
            if self.finished:
                meta = dict(self.config.calibrate_metadata)
                meta.setdefault("family", self.config.family.name)
                meta["grid"] = ",".join(str(g) for g in self.grid) if self.grid else ""
                data = self.recorder.result(meta)
                save_stats_file(data, self.config.calibrate_path)
                written = self.config.calibrate_path
                log.info("Re-ttention: wrote %s (%s)", written, data.summary())
        summary = self.summary()
        self.store.close()
        report = self.report()
        report["summary"] = summary
        self.masks.clear()
        report["calibration_written"] = written
        calls = summary["calls"]
        if self.override_replaced and not self.counts:
            log.warning("Re-ttention: this run was not patched: a node after Re-ttention Patch Model replaced its "
                        "attention override (ComfyUI's Model Attention Backend does); put Patch Model after it")
        status = "finished" if self.finished else f"{self.outcome} at step {self.step + 1}"
        if calls[CAPTURE] + calls[SPARSE] == 0:
            log.info("Re-ttention: %s run %s, %s: all attention dense (%s)", self.config.family.name,
                     self.plan.summary(), status, "; ".join(summary["dense_reasons"]) or "no step of the plan "
                     "was reached or every attention call was dense")
        else:
            log.info("Re-ttention: %s run %s, %s: %d capture / %d sparse / %d dense attention calls, peak stats "
                     "%.1f MiB", self.config.family.name, self.plan.summary(), status, calls[CAPTURE],
                     calls[SPARSE], calls[DENSE], report["peak_bytes"] / 2**20)
        self.recorder = None
        return report
