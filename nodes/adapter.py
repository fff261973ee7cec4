"""The ComfyUI adapter: attention override, wrappers and per-run state (DESIGN.md section 5).

- ``PatchConfig`` (immutable) lives in ``model_options["transformer_options"][CONFIG_KEY]``.
- OUTER_SAMPLE creates a :class:`RunState` (plan, stats store, counters) for one sampling run and
  frees it in ``finally`` (also when the user cancels).
- PREDICT_NOISE sets the step, mode and density of each model evaluation.
- APPLY_MODEL sets the forward's geometry (token grid, text length) and CFG chunks (uuids).
- The attention override (families ComfyUI routes through it) or the patched attention forwards
  (PixArt, Hunyuan-DiT) call :meth:`ForwardContext.attend` for every attention call.

Only self-attention over this forward's image tokens (with any text tokens dense) is made sparse;
cross-attention, text-only calls and anything unexpected go to ComfyUI's own attention.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..rettention import (CAPTURE, DENSE, SPARSE, CalibratedWeight, RhoWeight, Schedule, SparseMask, StatsStore,
                          UnitWeight, attend_full, attend_sparse, block_size_for, check_inputs,
                          kernels_unavailable)
from ..rettention.calibration import CalibrationData, CalibrationRecorder, save_stats_file
from .families import Family, default_mask_kind, latent_grids, self_attention_layout

log = logging.getLogger("rettention")

CONFIG_KEY = "rettention"
RUN_KEY = "rettention_run"
FORWARD_KEY = "rettention_forward"
OBSERVER_KEY = "rettention_observer"     # optional callable(report: dict), called at the end of each run
WRAPPER_KEY = "rettention"
RESIDUAL_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PatchConfig:
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
    # calibration runs (Calibrate Stats): dense output, recorded stats written to calibrate_path
    calibrate_path: str | None = None
    calibrate_ramp: float = 0.04
    calibrate_metadata: tuple[tuple[str, str], ...] = ()


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
    """Everything one sampling run holds; :meth:`close` frees it."""

    def __init__(self, config: PatchConfig, model_sampling, sigmas: torch.Tensor):
        self.config = config
        self.sigmas = [float(s) for s in sigmas.flatten().tolist()]
        steps = max(0, len(self.sigmas) - 1)
        self.progress = [progress_of(model_sampling, s) for s in self.sigmas[:steps]]
        self.calibrating = config.calibrate_path is not None
        if self.calibrating:
            modes = tuple(CAPTURE for _ in range(steps))
            from ..rettention import StepPlan
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
        self.notes: set[str] = set()
        self.finished = False
        self.weights: dict = {}
        self.grid = None

    # --- per evaluation ---------------------------------------------------------------------
    def begin_evaluation(self, sigma: float) -> None:
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
            self.notes.add(key)
            log.warning("Re-ttention: %s", message)

    def mask_for(self, layout, density: float, kind: str) -> SparseMask:
        key = (layout, density, kind)
        mask = self.masks.get(key)
        if mask is None:
            mask = self.masks[key] = SparseMask(layout, density, kind, block_size=block_size_for(layout.n_tokens))
        return mask

    def weight_for(self, layer: int, heads: int):
        """The reshape-weight rule for a capture of ``layer`` now (calibrated: w at this sigma)."""
        rule = self.config.schedule.weight
        if getattr(rule, "name", "") != "calibrated":
            return rule
        data = self.config.calibration
        if data is None or layer >= data.layers or data.heads != heads:
            self.note_once(f"calib-{layer}", f"no calibrated weight for layer {layer} with {heads} heads "
                           "in the stats file; using w = 1 there")
            return UnitWeight()
        per_head = torch.from_numpy(data.weight_at(layer, self.sigma if self.sigma is not None else 0.0).copy())
        return CalibratedWeight(per_head)

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
            "finished": self.finished,
        }

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
        self.store.close()
        report = self.report()
        self.masks.clear()
        self.weights.clear()
        report["calibration_written"] = written
        sparse = sum(c.get(SPARSE, 0) for c in self.counts.values())
        capture = sum(c.get(CAPTURE, 0) for c in self.counts.values())
        log.info("Re-ttention: %s run %s, %d capture / %d sparse attention calls, peak stats %.1f MiB",
                 self.config.family.name, self.plan.summary(), capture, sparse, report["peak_bytes"] / 2**20)
        self.recorder = None
        return report


class ForwardContext:
    """One model forward: geometry, CFG chunks, and the layer counter."""

    def __init__(self, run: RunState, grids, text_tokens: int | None, uuids, cond_or_uncond):
        self.run = run
        self.grids = grids
        self.text_tokens = text_tokens
        self.uuids = list(uuids) if uuids else []
        self.cond_or_uncond = list(cond_or_uncond) if cond_or_uncond else []
        self.layer = 0
        self._layouts: dict = {}
        self.ambiguous = False
        family = run.config.family
        if family.order == "image" and text_tokens is not None:
            image_counts = {g[0] * g[1] * g[2] for g in grids}
            if text_tokens in image_counts:
                self.ambiguous = True
                run.note_once("ambiguous", f"{family.name}: the text has as many tokens ({text_tokens}) as the "
                              "image, so self- and cross-attention cannot be told apart; dense attention this run")

    def layout(self, n_tokens: int):
        if n_tokens not in self._layouts:
            self._layouts[n_tokens] = self_attention_layout(self.run.config.family, self.grids, n_tokens,
                                                            self.text_tokens)
        return self._layouts[n_tokens]

    def chunks(self, batch: int):
        """(key, slice) per CFG chunk of the batch."""
        if self.uuids and batch % len(self.uuids) == 0:
            size = batch // len(self.uuids)
            return [(uuid, slice(i * size, (i + 1) * size)) for i, uuid in enumerate(self.uuids)]
        return [("batch", slice(0, batch))]

    def attend(self, q, k, v, heads: int, mask, skip_reshape: bool, skip_output_reshape: bool,
               delegate: Callable[[], torch.Tensor]) -> torch.Tensor:
        run = self.run
        n_q = q.shape[2] if skip_reshape else q.shape[1]
        n_k = k.shape[2] if skip_reshape else k.shape[1]
        if n_q != n_k or self.ambiguous:
            run.count("passthrough")
            return delegate()
        layout = self.layout(n_q)
        if layout is None:
            run.count("passthrough")
            return delegate()
        layer = self.layer
        self.layer += 1
        mode = run.mode
        if mask is not None:
            run.note_once("mask", f"{run.config.family.name}: an attention mask is set on self-attention; "
                          "those calls stay dense")
            mode = DENSE
        config = run.config
        if mode != DENSE and (layer in config.dense_layers or (config.dense_ends and (
                layer == 0 or (run.layers_per_forward is not None and layer == run.layers_per_forward - 1)))):
            mode = DENSE
        if mode == DENSE:
            run.count(DENSE)
            return delegate()

        batch = q.shape[0]
        if skip_reshape:
            qh, kh, vh = q, k, v
        else:
            dim = q.shape[-1] // heads
            qh, kh, vh = (t.view(batch, t.shape[1], heads, dim).transpose(1, 2) for t in (q, k, v))
        if q.is_cuda:
            problem = kernels_unavailable(q.device)
            if problem:                 # the PyTorch path would be slower than dense attention on a GPU
                run.note_once("kernels", f"{problem}; dense attention (needs triton >= 3.4 and torch >= 2.8)")
                run.count(DENSE)
                return delegate()
        kind = config.mask_kind if config.mask_kind != "auto" else default_mask_kind(config.family, layout.grid)
        try:
            sparse_mask = run.mask_for(layout, run.density, kind)
            check_inputs(qh, kh, vh, sparse_mask)
        except ValueError as error:
            run.note_once(f"inputs-{error}", f"{config.family.name}: {error}; dense attention for these calls")
            run.count(DENSE)
            return delegate()

        if run.calibrating:
            out = self._calibrate(layer, qh, kh, vh, sparse_mask)
        elif mode == SPARSE:
            out = self._sparse(layer, qh, kh, vh, sparse_mask)
        else:
            out = self._capture(layer, qh, kh, vh, sparse_mask)
        if out is None:
            run.count(DENSE)
            return delegate()
        if skip_output_reshape:
            return out
        return out.transpose(1, 2).reshape(batch, n_q, -1)

    def _capture(self, layer, q, k, v, mask):
        run = self.run
        weight = run.weight_for(layer, q.shape[1])
        out, stats = attend_full(q, k, v, mask, weight=weight,
                                 residual_dtype=RESIDUAL_DTYPES[run.config.residual_dtype])
        run.count(CAPTURE)
        for chunk, rows in self.chunks(q.shape[0]):
            run.store.put(layer, chunk, type(stats)(rho=stats.rho[rows], residual=stats.residual[rows],
                                                    mask=stats.mask, weight=stats.weight))
        return out

    def _sparse(self, layer, q, k, v, mask):
        run = self.run
        parts = []
        chunks = self.chunks(q.shape[0])
        found = [run.store.get(layer, chunk, q[rows], mask) for chunk, rows in chunks]
        if any(stats is None for stats in found):
            run.note_once(f"miss-{layer}", f"no captured stats for layer {layer} at step {run.step}; "
                          "capturing now")
            return self._capture(layer, q, k, v, mask)
        for (chunk, rows), stats in zip(chunks, found):
            parts.append(attend_sparse(q[rows], k[rows], v[rows], mask, stats, weight=stats.weight,
                                       steps_since_capture=run.since))
        run.count(SPARSE)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _calibrate(self, layer, q, k, v, mask):
        run = self.run
        out, stats = attend_full(q, k, v, mask, weight=RhoWeight(), residual_dtype=torch.float32)
        run.count(CAPTURE)
        if run.recorder is not None:
            for chunk, rows in self.chunks(q.shape[0]):
                sub = type(stats)(rho=stats.rho[rows], residual=stats.residual[rows], mask=mask, weight=stats.weight)
                run.recorder.record(layer, chunk, run.step, out[rows], sub)
        return out


# --- the override --------------------------------------------------------------------------------

_BIND_ORDER = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


def _bind(args, kwargs) -> dict:
    bound = dict(zip(_BIND_ORDER, args))
    for name in _BIND_ORDER:
        if name in kwargs:
            bound[name] = kwargs[name]
    return bound


@torch.compiler.disable
def attention_override(func, *args, **kwargs):
    """``optimized_attention_override``: Re-ttention for this forward's self-attention, the chained
    override (or ComfyUI's attention) for everything else."""
    options = kwargs.get("transformer_options") or {}
    config = options.get(CONFIG_KEY)
    chained = config.chained_override if isinstance(config, PatchConfig) else None

    def delegate():
        if chained is not None:
            return chained(func, *args, **kwargs)
        return func(*args, **kwargs)

    context = options.get(FORWARD_KEY)
    if not isinstance(context, ForwardContext):
        return delegate()
    bound = _bind(args, kwargs)
    if not all(isinstance(bound.get(n), torch.Tensor) for n in ("q", "k", "v")) or "heads" not in bound:
        return delegate()
    return context.attend(bound["q"], bound["k"], bound["v"], int(bound["heads"]), bound.get("mask"),
                          bool(bound.get("skip_reshape", False)), bool(bound.get("skip_output_reshape", False)),
                          delegate)


# --- wrappers ------------------------------------------------------------------------------------

def outer_sample_wrapper(executor, *args, **kwargs):
    """Creates the run's state (fresh for every run) and frees it in ``finally``."""
    import comfy.model_patcher

    guider = executor.class_obj
    original = guider.model_options
    run = None
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        options = guider.model_options.setdefault("transformer_options", {})
        config = options.get(CONFIG_KEY)
        if isinstance(config, PatchConfig):
            sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
            model_sampling = guider.model_patcher.get_model_object("model_sampling")
            run = RunState(config, model_sampling, sigmas)
            if run.plan.note:
                log.info("Re-ttention: %s", run.plan.note)
            options[RUN_KEY] = run
        result = executor(*args, **kwargs)
        if run is not None:
            run.finished = True
        return result
    finally:
        guider.model_options = original
        if run is not None:
            observer = original.get("transformer_options", {}).get(OBSERVER_KEY)
            report = run.close()
            if callable(observer):
                observer(report)


def predict_noise_wrapper(executor, *args, **kwargs):
    model_options = args[2] if len(args) > 2 else kwargs.get("model_options", {})
    run = model_options.get("transformer_options", {}).get(RUN_KEY)
    if isinstance(run, RunState):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        sigma = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        run.begin_evaluation(sigma)
    return executor(*args, **kwargs)


def apply_model_wrapper(executor, *args, **kwargs):
    x = args[0]
    options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
    run = options.get(RUN_KEY) if isinstance(options, dict) else None
    if not isinstance(run, RunState):
        return executor(*args, **kwargs)
    c_crossattn = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
    text_tokens = int(c_crossattn.shape[1]) if isinstance(c_crossattn, torch.Tensor) and c_crossattn.dim() == 3 else None
    grids = latent_grids(run.config.family, x.shape)
    if run.grid is None and grids:
        run.grid = grids[0]
    context = ForwardContext(run, grids, text_tokens, options.get("uuids"), options.get("cond_or_uncond"))
    patched = _module_forwards(executor.class_obj, run.config.module_paths)
    options[FORWARD_KEY] = context
    for forward in patched:
        forward.context = context
    try:
        return executor(*args, **kwargs)
    finally:
        options.pop(FORWARD_KEY, None)
        for forward in patched:
            forward.context = None
        if context.layer and (run.layers_per_forward is None or context.layer > run.layers_per_forward):
            run.layers_per_forward = context.layer


def install(model_patcher, config: PatchConfig) -> None:
    """Register the config, the override and the wrappers on a (cloned) ModelPatcher."""
    import comfy.patcher_extension as pe

    options = model_patcher.model_options.setdefault("transformer_options", {})
    options[CONFIG_KEY] = config
    options["optimized_attention_override"] = attention_override
    model_patcher.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
    model_patcher.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, WRAPPER_KEY, predict_noise_wrapper)
    model_patcher.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, apply_model_wrapper)
    for path in config.module_paths:
        module = model_patcher.get_model_object(path)
        model_patcher.add_object_patch(path + ".forward", PatchedForward(module, config.family.module_kind))


