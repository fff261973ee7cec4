"""End-to-end benchmark: whole sampling runs of ComfyUI's own DiT models, unpatched and patched.

    python nodes/bench [--models wan14b_720p,hunyuan_720p,...] [--steps 50,20]
                                   [--measure-steps 4] [--comfyui PATH] [--json FILE] [--tiny]

Each model is ComfyUI's own class (``comfy.supported_models``) at its real size, with random bf16
weights made on the GPU (nodes/bench/model_zoo.py: nothing is downloaded), random text conditioning of the
real encoder's shape, and sampled by ``comfy.sample.sample`` (the path a KSampler node takes;
euler / simple, same seed and noise for both runs). "Patched" is the pack's Re-ttention Patch Model
node with every input at its default (density, mask auto, default schedule).

How the numbers are made (a real 50-step run of Wan 14B 720p takes ~20 min, so whole runs are
computed, not run):

1. Untimed warm-ups pay cuDNN plan setup and Triton autotuning: one unpatched step, then one patched
   run of a capture and a sparse step.
2. Two measured runs of ``--measure-steps`` N steps (default 4), same seed: unpatched, and patched with
   a Sparsity Schedule (start_percent 0.5/N, capture_every N) whose plan is one dense step, one
   capture step, then sparse steps (D C S S). Each step's wall time is taken at the sampler's
   per-step callback after ``torch.cuda.synchronize()``; every attention call is timed with CUDA
   events (an ``optimized_attention_override`` wrapped around the pack's; for PixArt, whose attention
   ComfyUI does not route through it, forward hooks on the self-attention modules, projections
   included). Peak GPU memory is ``torch.cuda.max_memory_allocated`` per measured run; the stats'
   peak is the pack's own accounting (the run report of its StatsStore), the same for one capture
   as for many, since a capture replaces the previous stats layer by layer. With cfg > 1 ComfyUI runs
   cond and uncond in one batched forward when its memory estimate allows (the JSON's per-step
   ``self_calls`` show what it did). Both runs' final latents are checked to be finite.
3. Whole runs: unpatched = steps x median unpatched step; patched = sum over the steps of the
   default schedule's plan for that many steps (dense / capture / sparse, as the pack plans them from
   the sigmas) of the patched run's median step time of that mode. Each adds its measured run's
   overhead outside the steps (sampling setup) once. The per-run mask construction (0.3-0.5 s of CPU
   for the video shapes) falls into the measured capture step, so it is counted at every capture.

Models (``--models``; real-workflow settings; ``--steps`` replaces the step counts for all):

    wan13b_480p / wan13b_720p / wan14b_480p / wan14b_720p   Wan 2.1 T2V, 81 frames, cfg 6, 50 and 20 steps
    hunyuan_720p    HunyuanVideo T2V 1280x720, 129 frames, 50 steps, cfg 1 + embedded guidance 6
                    (guidance-distilled, as ComfyUI's workflow runs it: one forward per step)
    flux_1024 / flux_2048   Flux-dev, 28 steps, cfg 1 + guidance 3.5
    pixart_2048     PixArt-Sigma 2K, 20 steps, cfg 4.5

``--tiny`` swaps each model for its family's tiny size and latent (CPU-capable; the smoke test).

Estimated H200 time per model with --measure-steps 4 (build, warm-ups and both measured runs: 6 dense,
2 capture and 3 sparse steps), from the cuDNN attention times in DESIGN.md section 7:

    wan14b_720p ~3.7 min (dense step ~24 s)    hunyuan_720p ~3.4 min (dense step ~23 s, cfg 1)
    wan14b_480p ~1.1 min                       wan13b_720p ~0.8 min    wan13b_480p ~0.2 min
    flux_1024 / flux_2048 / pixart_2048 ~0.1 / 0.3 / 0.1 min;   ComfyUI boot ~15 s.
    So: --models wan14b_720p,wan14b_480p ~5 min; the other six ~5 min.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace

import torch

from ... import rettention
from ...rettention import CAPTURE, DENSE, SPARSE
from ..config import CONFIG_KEY, OBSERVER_KEY
from ..families import family_of
from ..module_forwards import module_paths
from ..rettention_nodes import PatchModel, SparsitySchedule
from ..run_state import RunState
from . import model_zoo

MODES = (DENSE, CAPTURE, SPARSE)
LETTER = {"D": DENSE, "C": CAPTURE, "S": SPARSE}
GB = 1e9
SEED = 0


@dataclass(frozen=True)
class Case:
    label: str
    family: str
    size: str
    latent: tuple[int, ...]            # (B, C, [T], H, W)
    steps: tuple[int, ...]             # whole-run step counts reported
    cfg: float
    guidance: float | None = None      # embedded guidance (FluxGuidance) of guidance-distilled models
    sampler: str = "euler"
    scheduler: str = "simple"


CASES: dict[str, Case] = {
    "wan13b_480p": Case("Wan 2.1 1.3B 832x480 81f", "wan", "1.3b", (1, 16, 21, 60, 104), (50, 20), 6.0),
    "wan13b_720p": Case("Wan 2.1 1.3B 1280x720 81f", "wan", "1.3b", (1, 16, 21, 90, 160), (50, 20), 6.0),
    "wan14b_480p": Case("Wan 2.1 14B 832x480 81f", "wan", "14b", (1, 16, 21, 60, 104), (50, 20), 6.0),
    "wan14b_720p": Case("Wan 2.1 14B 1280x720 81f", "wan", "14b", (1, 16, 21, 90, 160), (50, 20), 6.0),
    "hunyuan_720p": Case("HunyuanVideo 1280x720 129f", "hunyuan_video", "t2v", (1, 16, 33, 90, 160), (50,), 1.0,
                         guidance=6.0),
    "flux_1024": Case("Flux-dev 1024x1024", "flux", "dev", (1, 16, 128, 128), (28,), 1.0, guidance=3.5),
    "flux_2048": Case("Flux-dev 2048x2048", "flux", "dev", (1, 16, 256, 256), (28,), 1.0, guidance=3.5),
    "pixart_2048": Case("PixArt-Sigma 2048x2048", "pixart", "sigma_2k", (1, 4, 256, 256), (20,), 4.5),
}


def tiny_case(case: Case) -> Case:
    return replace(case, label=f"{case.label} [tiny]", size="tiny", latent=model_zoo.TINY_LATENTS[case.family])


# --- timing ----------------------------------------------------------------------------------------

class RunTimer:
    """Wall time of each sampling step (synchronised at the sampler's per-step callback) and the
    attention time inside it (CUDA events on a GPU, wall time on the CPU), split into ``self``
    (as many query as key tokens: image self-attention, and text-only refiners where a family has
    them) and ``cross`` (cross-attention)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.step_seconds: list[float] = []
        self.attention: list[dict[str, float]] = []
        self._calls: list = []
        self._step_start = None

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def sampler_wrapper(self, executor, *args, **kwargs):
        """SAMPLER_SAMPLE wrapper: the first step starts when the sampler's loop does."""
        self._calls.clear()
        self._step_start = self.now()
        return executor(*args, **kwargs)

    def step_callback(self, step, x0, x, total_steps):
        end = self.now()
        self.step_seconds.append(end - self._step_start)
        self._step_start = end
        spent = {"self": 0.0, "cross": 0.0, "self_calls": 0, "cross_calls": 0}
        for kind, start, stop in self._calls:
            spent[kind] += self._seconds(start, stop)
            spent[kind + "_calls"] += 1
        self.attention.append(spent)
        self._calls.clear()

    def timed(self, kind: str, call):
        start = self._mark()
        out = call()
        self._calls.append((kind, start, self._mark()))
        return out

    # --- where the attention calls are --------------------------------------------------------
    def install(self, patcher) -> list:
        """Time the attention of this (cloned) patcher's runs: an override wrapped around whatever
        override is set (the pack's when patched), or, for families whose attention ComfyUI does not
        route through the override (PixArt), hooks on the self-attention modules. Returns the hook
        handles to remove after the run."""
        family = family_of(patcher.model)
        if family is not None and family.route == "modules":
            handles = []
            for path in module_paths(patcher.model, family.module_kind):
                handles.extend(self._hook(patcher.get_model_object(path)))
            return handles
        options = patcher.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = self._override(options.get("optimized_attention_override"))
        return []

    def _override(self, inner):
        timer = self

        @torch.compiler.disable
        def timed_attention(func, *args, **kwargs):
            kind = "self" if _self_attention(args, kwargs) else "cross"
            if inner is None:
                return timer.timed(kind, lambda: func(*args, **kwargs))
            return timer.timed(kind, lambda: inner(func, *args, **kwargs))
        return timed_attention

    def _hook(self, module):
        started = []

        def before(mod, args):
            started.append(self._mark())

        def after(mod, args, output):
            self._calls.append(("self", started.pop(), self._mark()))
        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _tokens(t: torch.Tensor) -> int:
    return t.shape[2] if t.dim() == 4 else t.shape[1]      # (B, H, N, D) or (B, N, H*D)


def _self_attention(args, kwargs) -> bool:
    q = kwargs.get("q", args[0] if len(args) > 0 else None)
    k = kwargs.get("k", args[1] if len(args) > 1 else None)
    return isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and _tokens(q) == _tokens(k)


# --- one sampling run ------------------------------------------------------------------------------

@dataclass
class Inputs:
    latent: tuple[int, ...]
    positive: list
    negative: list
    cfg: float
    sampler: str
    scheduler: str
    seed: int = SEED


def sample(patcher, inputs: Inputs, steps: int, callback=None) -> torch.Tensor:
    """One KSampler-style run: ComfyUI's noise for the seed, ``comfy.sample.sample``."""
    import comfy.sample

    latent = torch.zeros(inputs.latent)
    noise = comfy.sample.prepare_noise(latent, inputs.seed)
    return comfy.sample.sample(patcher, noise, steps, inputs.cfg, inputs.sampler, inputs.scheduler, inputs.positive,
                               inputs.negative, latent, seed=inputs.seed, callback=callback, disable_pbar=True)


@dataclass
class Run:
    step_seconds: list[float]
    attention: list[dict[str, float]]
    modes: list[str]
    wall_seconds: float
    peak_bytes: int | None
    output: torch.Tensor
    report: dict | None = None

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.wall_seconds - sum(self.step_seconds))

    def median(self, mode: str) -> float | None:
        times = [t for t, m in zip(self.step_seconds, self.modes) if m == mode]
        return statistics.median(times) if times else None

    def attention_median(self, mode: str) -> dict[str, float] | None:
        picked = [a for a, m in zip(self.attention, self.modes) if m == mode]
        if not picked:
            return None
        return {kind: statistics.median(a[kind] for a in picked) for kind in ("self", "cross")}

    def summary(self) -> dict:
        return {
            "step_seconds": self.step_seconds, "modes": "".join(m[0].upper() for m in self.modes),
            "attention_seconds": self.attention, "wall_seconds": self.wall_seconds,
            "overhead_seconds": self.overhead_seconds, "peak_gpu_bytes": self.peak_bytes,
            "finite": bool(torch.isfinite(self.output).all()),
        }


