"""The sampling wrappers and install(): how a patched model's run state and forward context come to be.

- OUTER_SAMPLE creates a :class:`RunState` for one sampling run and frees it in ``finally`` (also
  when the user cancels or the run fails).
- PREDICT_NOISE tells the run which step (and so which mode and density) each evaluation is.
- APPLY_MODEL makes the :class:`ForwardContext` of each model forward (token grids, text length, CFG
  chunks) and publishes it in the forward's transformer_options, where the override finds it.

Only self-attention over this forward's image tokens (with any text tokens dense) is made sparse;
cross-attention, text-only calls and anything unexpected go to ComfyUI's own attention.
"""
from __future__ import annotations

import logging

import torch

from .config import CONFIG_KEY, FORWARD_KEY, OBSERVER_KEY, RUN_KEY, WRAPPER_KEY, PatchConfig
from .families import latent_grids
from .forward import ForwardContext
from .module_forwards import PatchedForward, patched_forwards
from .override import attention_override
from .run_state import RunState
from .web_api import send_report

log = logging.getLogger("rettention")


def outer_sample_wrapper(executor, *args, **kwargs):
    """Creates the run's state (fresh for every run) and frees it in ``finally``."""
    import comfy.model_management
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
            # A node after Patch Model may have set its own override: one that chains (calls the one
            # it found) still reaches the pack's; one that replaces it (ComfyUI's Model Attention
            # Backend) leaves the run unpatched, said at the end of the run when no call came.
            run.override_replaced = options.get("optimized_attention_override") is not attention_override
            options[RUN_KEY] = run
        result = executor(*args, **kwargs)
        if run is not None:
            run.outcome = "finished"
        return result
    except comfy.model_management.InterruptProcessingException:
        if run is not None:
            run.outcome = "cancelled"
        raise
    finally:
        guider.model_options = original
        if run is not None:
            observer = original.get("transformer_options", {}).get(OBSERVER_KEY)
            report = run.close()
            send_report(run.config.node_id, report["summary"])
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
    modules = patched_forwards(executor.class_obj, run.config.module_paths)
    options[FORWARD_KEY] = context
    for forward in modules:
        forward.options = options
    try:
        return executor(*args, **kwargs)
    finally:
        options.pop(FORWARD_KEY, None)
        for forward in modules:
            forward.options = None
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
