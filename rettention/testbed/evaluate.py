"""Fidelity benchmark: the same seeds and conditions sampled with full attention and with each
reshape method, per mask kind and density; PSNR, SSIM and relative L2 of the final samples (clamped
to [-1, 1]) against full attention, per-layer attention-output errors at the sparse steps, and ρ over
the run.

All attention goes through the core (rettention.attend_dense / attend_full / attend_sparse); the
methods differ only in the stats a capture step leaves and the weight rule:

- ``plain``: O^S, the softmax over the window alone: stats ρ = 1, R = 0 under ``UnitWeight``.
- ``rho_only``: ρ(t_c)·O^S, no residual: the captured ρ with R = 0 under ``RhoWeight``.
- ``residual``: O^S + R_1 (w = 1, DiTFastAttn's residual sharing): ``UnitWeight``.
- ``rettention``: ρ·O^S + R (the paper, λ = 0): ``RhoWeight``.
- ``rettention_ramp``: (ρ + λ·k)·O^S + R (the paper's code, λ = 0.04): ``RhoRampWeight``.
- ``calibrated``: w(σ) per layer and head fitted by rettention.calibration on a dense run of other
  seeds (``CalibratedWeight`` with ``weight_at(layer, σ)`` at each capture, as the ComfyUI adapter does).

A control run, ``floor``, returns the capture path's dense output (attend_full) at every capture and
sparse step: no sparsity at all, so its distance to the full run is the numerical noise floor of the
comparison (a different dense kernel call, bf16).

Every method runs the same schedule: the dense warm-up (shared: the methods branch from the full
run's state at the first capture step), then capture and sparse steps.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import (CAPTURE, DENSE, AttentionStats, CalibratedWeight, RhoRampWeight, RhoWeight, Schedule, SparseMask,
                TokenLayout, UnitWeight, attend_dense, attend_full, attend_sparse, block_size_for, run_progress)
from ..calibration import CalibrationData, CalibrationRecorder
from . import metrics
from .data import sample_conditions
from .model import DiT, initial_noise, randomize, sample, timesteps

METHODS = ("plain", "rho_only", "residual", "rettention", "rettention_ramp", "calibrated")
LABELS = {"plain": "plain sparse", "rho_only": "rho only", "residual": "residual (w=1)",
          "rettention": "Re-ttention l=0", "rettention_ramp": "Re-ttention l=.04", "calibrated": "calibrated w(s)"}
SHORT = {"plain": "plain", "rho_only": "rho", "residual": "w=1", "rettention": "ReT", "rettention_ramp": "ramp",
         "calibrated": "cal"}
DENSITIES = (0.03125, 0.0625, 0.125)
KINDS = ("band", "tube", "local3d")
CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")


def conditions(seeds, video: bool) -> torch.Tensor:
    """One condition per seed (drawn from the seed's own generator)."""
    return torch.cat([sample_conditions(1, torch.Generator().manual_seed(int(s) * 104729 + 7), video) for s in seeds])


def mask_for(layout: TokenLayout, density: float, kind: str) -> SparseMask:
    return SparseMask(layout, density, kind, block_size=block_size_for(layout.n_tokens))


def dense_attention(q, k, v, layer):
    return attend_dense(q, k, v)


# --- the attention of one sampling run -------------------------------------------------------------

class SparseRun:
    """``attention(q, k, v, layer)`` for one sampling run of one method: dense, capture or sparse
    per the plan's step (set by ``on_step``). With ``measure``, each sparse call is compared with
    dense attention on the same inputs (relative error per layer and steps since capture)."""

    def __init__(self, modes, since, mask: SparseMask, method: str, calibration: CalibrationData | None = None,
                 ramp: float = 0.04, measure: bool = True):
        if method not in METHODS + ("floor",):
            raise ValueError(f"method must be one of {METHODS} or 'floor', got {method!r}")
        if method == "calibrated" and calibration is None:
            raise ValueError("the calibrated method needs calibration data")
        self.modes, self.since, self.mask, self.method = modes, since, mask, method
        self.calibration, self.ramp, self.measure = calibration, ramp, measure
        self.step, self.sigma = 0, 1.0
        self.stats: dict[int, AttentionStats] = {}
        self.err: dict[tuple[int, int], list] = {}          # (layer, since) -> [Σ|out-ref|², Σ|ref|²]
        self.rho: dict[int, list] = defaultdict(list)        # layer -> [(step, mean rho)]

    def on_step(self, step: int, sigma: float) -> None:
        self.step, self.sigma = step, sigma

    def rule(self, layer: int, heads: int):
        if self.method in ("rho_only", "rettention"):
            return RhoWeight()
        if self.method == "residual":
            return UnitWeight()
        if self.method == "rettention_ramp":
            return RhoRampWeight(self.ramp)
        data = self.calibration
        if layer >= data.layers or data.heads != heads:
            raise ValueError(f"calibration has {data.layers} layers x {data.heads} heads; layer {layer} has {heads}")
        return CalibratedWeight(torch.from_numpy(data.weight_at(layer, self.sigma).copy()))

    def __call__(self, q, k, v, layer):
        mode = self.modes[self.step]
        if mode == DENSE:
            return attend_dense(q, k, v)
        if self.method == "floor":                        # the capture path's dense output at every step
            return attend_full(q, k, v, self.mask)[0]
        if mode == CAPTURE:
            return self._capture(q, k, v, layer)
        stats = self.stats[layer]
        out = attend_sparse(q, k, v, self.mask, stats, weight=stats.weight,
                            steps_since_capture=self.since[self.step])
        if self.measure:
            ref = attend_dense(q, k, v).float()
            acc = self.err.setdefault((layer, self.since[self.step]), [0.0, 0.0])
            acc[0] = acc[0] + ((out.float() - ref) ** 2).sum()
            acc[1] = acc[1] + (ref ** 2).sum()
        return out

    def _capture(self, q, k, v, layer):
        if self.method == "plain":
            out = attend_dense(q, k, v)
            self.stats[layer] = AttentionStats(rho=torch.ones(q.shape[:3], dtype=torch.float32, device=q.device),
                                               residual=torch.zeros_like(q), mask=self.mask, weight=UnitWeight())
            return out
        out, stats = attend_full(q, k, v, self.mask, weight=self.rule(layer, q.shape[1]))
        self.rho[layer].append((self.step, stats.rho.mean()))
        if self.method == "rho_only":
            stats = AttentionStats(rho=stats.rho, residual=torch.zeros_like(stats.residual), mask=self.mask,
                                   weight=RhoWeight())
        self.stats[layer] = stats
        return out

    def layer_errors(self) -> dict:
        """{'all': [rel err per layer], 'by_since': {k: [per layer]}} (None where not measured)."""
        layers = 1 + max((layer for layer, _ in self.err), default=-1)
        total = [[0.0, 0.0] for _ in range(layers)]
        by_since: dict[int, list] = {}
        for (layer, since), (e, r) in sorted(self.err.items()):
            e, r = float(e), float(r)
            total[layer][0] += e
            total[layer][1] += r
            by_since.setdefault(since, [None] * layers)[layer] = math.sqrt(e / r) if r > 0 else 0.0
        return {"all": [math.sqrt(e / r) if r > 0 else None for e, r in total], "by_since": by_since}

    def rho_at_captures(self) -> list[list[tuple[int, float]]]:
        layers = 1 + max(self.rho, default=-1)
        return [[(step, float(value)) for step, value in self.rho.get(layer, [])] for layer in range(layers)]


class RecordRun:
    """Dense attention at every step, recording (for each mask) the capture stats into a
    CalibrationRecorder: the calibration fit and ρ over the run."""

    def __init__(self, masks: dict, recorders: dict, record_steps=None):
        self.masks, self.recorders, self.record_steps = masks, recorders, record_steps
        self.step = 0

    def on_step(self, step: int, sigma: float) -> None:
        self.step = step

    def __call__(self, q, k, v, layer):
        if self.record_steps is not None and self.step not in self.record_steps:
            return attend_dense(q, k, v)
        out = None
        for key, mask in self.masks.items():
            o, stats = attend_full(q, k, v, mask, weight=RhoWeight(), residual_dtype=torch.float32)
            self.recorders[key].record(layer, 0, self.step, o, stats)
            out = o if out is None else out
        return out


def record_dense_run(model: DiT, seeds, masks: dict, steps: int, guidance: float, shift: float = 1.0,
                     record_steps=None, metadata: dict | None = None) -> dict:
    """A dense sampling run of ``seeds`` recording every mask in ``masks``: {key: CalibrationData}."""
    sigmas = timesteps(steps, shift)
    recorders = {key: CalibrationRecorder(sigmas) for key in masks}
    hook = RecordRun(masks, recorders, record_steps)
    noise = initial_noise(seeds, model.cfg)
    sample(model, noise, conditions(seeds, model.cfg.video), steps, guidance, attention=hook, shift=shift,
           on_step=hook.on_step)
    out = {}
    for key, recorder in recorders.items():
        kind, density = key
        meta = dict(metadata or {}, kind=kind, density=str(density))
        out[key] = recorder.result(meta)
    return out


def rho_probe(model: DiT, density: float = 0.03125, kinds=("band", "local3d"), seeds=(900, 901), steps: int = 20,
              guidance: float = 3.5, shift: float = 1.0, log=print) -> dict:
    """Mean ρ per layer at ``density`` at the middle step of a dense run; printed, and returned as
    {kind: [per layer]}."""
    layout = TokenLayout(model.cfg.grid, text_before=model.cfg.cond_tokens)
    masks = {(kind, density): mask_for(layout, density, kind) for kind in kinds}
    mid = steps // 2
    data = record_dense_run(model, seeds, masks, steps, guidance, shift, record_steps={mid})
    out = {kind: data[(kind, density)].rho[:, :, mid].mean(axis=1).tolist() for kind in kinds}
    log(format_rho_check(out, masks, density, mid, steps))
    return out


def format_rho_check(rho: dict, masks: dict, density: float, step: int, steps: int) -> str:
    lines = [f"mean rho per layer at {density:.3%} density (asked), step {step} of {steps}, dense run "
             "(a testbed is only useful where it is <= 0.8):"]
    for kind, values in rho.items():
        achieved = next(m.density for (k, _), m in masks.items() if k == kind)
        mean = float(np.mean(values))
        flag = "  <-- mostly local (> 0.8)" if mean > 0.8 else ""
        lines.append(f"  {kind:8s} (achieved {achieved:6.2%}): " + " ".join(f"{r:.3f}" for r in values)
                     + f"   mean {mean:.3f}{flag}")
    return "\n".join(lines)


# --- the benchmark ---------------------------------------------------------------------------------

@dataclass
class EvalOptions:
    steps: int = 20
    guidance: float = 3.5
    shift: float = 1.0
    warmups: tuple = (0.25,)
    capture_everys: tuple = (5,)
    densities: tuple = DENSITIES
    kinds: tuple = KINDS
    methods: tuple = METHODS
    seeds: int = 8
    calib_seeds: int = 4
    ramp: float = 0.04
    measure: bool = True
    pictures: int = 4
    seed_base: int = 0
    calib_seed_base: int = 1000


@dataclass
class ModelResult:
    name: str
    rows: list = field(default_factory=list)
    pictures: dict = field(default_factory=dict)      # (kind, method) -> final samples; "full" -> reference
    info: dict = field(default_factory=dict)


def _fmt_density(d: float) -> str:
    return f"{d * 100:g}%"


def evaluate_model(model: DiT, name: str, opts: EvalOptions, log=print) -> ModelResult:
    cfg = model.cfg
    t0 = time.time()
    result = ModelResult(name)
    layout = TokenLayout(cfg.grid, text_before=cfg.cond_tokens)
    seeds = list(range(opts.seed_base, opts.seed_base + opts.seeds))
    calib_seeds = list(range(opts.calib_seed_base, opts.calib_seed_base + opts.calib_seeds))
    cond = conditions(seeds, cfg.video)
    noise = initial_noise(seeds, cfg)
    masks = {(kind, d): mask_for(layout, d, kind) for kind in opts.kinds for d in opts.densities}
    log(f"== {name}: grid {cfg.grid} + {cfg.cond_tokens} condition tokens = {layout.n_tokens} tokens, "
        f"{cfg.layers} layers x {cfg.heads} heads; {len(seeds)} seeds (+{len(calib_seeds)} for calibration), "
        f"{opts.steps} steps, CFG {opts.guidance}; work: 1 full run, 1 dense recording run of {len(masks)} masks, "
        f"1 noise-floor run, {len(opts.warmups) * len(opts.capture_everys) * len(masks) * len(opts.methods)} "
        "sparse runs from the first capture step")

    # full attention, keeping the state at the start of every step (the methods branch off it)
    states, x = [], noise
    for i in range(opts.steps):
        states.append(x.clone())
        x = sample(model, x, cond, opts.steps, opts.guidance, attention=dense_attention, start=i, stop=i + 1,
                   shift=opts.shift)
    reference = x.clamp(-1, 1)                          # metrics on the pictures as they would be saved
    result.pictures["full"] = reference[: opts.pictures].cpu()
    t_full = time.time() - t0
    log(f"   full attention run: {t_full:.1f}s")

    # calibration and rho over the run: one dense run of other seeds recording every mask
    t1 = time.time()
    calib = record_dense_run(model, calib_seeds, masks, opts.steps, opts.guidance, opts.shift,
                             metadata={"model": name})
    log(f"   dense recording run ({len(masks)} masks, {len(calib_seeds)} other seeds): {time.time() - t1:.1f}s")
    mid = opts.steps // 2
    low = min(opts.densities)
    check_kinds = [k for k in ("band", "local3d") if k in opts.kinds] or list(opts.kinds)
    rho_mid = {kind: calib[(kind, low)].rho[:, :, mid].mean(axis=1).tolist() for kind in check_kinds}
    log(format_rho_check(rho_mid, {(k, low): masks[(k, low)] for k in check_kinds}, low, mid, opts.steps))
    result.info.update(
        rho_check={"density": low, "step": mid, "per_layer": rho_mid},
        rho_dense={f"{k}@{d}": c.rho.mean(axis=1).tolist() for (k, d), c in calib.items()},
        w_fit={f"{k}@{d}": c.w_fit.tolist() for (k, d), c in calib.items()},
        w_sigma={f"{k}@{d}": c.w_sigma.mean(axis=1).tolist() for (k, d), c in calib.items()},
        one_step_error={f"{k}@{d}": c.error.tolist() for (k, d), c in calib.items()},
    )

    runs = 0
    floor_plan = Schedule(warmup=opts.warmups[0], capture_every=opts.capture_everys[0]).plan(
        run_progress(opts.steps), low)
    if floor_plan.sparse_steps:
        first = next(i for i, m in enumerate(floor_plan.modes) if m != DENSE)
        hook = SparseRun(floor_plan.modes, floor_plan.steps_since_capture, masks[(opts.kinds[0], low)], "floor")
        out = sample(model, states[first], cond, opts.steps, opts.guidance, attention=hook, start=first,
                     shift=opts.shift, on_step=hook.on_step).clamp(-1, 1)
        floor = metrics.summary(out, reference)
        result.info["noise_floor"] = floor
        log(f"   noise floor (dense attention through attend_full at every capture/sparse step): "
            f"PSNR {floor['psnr']:.2f} dB, SSIM {floor['ssim']:.5f}, rel L2 {floor['rel_l2']:.2e}")
    for warmup in opts.warmups:
        for every in opts.capture_everys:
            schedule = Schedule(warmup=warmup, capture_every=every)
            plan = schedule.plan(run_progress(opts.steps), low)
            label = f"{plan.summary()} (warm-up {warmup:g}, capture every {every})"
            if plan.sparse_steps == 0:
                log(f"   schedule {label}: no sparse step, skipped")
                continue
            start = next(i for i, m in enumerate(plan.modes) if m != DENSE)
            for kind in opts.kinds:
                t_kind = time.time()
                for density in opts.densities:
                    mask = masks[(kind, density)]
                    for method in opts.methods:
                        hook = SparseRun(plan.modes, plan.steps_since_capture, mask, method,
                                         calibration=calib[(kind, density)], ramp=opts.ramp, measure=opts.measure)
                        out = sample(model, states[start], cond, opts.steps, opts.guidance, attention=hook,
                                     start=start, shift=opts.shift, on_step=hook.on_step).clamp(-1, 1)
                        runs += 1
                        row = {"schedule": plan.summary(), "warmup": warmup, "capture_every": every, "kind": kind,
                               "density": density, "achieved": mask.density, "method": method}
                        row.update(metrics.summary(out, reference))
                        row["psnr_per_sample"] = metrics.psnr(out, reference).tolist()
                        row["layer_rel_err"] = hook.layer_errors()
                        row["rho_capture"] = hook.rho_at_captures()
                        result.rows.append(row)
                        if (warmup, every) == (opts.warmups[0], opts.capture_everys[0]) and density == low \
                                and method in ("rettention", "plain"):
                            result.pictures[(kind, method)] = out[: opts.pictures].cpu()
                log(f"   schedule {label}, {kind}: {len(opts.densities) * len(opts.methods)} runs in "
                    f"{time.time() - t_kind:.1f}s")
    elapsed = time.time() - t0
    result.info.update(name=name, config=json.loads(cfg.to_json()), seeds=seeds, calib_seeds=calib_seeds,
                       steps=opts.steps, guidance=opts.guidance, shift=opts.shift, runs=runs,
                       elapsed_s=round(elapsed, 1), full_run_s=round(t_full, 1))
    log(f"   {runs} sparse runs; {name} done in {elapsed:.1f}s")
    return result


# --- output ----------------------------------------------------------------------------------------

def format_table(result: ModelResult) -> str:
    floor = result.info.get("noise_floor")
    lines = [f"### {result.name}: final samples against full attention (mean over {len(result.info['seeds'])} seeds)"
             + (f"; noise floor PSNR {floor['psnr']:.2f} dB, SSIM {floor['ssim']:.5f}" if floor else ""),
             "", "| schedule | kind | density (achieved) | method | PSNR dB | SSIM | rel L2 |",
             "|---|---|---|---|---:|---:|---:|"]
    for row in result.rows:
        lines.append(f"| {row['schedule']} | {row['kind']} | {_fmt_density(row['density'])} ({row['achieved']:.2%}) | "
                     f"{LABELS[row['method']]} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['rel_l2']:.4f} |")
    return "\n".join(lines)


def format_best(result: ModelResult) -> str:
    """Per (schedule, kind, density): the method with the best PSNR and with the best SSIM."""
    groups: dict = defaultdict(list)
    for row in result.rows:
        groups[(row["schedule"], row["kind"], row["density"])].append(row)
    lines = [f"best method per kind and density ({result.name}): PSNR / SSIM"]
    for (schedule, kind, density), rows in groups.items():
        best_p = max(rows, key=lambda r: r["psnr"])
        best_s = max(rows, key=lambda r: r["ssim"])
        lines.append(f"  {schedule} {kind:8s} {_fmt_density(density):8s} {LABELS[best_p['method']]:18s} / "
                     f"{LABELS[best_s['method']]}")
    return "\n".join(lines)


def format_verdict(result: ModelResult, target_psnr: float | None = None) -> str:
    """Evidence for the defaults: per schedule and density, methods ranked by PSNR (mean over kinds)
    with their SSIM; the best kind for Re-ttention; where the paper's rules lose to residual-only;
    whether Re-ttention reaches ``target_psnr`` at the lowest density."""
    lines = [f"verdict ({result.name}):"]
    by: dict = defaultdict(dict)
    for row in result.rows:
        by[(row["schedule"], row["density"])][(row["kind"], row["method"])] = row
    low = min((r["density"] for r in result.rows), default=None)
    for (schedule, density), cells in by.items():
        kinds = list(dict.fromkeys(k for k, _ in cells))
        methods = list(dict.fromkeys(m for _, m in cells))
        mean = {m: (np.mean([cells[(k, m)]["psnr"] for k in kinds]), np.mean([cells[(k, m)]["ssim"] for k in kinds]))
                for m in methods}
        ranked = sorted(methods, key=lambda m: -mean[m][0])
        lines.append(f"  {schedule} {_fmt_density(density)}: by mean PSNR over kinds: "
                     + " > ".join(f"{SHORT[m]} {mean[m][0]:.2f}/{mean[m][1]:.4f}" for m in ranked))
        if "rettention" in methods:
            best_kind = max(kinds, key=lambda k: cells[(k, "rettention")]["psnr"])
            lines.append(f"    best kind for Re-ttention: {best_kind}")
        if "residual" in methods:
            for paper in ("rettention", "rettention_ramp"):
                if paper not in methods:
                    continue
                losses = []
                for k in kinds:
                    mine, other = cells[(k, paper)], cells[(k, "residual")]
                    worse = [m.upper() for m in ("psnr", "ssim") if mine[m] < other[m]]
                    if worse:
                        losses.append(f"{k} ({'+'.join(worse)})")
                if losses:
                    lines.append(f"    {LABELS[paper]} loses to residual (w=1) at: {', '.join(losses)}")
        if target_psnr is not None and density == low and "rettention" in methods:
            hits = {k: cells[(k, "rettention")]["psnr"] >= target_psnr for k in kinds}
            lines.append(f"    target Re-ttention PSNR >= {target_psnr:g} dB at {_fmt_density(density)}: "
                         + ", ".join(f"{k} {'yes' if ok else 'NO'} ({cells[(k, 'rettention')]['psnr']:.2f})"
                                     for k, ok in hits.items()))
    return "\n".join(lines)


def format_layers(result: ModelResult) -> str:
    """Per kind at the lowest density of the first schedule: ρ over the dense run, ρ at the capture
    steps, and each method's relative error of the attention output at the sparse steps."""
    if not result.rows:
        return ""
    first = result.rows[0]["schedule"]
    low = min(r["density"] for r in result.rows)
    steps = result.info["steps"]
    probe = sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1})
    out = []
    for kind in dict.fromkeys(r["kind"] for r in result.rows):
        rows = {r["method"]: r for r in result.rows if r["schedule"] == first and r["kind"] == kind
                and r["density"] == low}
        if not rows:
            continue
        methods = [m for m in METHODS if m in rows]
        rho_dense = result.info["rho_dense"][f"{kind}@{low}"]                 # (layers, steps)
        capture = next((rows[m]["rho_capture"] for m in ("rettention", "residual", "rho_only") if m in rows), [])
        cap_steps = [s for s, _ in capture[0]] if capture else []
        out.append(f"### {result.name}, {kind} {_fmt_density(low)}, schedule {first}: rho in the dense run at steps "
                   f"{probe}; rho at the capture steps {cap_steps}; rel. error of the attention output at the "
                   "sparse steps (vs dense attention on the same q, k, v)")
        out.append("")
        head = (["layer"] + [f"rho@{s}" for s in probe] + [f"cap@{s}" for s in cap_steps]
                + [f"err {SHORT[m]}" for m in methods])
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---:|" * len(head))
        layers = len(rho_dense)
        for layer in range(layers):
            cells = [str(layer)] + [f"{rho_dense[layer][s]:.3f}" for s in probe]
            cells += [f"{v:.3f}" for _, v in (capture[layer] if layer < len(capture) else [])]
            for m in methods:
                errs = rows[m]["layer_rel_err"]["all"]
                value = errs[layer] if layer < len(errs) else None
                cells.append("-" if value is None else f"{value:.4f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_pictures(result: ModelResult, path: str, kinds) -> list[str]:
    """PNG grid: full | (Re-ttention, plain sparse) per kind at the lowest density. Video: per sample,
    rows full, then Re-ttention and plain per kind; columns every other frame. Returns the column
    (image) or row (video) legend."""
    from .png import grid, write_png

    full = result.pictures["full"]
    order = [("full", None)] + [(kind, m) for kind in kinds for m in ("rettention", "plain")
                                if (kind, m) in result.pictures]
    legend = ["full"] + [f"{LABELS[m]} {k}" for k, m in order[1:]]

    def frames_of(key):
        return full if key[0] == "full" else result.pictures[key]

    if full.shape[2] == 1:
        tiles = [[frames_of(key)[s, :, 0] for key in order] for s in range(full.shape[0])]
    else:
        picked = range(0, full.shape[2], max(1, full.shape[2] // 8))
        tiles = [[frames_of(key)[s, :, f] for f in picked] for s in range(min(2, full.shape[0])) for key in order]
    write_png(path, grid(tiles))
    return legend


def to_json(result: ModelResult) -> dict:
    return {"info": result.info, "rows": result.rows}


def load_models(names, checkpoints: str, device, log=print):
    from .model import CONFIGS, load_checkpoint

    models = []
    for name in names:
        path = os.path.join(checkpoints, f"{name}.safetensors")
        if os.path.isfile(path):
            model, meta = load_checkpoint(path, device)
            log(f"loaded {path} ({os.path.getsize(path) / 1e6:.1f} MB; trained {meta.get('train_summary', '?')})")
        elif name.startswith("tiny"):
            model = randomize(DiT(CONFIGS[name]), seed=0).to(device).eval()
            meta = {"random": "true"}
            log(f"{path} not found: a random tiny model (untrained)")
        else:
            raise FileNotFoundError(f"no checkpoint {path}; train it first (python -m rettention.testbed train)")
        models.append((name, model, meta))
    return models


def run_benchmark(names, checkpoints: str, out_dir: str | None, opts_per_model: dict, device, log=print) -> dict:
    t0 = time.time()
    summary = {"models": {}}
    for name, model, meta in load_models(names, checkpoints, device, log):
        opts = opts_per_model[name]
        result = evaluate_model(model, name, opts, log)
        log("")
        log(format_table(result))
        log("")
        log(format_best(result))
        log("")
        log(format_verdict(result, 28.0 if model.cfg.video else 30.0))
        log("")
        log(format_layers(result))
        entry = to_json(result)
        entry["checkpoint"] = meta
        if out_dir and opts.pictures > 0:
            png = os.path.join(out_dir, f"testbed_{name}.png")
            entry["picture"] = {"path": png, "legend": write_pictures(result, png, opts.kinds)}
            log(f"wrote {png}: {'columns' if model.cfg.frames == 1 else 'rows per sample'} = "
                + ", ".join(entry["picture"]["legend"]))
        summary["models"][name] = entry
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summary["elapsed_s"] = round(time.time() - t0, 1)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "testbed_eval.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=1, default=_json_default)
        log(f"wrote {path}")
    log(f"benchmark done in {summary['elapsed_s']:.1f}s")
    return summary


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