def measured_run(patcher, inputs: Inputs, steps: int, device: torch.device) -> Run:
    """A timed run on a clone of ``patcher`` (the clone carries the timing and the run-report observer)."""
    import comfy.patcher_extension as pe

    timer = RunTimer(device)
    timed = patcher.clone()
    reports: list[dict] = []
    timed.model_options.setdefault("transformer_options", {})[OBSERVER_KEY] = reports.append
    timed.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, "rettention_bench", timer.sampler_wrapper)
    handles = timer.install(timed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = timer.now()
    try:
        output = sample(timed, inputs, steps, callback=timer.step_callback)
    finally:
        for handle in handles:
            handle.remove()
    wall = timer.now() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    report = reports[0] if reports else None
    plan = report["plan"] if report else "D" * steps
    if len(plan) != len(timer.step_seconds):
        raise RuntimeError(f"{len(timer.step_seconds)} step callbacks for a plan of {len(plan)} steps ({plan})")
    return Run(timer.step_seconds, timer.attention, [LETTER[c] for c in plan], wall, peak, output, report)


# --- patching with the node's defaults -------------------------------------------------------------

def node_defaults(node) -> dict:
    """Every widget input of a V3 node at its default value."""
    return {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}


def patch_with_defaults(patcher, schedule=None):
    """The Re-ttention Patch Model node, every input at its default; ``schedule`` from a Sparsity
    Schedule node (None: the node's own default schedule)."""
    args = node_defaults(PatchModel)
    args.pop("model", None)
    return PatchModel.execute(patcher, schedule=schedule, **args).args[0]


def sparsity_schedule(start_percent: float, capture_every: int):
    """A Sparsity Schedule node's output: these two inputs set, the rest at their defaults."""
    args = node_defaults(SparsitySchedule)
    args.update(start_percent=start_percent, capture_every=capture_every, end_percent=1.0)
    return SparsitySchedule.execute(**args).args[0]


def measurement_schedule(steps: int):
    """Plan D C S ... S for a ``steps``-step run: warm-up ends between step 0 and step 1."""
    return sparsity_schedule(0.5 / steps, max(2, steps))


def warmup_schedule():
    """Plan C S for a 2-step run: compiles and tunes the capture and sparse kernels for these shapes."""
    return sparsity_schedule(0.0, 2)


def default_plan(patched, inputs: Inputs, steps: int) -> str:
    """The plan the pack follows in a ``steps``-step run of this model with its default settings:
    the KSampler's sigmas for that many steps, through the pack's own RunState."""
    import comfy.samplers

    sigmas = comfy.samplers.KSampler(patched, steps=steps, device=patched.load_device, sampler=inputs.sampler,
                                     scheduler=inputs.scheduler, denoise=1.0).sigmas
    config = patched.model_options["transformer_options"][CONFIG_KEY]
    return RunState(config, patched.get_model_object("model_sampling"), sigmas).plan.summary()


# --- one model -------------------------------------------------------------------------------------

def whole_run_seconds(plan: str, run: Run) -> float:
    """Sum over the plan's steps of the measured median step time of that step's mode, plus the
    measured run's overhead outside the steps."""
    medians = {mode: run.median(mode) for mode in MODES}
    missing = sorted({LETTER[c] for c in plan} - {m for m, t in medians.items() if t is not None})
    if missing:
        raise RuntimeError(f"the measured run has no {', '.join(missing)} step to time (its plan: "
                           f"{''.join(m[0].upper() for m in run.modes)})")
    return sum(medians[LETTER[c]] for c in plan) + run.overhead_seconds


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_case(name: str, case: Case, measure_steps: int, step_counts, device: torch.device, log) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = {"model": name, "label": case.label, "family": case.family, "size": case.size, "latent": case.latent,
              "dtype": str(dtype).rpartition(".")[2], "cfg": case.cfg, "guidance": case.guidance,
              "sampler": case.sampler, "scheduler": case.scheduler, "measure_steps": measure_steps}
    start = time.perf_counter()
    patcher = model_zoo.build_patcher(case.family, case.size, dtype, device)
    result["parameters"] = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    result["build_seconds"] = time.perf_counter() - start
    log(f"{name}: {case.label}, {result['parameters'] / 1e9:.2f} B parameters ({result['dtype']}) built in "
        f"{result['build_seconds']:.1f} s; latent {case.latent}, cfg {case.cfg}, {case.sampler}/{case.scheduler}")
    values = {"guidance": case.guidance} if case.guidance is not None else {}
    positive, negative = model_zoo.conditioning(case.family, case.size, seed=1, **values)
    inputs = Inputs(case.latent, positive, negative, case.cfg, case.sampler, case.scheduler)

    start = time.perf_counter()
    sample(patcher, inputs, 1)
    sample(patch_with_defaults(patcher, warmup_schedule()), inputs, 2)
    result["warmup_seconds"] = time.perf_counter() - start
    log(f"  warm-ups (untimed: 1 unpatched step; a patched capture + sparse step): {result['warmup_seconds']:.1f} s")

    unpatched = measured_run(patcher, inputs, measure_steps, device)
    log(f"  unpatched {measure_steps} steps: " + _steps_text(unpatched))
    patched = measured_run(patch_with_defaults(patcher, measurement_schedule(measure_steps)), inputs, measure_steps,
                           device)
    log(f"  patched   {measure_steps} steps: " + _steps_text(patched))
    if patched.report is None:
        raise RuntimeError(f"Patch Model left {case.family} unpatched (not a supported family?)")

    defaults = patch_with_defaults(patcher)
    result.update(_measurements(unpatched, patched))
    result["runs"] = []
    for steps in step_counts:
        plan = default_plan(defaults, inputs, steps)
        unpatched_s = steps * unpatched.median(DENSE) + unpatched.overhead_seconds
        patched_s = whole_run_seconds(plan, patched)
        result["runs"].append({"steps": steps, "plan": plan, "unpatched_seconds": unpatched_s,
                               "patched_seconds": patched_s, "reduction": 1.0 - patched_s / unpatched_s})
        log(f"  {steps} steps, plan {plan}: unpatched {unpatched_s:.1f} s, patched {patched_s:.1f} s, "
            f"{100 * (1 - patched_s / unpatched_s):.1f}% less (computed from the per-step medians)")
    del patcher, defaults
    return result


def _steps_text(run: Run) -> str:
    parts = []
    for seconds, attention, mode in zip(run.step_seconds, run.attention, run.modes):
        share = (attention["self"] + attention["cross"]) / seconds if seconds > 0 else 0.0
        parts.append(f"{mode[0].upper()} {seconds:.3f}s (attn {100 * share:.0f}%, "
                     f"{attention['self_calls']} self-attn calls)")
    peak = f", peak {run.peak_bytes / GB:.2f} GB" if run.peak_bytes is not None else ""
    return ", ".join(parts) + f"; wall {run.wall_seconds:.2f} s{peak}"


def _measurements(unpatched: Run, patched: Run) -> dict:
    report = patched.report
    step = {"unpatched": unpatched.median(DENSE), **{mode: patched.median(mode) for mode in MODES}}
    attention = {"unpatched": unpatched.attention_median(DENSE),
                 **{mode: patched.attention_median(mode) for mode in MODES}}
    share = {key: (a["self"] + a["cross"]) / step[key] if a is not None and step[key] else None
             for key, a in attention.items()}
    stats_peak = report["peak_bytes"]
    return {
        "unpatched": unpatched.summary(),
        "patched": {**patched.summary(), "plan": report["plan"], "calls": report["counts"],
                    "masks": report.get("masks", []), "stats_peak_bytes": stats_peak},
        "step_seconds": step,                   # medians: unpatched dense; patched dense, capture, sparse
        "attention_seconds": attention,         # medians per step, self- and cross-attention
        "attention_share": share,
        "peak_gpu_bytes": {"unpatched": unpatched.peak_bytes, "patched": patched.peak_bytes},
        "stats_peak_bytes": stats_peak,
        "self_attention_layers": report["layers_per_forward"],
        "finite": bool(torch.isfinite(unpatched.output).all() and torch.isfinite(patched.output).all()),
        "latent_rel_diff": rel_diff(patched.output, unpatched.output),
    }


# --- the whole benchmark ---------------------------------------------------------------------------

def run(models, measure_steps: int = 4, steps=None, tiny: bool = False, log=print) -> list[dict]:
    """Benchmark each model in turn; a model that fails is reported with its error and the rest go on.
    Every model is freed (and ComfyUI's model management emptied) before the next is built."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    results = []
    for name in models:
        case = tiny_case(CASES[name]) if tiny else CASES[name]
        step_counts = tuple(steps) if steps else case.steps
        try:
            results.append(bench_case(name, case, measure_steps, step_counts, device, log))
        except Exception as error:      # noqa: BLE001  (an OOM or a bug in one model must not lose the others)
            log(f"{name}: FAILED: {type(error).__name__}: {error}")
            traceback.print_exc()
            results.append({"model": name, "label": case.label, "error": f"{type(error).__name__}: {error}"})
        finally:
            model_zoo.release()
        if device.type == "cuda":
            left = torch.cuda.memory_allocated(device)
            results[-1]["gpu_bytes_left_after_free"] = left
            log(f"  model freed: {left / GB:.2f} GB still allocated")
    return results


def _gb(value) -> str:
    return f"{value / GB:.2f}" if value is not None else "-"


def _pct(value) -> str:
    return f"{100 * value:.0f}%" if value is not None else "-"


def _s(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


NOTE = ("Whole-run seconds are computed, not run: sum over the steps of the pack's default plan for that many "
        "steps of the measured median step time of each step's mode (plus the measured sampling overhead once); "
        "unpatched = steps x median unpatched step. Measured runs: {n} steps each, same seed, after untimed "
        "warm-ups (1 unpatched step; a patched capture + sparse step) that pay cuDNN plan setup and Triton "
        "autotuning. s/step: unpatched step, then the patched run's dense / capture / sparse steps. attn: share "
        "of a step spent in attention calls (CUDA events), unpatched dense step / patched sparse step "
        "(* = self-attention modules incl. projections, as ComfyUI does not route their attention through the "
        "override). Peak = torch.cuda.max_memory_allocated of each measured run, weights included; stats = the "
        "pack's accounted peak of cached rho and R. GB = 1e9 bytes.")


def print_table(results, measure_steps: int, out=None) -> None:
    out = out or sys.stdout
    header = (f"{'model':13s} {'steps':>5s} {'unpatched s':>11s} {'patched s':>10s} {'reduction':>9s}  "
              f"{'s/step unpatched | dense capture sparse':>40s}  {'attn D / S':>11s}  "
              f"{'peak GB unp / pat (diff)':>25s} {'stats GB':>8s} {'finite':>6s}")
    print("\n" + header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        if "error" in r:
            print(f"{r['model']:13s} FAILED: {r['error']}", file=out)
            continue
        step, share, peak = r["step_seconds"], r["attention_share"], r["peak_gpu_bytes"]
        star = "*" if r["family"] in ("pixart", "hunyuan_dit") else ""
        steps_text = f"{_s(step['unpatched'])} | {_s(step[DENSE])} {_s(step[CAPTURE])} {_s(step[SPARSE])}"
        diff = (peak["patched"] - peak["unpatched"]) if peak["unpatched"] is not None else None
        peak_text = f"{_gb(peak['unpatched'])} / {_gb(peak['patched'])} ({_gb(diff)})"
        share_text = f"{_pct(share['unpatched'])} / {_pct(share[SPARSE])}{star}"
        for run in r["runs"]:
            print(f"{r['model']:13s} {run['steps']:5d} {run['unpatched_seconds']:11.1f} {run['patched_seconds']:10.1f} "
                  f"{100 * run['reduction']:8.1f}%  {steps_text:>40s}  {share_text:>11s}  {peak_text:>25s} "
                  f"{_gb(r['stats_peak_bytes']):>8s} {'yes' if r['finite'] else 'NO':>6s}", file=out)
    print("\nWhere a step's time goes (median seconds: self-attention + cross-attention + rest = step)", file=out)
    for r in results:
        if "error" in r:
            continue
        parts = []
        for key, title in (("unpatched", "unpatched dense"), (SPARSE, "patched sparse")):
            a, total = r["attention_seconds"][key], r["step_seconds"][key]
            if a is None or total is None:
                continue
            rest = total - a["self"] - a["cross"]
            parts.append(f"{title}: {_s(a['self'])} + {_s(a['cross'])} + {_s(rest)} = {_s(total)}")
        print(f"  {r['model']:13s} " + ";  ".join(parts), file=out)
    print("\n" + NOTE.format(n=measure_steps), file=out)


def environment() -> dict:
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": str(device), "pack_version": rettention.__version__}
    try:
        import comfyui_version
        info["comfyui"] = comfyui_version.__version__
    except ImportError:
        info["comfyui"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python nodes/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="--comfyui PATH: the ComfyUI source tree (default $COMFYUI_PATH); "
                                            "read before ComfyUI starts.")
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated, any of: " + ", ".join(CASES))
    parser.add_argument("--steps", default=None,
                        help="whole-run step counts to report for every model, e.g. 50,20 (default: per model)")
    parser.add_argument("--measure-steps", type=int, default=4,
                        help="steps of each measured run (>= 4: one dense, one capture, then sparse steps)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--tiny", action="store_true", help="each family's tiny size and latent (runs on a CPU)")
    return parser


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in CASES]
    if unknown:
        sys.exit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.measure_steps < 4:
        sys.exit("--measure-steps must be at least 4 (a dense, a capture and two sparse steps)")
    steps = [int(s) for s in args.steps.split(",") if s] if args.steps else None
    if steps is not None and any(s < 1 for s in steps):
        sys.exit("--steps must be positive")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("real model sizes need a CUDA GPU; --tiny runs on the CPU")

    def log(message):
        print(message, flush=True)

    info = environment()
    log(f"Re-ttention end-to-end benchmark: ComfyUI {info['comfyui']}, torch {info['torch']}, "
        f"{info.get('gpu', info['device'])}")
    results = run(models, args.measure_steps, steps, args.tiny, log)
    print_table(results, args.measure_steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": info, "args": vars(args), "method": NOTE.format(n=args.measure_steps),
                       "results": results}, f, indent=1, default=_json_default)
    return results


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)
