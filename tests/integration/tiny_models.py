"""Tiny random-weight models of ComfyUI's own DiT classes (DESIGN.md section 6), with conditioning.

The models and their conditioning come from the pack's model table (nodes/model_zoo.py, size
``tiny``), the same builder the end-to-end benchmark uses at real sizes. ``tiny(family)`` returns
(ModelPatcher, latent shape, positive, negative). Call them after ComfyUI has booted (the
``comfy_env`` fixture).
"""
from __future__ import annotations

import torch

# family: seed of its conditioning (the latent shape is the model table's TINY_LATENTS)
SEEDS = {"wan": 1, "flux": 2, "sd3": 3, "hunyuan_video": 4, "qwen_image": 5, "pixart": 6, "hunyuan_dit": 7,
         "chroma": 8, "auraflow": 9, "ltxv": 10, "hidream": 11, "lumina2": 12, "cosmos_predict2": 13}


def zoo():
    """The pack's nodes/model_zoo.py, as ComfyUI loaded the pack."""
    from rettention.bench import comfy_boot

    return comfy_boot().booted().pack_module("nodes.model_zoo")


def tiny(family: str):
    models = zoo()
    patcher = models.build_patcher(family, "tiny", torch.float32, torch.device("cpu"))
    positive, negative = models.conditioning(family, "tiny", seed=SEEDS[family])
    return patcher, models.TINY_LATENTS[family], positive, negative


def from_config(config_class: str, unet_config: dict, seed: int = 0):
    """A tiny model from any ``comfy.supported_models`` class and unet_config (fp32, CPU)."""
    return zoo().build_from_config(config_class, unet_config, torch.float32, torch.device("cpu"), seed)
