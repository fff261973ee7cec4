"""The attention override (``transformer_options["optimized_attention_override"]``): the one door
through which every attention call of a patched model reaches Re-ttention.

ComfyUI's attention functions call ``override(func, q, k, v, heads, ...)`` when the forward's
transformer_options carry one (comfy/ldm/modules/attention.py, ``wrap_attn``). The PixArt and
Hunyuan-DiT forwards that do not pass their transformer_options are given them by module_forwards.py.
"""
from __future__ import annotations

import torch

from .config import CONFIG_KEY, FORWARD_KEY, PatchConfig
from .forward import ForwardContext

_BIND_ORDER = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
# Keyword arguments that say how ComfyUI would run the call, not what it computes: the pack's call
# takes the backend's place. (attn_precision asks for fp32 softmax where a backend would use less;
# the kernels' softmax is fp32.) Any other keyword reaches ForwardContext.attend, which runs the call
# only when it knows what the keyword means (scale, enable_gqa) and passes it through otherwise.
_BACKEND_HINTS = ("transformer_options", "_inside_attn_wrapper", "attn_precision", "low_precision_attention",
                  "preferred_attention")


def _bind(args, kwargs) -> dict:
    bound = dict(zip(_BIND_ORDER, args))
    for name in _BIND_ORDER:
        if name in kwargs:
            bound[name] = kwargs[name]
    return bound


@torch.compiler.disable
def attention_override(func, *args, **kwargs):
    """Re-ttention for this forward's self-attention, the chained override (or ComfyUI's attention)
    for everything else."""
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
    extra = {name: value for name, value in kwargs.items() if name not in _BIND_ORDER and name not in _BACKEND_HINTS}
    return context.attend(bound["q"], bound["k"], bound["v"], int(bound["heads"]), bound.get("mask"),
                          bool(bound.get("skip_reshape", False)), bool(bound.get("skip_output_reshape", False)),
                          delegate, extra)


def existing_override(model_patcher):
    """The attention override already set on a model (to chain), never our own."""
    options = model_patcher.model_options.get("transformer_options", {})
    previous = options.get("optimized_attention_override")
    if previous is attention_override:
        config = options.get(CONFIG_KEY)
        return config.chained_override if isinstance(config, PatchConfig) else None
    return previous