def existing_override(model_patcher):
    """The attention override already set on a model (to chain), never our own."""
    previous = model_patcher.model_options.get("transformer_options", {}).get("optimized_attention_override")
    if previous is attention_override:
        config = model_patcher.model_options["transformer_options"].get(CONFIG_KEY)
        return config.chained_override if isinstance(config, PatchConfig) else None
    return previous


# --- attention modules the override does not reach (PixArt, Hunyuan-DiT) -----------------------

def module_paths(model, kind: str) -> tuple[str, ...]:
    """Paths (from the BaseModel) of the self-attention modules to patch, in forward order."""
    diffusion_model = model.diffusion_model
    blocks = getattr(diffusion_model, "blocks", None)
    if blocks is None:
        return ()
    attr = {"pixart": "attn", "hydit": "attn1"}[kind]
    return tuple(f"diffusion_model.blocks.{i}.{attr}" for i, block in enumerate(blocks) if hasattr(block, attr))


class PatchedForward:
    """Replaces ``forward`` of one self-attention module while the model is loaded: the module's own
    projections, then Re-ttention (or ComfyUI's attention when no run is active)."""

    def __init__(self, module, kind: str):
        self.module = module
        self.kind = kind
        self.context: ForwardContext | None = None

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        module = self.module
        original = type(module).forward
        if self.context is None:
            return original(module, *args, **kwargs)
        if self.kind == "pixart":
            return self._pixart(original, *args, **kwargs)
        return self._hydit(original, *args, **kwargs)

    def _call(self, q, k, v, heads, **extra):
        from comfy.ldm.modules.attention import optimized_attention

        def delegate():
            return optimized_attention(q, k, v, heads, skip_reshape=True, **extra)
        return self.context.attend(q, k, v, heads, None, True, False, delegate)

    def _pixart(self, original, x, mask=None, HW=None, block_id=None):
        module = self.module
        if mask is not None or getattr(module, "sr_ratio", 1) > 1:
            return original(module, x, mask=mask, HW=HW, block_id=block_id)
        batch, n, channels = x.shape
        heads = module.num_heads
        q, k, v = module.qkv(x).reshape(batch, n, 3, channels).unbind(2)
        q, k = module.q_norm(q), module.k_norm(k)
        q, k, v = (t.reshape(batch, n, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
        out = self._call(q, k, v, heads)
        return module.proj(out.view(batch, n, channels))

    def _hydit(self, original, x, freqs_cis_img=None):
        from comfy.ldm.hydit.attn_layers import apply_rotary_emb

        module = self.module
        batch, n, channels = x.shape
        heads = module.num_heads
        qkv = module.Wqkv(x).reshape(batch, n, 3, heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        if freqs_cis_img is not None:
            q, k = apply_rotary_emb(q, k, freqs_cis_img, head_first=True)
        out = self._call(q, k, v, heads, attn_precision=module.attn_precision)
        out = module.proj_drop(module.out_proj(out))
        return (out,)


def _module_forwards(base_model, paths) -> list[PatchedForward]:
    found = []
    for path in paths:
        obj = base_model
        try:
            for name in path.split(".")[:]:
                obj = getattr(obj, name)
            forward = obj.__dict__.get("forward")
        except AttributeError:
            continue
        if isinstance(forward, PatchedForward):
            found.append(forward)
    return found


def stats_folder() -> str:
    """models/rettention (registered with folder_paths, merged with a user's own entry)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, "rettention")
    if "rettention" in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths["rettention"]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths["rettention"] = (paths, set(exts) | {".safetensors"})
    else:
        folder_paths.folder_names_and_paths["rettention"] = ([default], {".safetensors"})
    return folder_paths.get_folder_paths("rettention")[0]


__all__ = ["PatchConfig", "install", "existing_override", "module_paths", "attention_override",
           "stats_folder", "progress_of", "inspect"]
