"""Calibration: record a dense run, fit the reshape weight w(σ), measure each rule's error, and
read / write / validate the stats file (safetensors).

Host-free (no ComfyUI). DESIGN.md section 1: a sparse step k steps after a capture at t_c returns
``O(t_c) + w·[O_S(t) − O_S(t_c)]``; the calibrated rule fits w per layer and head by least squares
of the full output's change on the window output's change between consecutive recorded steps.

At every dense step of a calibration run the caller passes :meth:`CalibrationRecorder.record` the
dense output O and the stats of a capture with ``RhoWeight`` and a float32 residual, from which the
window output is ``O_S = (O − R) / ρ``. To bound memory only a fixed subset of rows is kept.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .stats import AttentionStats
from .weights import WEIGHT_RULES, CalibratedWeight, RhoRampWeight, RhoWeight, UnitWeight

FORMAT = "rettention-stats"
FORMAT_VERSION = "1"
RULES = tuple(WEIGHT_RULES)           # the error columns of a stats file, in this order
_REQUIRED = ("rho", "w_fit", "w_sigma", "sigmas", "error", "error_steps")


class StatsFileError(ValueError):
    """A stats file that cannot be used (corrupt, wrong format, or made for another model)."""


def _rows(n: int, cap: int) -> torch.Tensor:
    if n <= cap:
        return torch.arange(n)
    return torch.linspace(0, n - 1, cap).round().long().unique()


@dataclass
class _Previous:
    step: int
    out: torch.Tensor      # (B, H, r, D) fp32
    window: torch.Tensor   # (B, H, r, D) fp32
    rho: torch.Tensor      # (B, H, r) fp32


@dataclass
class _LayerSums:
    heads: int
    steps: int
    rho_sum: np.ndarray = None
    rho_count: np.ndarray = None
    s_oo: np.ndarray = None     # Σ |ΔO|²  per (head, step)
    s_ow: np.ndarray = None     # Σ ΔO·ΔS
    s_ww: np.ndarray = None     # Σ |ΔS|²
    s_norm: np.ndarray = None   # Σ |O|²
    s_err: np.ndarray = None    # (3, head, step): Σ |pred − O|² for the fixed rules rho, rho_ramp, one

    def __post_init__(self):
        shape = (self.heads, self.steps)
        for name in ("rho_sum", "rho_count", "s_oo", "s_ow", "s_ww", "s_norm"):
            setattr(self, name, np.zeros(shape))
        self.s_err = np.zeros((3,) + shape)


class CalibrationRecorder:
    """Accumulates per layer and head the sums the fit needs; memory: two row subsets per
    (layer, chunk) plus O(layers · heads · steps) numbers."""

    def __init__(self, sigmas, ramp: float = 0.04, max_rows: int = 1024):
        self.sigmas = [float(s) for s in sigmas]
        self.steps = max(1, len(self.sigmas) - 1)
        self.ramp = float(ramp)
        self.fixed_rules = (RhoWeight(), RhoRampWeight(self.ramp), UnitWeight())    # RULES[:3]
        self.max_rows = int(max_rows)
        self._prev: dict = {}
        self._layers: dict[int, _LayerSums] = {}
        self.skipped_layers: set[int] = set()

    def record(self, layer: int, chunk, step: int, out: torch.Tensor, stats: AttentionStats) -> None:
        if not 0 <= step < self.steps:
            return
        batch, heads, n, dim = out.shape
        sums = self._layers.get(layer)
        if sums is None:
            sums = self._layers[layer] = _LayerSums(heads, self.steps)
        if sums.heads != heads:
            self.skipped_layers.add(layer)
            return
        rows = _rows(n, self.max_rows).to(out.device)
        o = out.index_select(2, rows).float()
        rho = stats.rho.index_select(2, rows).float().clamp_min(1e-12)
        r = stats.residual.index_select(2, rows).float()
        window = (o - r) / rho[..., None]
        sums.rho_sum[:, step] += stats.rho.float().mean(dim=(0, 2)).cpu().double().numpy()
        sums.rho_count[:, step] += 1
        key = (layer, chunk)
        prev = self._prev.get(key)
        if prev is not None and prev.step == step:
            return                                  # a second evaluation in the same step
        if prev is not None and prev.out.shape == o.shape:
            d_o, d_w = o - prev.out, window - prev.window
            per_head = lambda t: t.sum(dim=(0, 2, 3)).cpu().double().numpy()
            sums.s_oo[:, step] += per_head(d_o * d_o)
            sums.s_ow[:, step] += per_head(d_o * d_w)
            sums.s_ww[:, step] += per_head(d_w * d_w)
            sums.s_norm[:, step] += per_head(o * o)
            k = step - prev.step
            for i, rule in enumerate(self.fixed_rules):
                pred = prev.out + rule.weight(prev.rho, k)[..., None] * d_w
                sums.s_err[i, :, step] += per_head((pred - o) ** 2)
        self._prev[key] = _Previous(step, o, window, rho)

    def release(self) -> None:
        """Drop the row subsets kept for the next step (the sums stay)."""
        self._prev.clear()

    @property
    def layers(self) -> int:
        return (max(self._layers) + 1) if self._layers else 0

    def result(self, metadata: dict) -> "CalibrationData":
        """The fitted stats; ``metadata`` carries family, grid, mask, density (strings)."""
        layers = self.layers
        if layers == 0:
            raise StatsFileError("the calibration run recorded no attention layer")
        heads = max(s.heads for s in self._layers.values())
        shape = (layers, heads, self.steps)
        rho = np.ones(shape)
        w_fit = np.ones((layers, heads))
        w_sigma = np.ones(shape)
        error = np.zeros((layers, len(RULES)))
        error_steps = np.zeros((layers, len(RULES), self.steps))
        for layer in range(layers):
            sums = self._layers.get(layer)
            if sums is None or sums.heads != heads:
                error[layer] = np.inf
                error_steps[layer] = np.inf
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                rho[layer] = np.where(sums.rho_count > 0, sums.rho_sum / np.maximum(sums.rho_count, 1), 1.0)
                total_ww = sums.s_ww.sum(axis=1)
                w_fit[layer] = np.where(total_ww > 1e-20, sums.s_ow.sum(axis=1) / np.maximum(total_ww, 1e-30), 1.0)
                per_step = np.where(sums.s_ww > 1e-20, sums.s_ow / np.maximum(sums.s_ww, 1e-30), w_fit[layer][:, None])
            w_sigma[layer] = np.clip(per_step, 0.0, 2.0)
            fitted_err = sums.s_oo - 2 * w_sigma[layer] * sums.s_ow + w_sigma[layer] ** 2 * sums.s_ww
            errs = np.concatenate([sums.s_err, np.maximum(fitted_err, 0.0)[None]], axis=0)   # (4, H, S)
            norm = sums.s_norm.sum(axis=0)                                                   # (S,)
            err_step = errs.sum(axis=1)                                                      # (4, S)
            with np.errstate(invalid="ignore", divide="ignore"):
                error_steps[layer] = np.where(norm > 0, np.sqrt(err_step / np.maximum(norm, 1e-30)), 0.0)
                total = norm.sum()
                error[layer] = np.sqrt(err_step.sum(axis=1) / total) if total > 0 else 0.0
        return CalibrationData(
            rho=rho.astype(np.float32), w_fit=w_fit.astype(np.float32), w_sigma=w_sigma.astype(np.float32),
            sigmas=np.asarray(self.sigmas[: self.steps], dtype=np.float32), error=error.astype(np.float32),
            error_steps=error_steps.astype(np.float32), metadata=dict(metadata))


@dataclass(frozen=True, eq=False)
class CalibrationData:
    """A stats file's content. ``rho``, ``w_sigma``: (layers, heads, steps); ``w_fit``: (layers, heads);
    ``sigmas``: (steps,) the sigma each step starts at; ``error``: (layers, 4) relative error of a
    one-step sparse prediction with each rule in :data:`RULES`; ``error_steps``: (layers, 4, steps)."""

    rho: np.ndarray
    w_fit: np.ndarray
    w_sigma: np.ndarray
    sigmas: np.ndarray
    error: np.ndarray
    error_steps: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return int(self.w_fit.shape[0])

    @property
    def heads(self) -> int:
        return int(self.w_fit.shape[1])

    def weight_at(self, layer: int, sigma: float) -> np.ndarray:
        """The fitted w per head for ``layer`` at ``sigma`` (interpolated over the recorded sigmas;
        the global fit outside them or where only one step was recorded)."""
        if len(self.sigmas) < 2:
            return self.w_fit[layer]
        order = np.argsort(self.sigmas)
        xs = self.sigmas[order]
        if not xs[0] <= sigma <= xs[-1]:
            return self.w_fit[layer]
        return np.array([np.interp(sigma, xs, self.w_sigma[layer, h][order]) for h in range(self.heads)],
                        dtype=np.float32)

    def weight_rule_at(self, layer: int, sigma: float, heads: int) -> CalibratedWeight | None:
        """The calibrated rule of ``layer`` at ``sigma`` (w per head), or None when the file has no
        such layer or was recorded with another head count."""
        if not 0 <= layer < self.layers or self.heads != heads:
            return None
        return CalibratedWeight(torch.from_numpy(self.weight_at(layer, sigma).copy()))

    def dense_layers(self, threshold: float, rule: str = "calibrated") -> frozenset[int]:
        """Layers whose recorded error with ``rule`` is above ``threshold``."""
        column = RULES.index(rule)
        return frozenset(int(i) for i in np.flatnonzero(~(self.error[:, column] <= threshold)))

    def summary(self) -> str:
        best = [RULES[int(i)] for i in np.argmin(np.nan_to_num(self.error, nan=np.inf), axis=1)]
        counts = {rule: best.count(rule) for rule in RULES}
        mean = {rule: float(np.mean(self.error[np.isfinite(self.error[:, i]), i])) if np.isfinite(self.error[:, i]).any()
                else float("nan") for i, rule in enumerate(RULES)}
        return (f"{self.layers} layers x {self.heads} heads, {len(self.sigmas)} steps; mean one-step error "
                + ", ".join(f"{r}={mean[r]:.4f}" for r in RULES) + f"; best rule per layer {counts}")


def save_stats_file(data: CalibrationData, path: str) -> None:
    from safetensors.numpy import save_file

    meta = {str(k): str(v) for k, v in data.metadata.items()}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, rules=",".join(RULES),
                sigmas=json.dumps([float(s) for s in data.sigmas]))
    tensors = {name: np.ascontiguousarray(getattr(data, name)) for name in _REQUIRED}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_stats_file(path: str) -> CalibrationData:
    """Read and validate a stats file; :class:`StatsFileError` names what is wrong."""
    from safetensors import safe_open

    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise StatsFileError(f"stats file {name!r} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in _REQUIRED if k in keys}
    except Exception as error:    # safetensors raises several types for a damaged file
        raise StatsFileError(f"stats file {name!r} is not a readable safetensors file ({error})") from None
    if meta.get("format") != FORMAT:
        raise StatsFileError(f"stats file {name!r} is not a Re-ttention stats file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise StatsFileError(f"stats file {name!r} has format version {meta.get('format_version')!r}; "
                             f"this pack reads version {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in tensors]
    if missing:
        raise StatsFileError(f"stats file {name!r} lacks tensors {missing}")
    w_fit = tensors["w_fit"]
    if w_fit.ndim != 2 or min(w_fit.shape) < 1:
        raise StatsFileError(f"stats file {name!r}: w_fit has shape {w_fit.shape}, expected (layers, heads)")
    layers, heads = w_fit.shape
    steps = tensors["sigmas"].shape[0] if tensors["sigmas"].ndim == 1 else -1
    expected = {"rho": (layers, heads, steps), "w_sigma": (layers, heads, steps), "sigmas": (steps,),
                "error": (layers, len(RULES)), "error_steps": (layers, len(RULES), steps)}
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise StatsFileError(f"stats file {name!r}: {key} has shape {tuple(tensors[key].shape)}, expected {shape}")
    for key in ("w_fit", "w_sigma", "rho", "sigmas"):
        if not np.isfinite(tensors[key]).all():
            raise StatsFileError(f"stats file {name!r}: {key} has non-finite values")
    metadata = {k: v for k, v in meta.items() if k not in ("format", "format_version", "rules", "sigmas")}
    return CalibrationData(metadata=metadata, **{k: tensors[k].astype(np.float32) for k in _REQUIRED})

