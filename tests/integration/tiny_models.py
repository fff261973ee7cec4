"""Tiny random-weight models of ComfyUI's own DiT classes (DESIGN.md section 6), with conditioning,
and the helpers the integration tests share: build, sample, patch, observe, baseline, close.

The models and their conditioning come from the pack's model table (nodes/bench/model_zoo.py, size
``tiny``), the same builder the end-to-end benchmark uses at real sizes. ``tiny(family)`` returns
(ModelPatcher, latent shape, positive, negative). Call them after ComfyUI has booted (the
``comfy_env`` fixture).
"""
from __future__ import annotations

import sys

import torch

from rettention_pack.nodes.bench import comfy_boot

# family: seed of its conditioning (the latent shape is the model table's TINY_LATENTS)
SEEDS = {"wan": 1, "flux": 2, "sd3": 3, "hunyuan_video": 4, "qwen_image": 5, "pixart": 6, "hunyuan_dit": 7,
         "chroma": 8, "auraflow": 9, "ltxv": 10, "hidream": 11, "lumina2": 12, "cosmos_predict2": 13,
         "cosmos": 15}
# built here rather than from the model table: conditioning the table does not describe (Mochi's prompts
# of two lengths, reference latents on existing families)
SPECIAL = {}


def zoo():
    """The pack's nodes/bench/model_zoo.py, as ComfyUI loaded the pack."""
    return comfy_boot.booted().pack_module("nodes.bench.model_zoo")


def tiny(family: str):
    if family in SPECIAL:
        return SPECIAL[family]()
    models = zoo()
    patcher = models.build_patcher(family, "tiny", torch.float32, torch.device("cpu"))
    positive, negative = models.conditioning(family, "tiny", seed=SEEDS[family])
    return patcher, models.TINY_LATENTS[family], positive, negative


def from_config(config_class: str, unet_config: dict, seed: int = 0):
    """A tiny model from any ``comfy.supported_models`` class and unet_config (fp32, CPU)."""
    return zoo().build_from_config(config_class, unet_config, torch.float32, torch.device("cpu"), seed)


def _cond(context, **extra):
    return [[context, dict(extra)]]


def mochi():
    # AsymmetricJointBlock asserts hidden_size_x * mlp_ratio_x == 12288, so hidden 128 takes ratio 96 (a SwiGLU
    # of width 8192 after FeedForward's 2/3): ~3.4M parameters a block. Two blocks: the last one does not
    # update the text. The text mask crops the text (num_tokens) before the joint attention.
    patcher = from_config("GenmoMochi", dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=2,
                                             hidden_size_x=128, hidden_size_y=64, mlp_ratio_x=96.0, mlp_ratio_y=4.0,
                                             learn_sigma=False, in_channels=12, qk_norm=True, qkv_bias=False,
                                             out_bias=True, attn_drop=0.0, patch_embed_bias=True,
                                             posenc_preserve_area=True, timestep_mlp_bias=True,
                                             attend_to_padding=False, timestep_scale=1000.0, use_t5=True,
                                             t5_feat_dim=64, t5_token_length=16, rope_theta=10000.0))
    gen = torch.Generator().manual_seed(14)

    def cond(tokens):       # T5 output padded to 16 tokens, the mask (long, as ComfyUI's T5) marks the real ones
        mask = torch.zeros(1, 16, dtype=torch.long)
        mask[:, :tokens] = 1
        return _cond(torch.randn(1, 16, 64, generator=gen), attention_mask=mask)
    # prompts of different lengths: num_tokens differs, so ComfyUI runs cond and uncond as separate forwards
    return patcher, (1, 12, 3, 8, 8), cond(10), cond(4)


def _with_reference_latents(built, ref_shapes, negative, seed=16):
    """A built tiny model whose conditioning carries ``reference_latents``, the way ComfyUI's ReferenceLatent
    node (or TextEncodeQwenImageEdit) adds them: to the positive, and to the negative when ``negative``."""
    patcher, shape, pos, neg = built
    gen = torch.Generator().manual_seed(seed)
    refs = [torch.randn(s, generator=gen) for s in ref_shapes]

    def add(cond):
        return [[context, dict(extra, reference_latents=list(refs))] for context, extra in cond]
    return patcher, shape, add(pos), add(neg) if negative else neg


def flux_kontext():
    # the tiny Flux with one reference image of another size than the target (24x40 latent, 12x20 tokens), on
    # the positive only as in ComfyUI's Kontext template (negative: the prompt zeroed out, no reference)
    return _with_reference_latents(tiny("flux"), [(1, 16, 24, 40)], negative=False)


def qwen_image_edit():
    # the tiny Qwen-Image with one reference latent of the target's size (the Wan VAE's 5-D latent) on both
    # prompts, as TextEncodeQwenImageEdit encodes each with the image
    return _with_reference_latents(tiny("qwen_image"), [(1, 16, 1, 32, 32)], negative=True)


SPECIAL.update(mochi=mochi, flux_kontext=flux_kontext, qwen_image_edit=qwen_image_edit)


# --- shared by the integration tests -----------------------------------------------------------

STEPS = 8
_BUILT = {}


def build(name):
    if name not in _BUILT:
        _BUILT[name] = tiny(name)
    return _BUILT[name]


def sample(patcher, name, cfg=3.0, steps=STEPS):
    import comfy.sample

    _, shape, pos, neg = build(name)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "simple", pos, neg, torch.zeros(shape),
                               seed=0, disable_pbar=True)


def patch(env, patcher, density=0.25, schedule=None, **kw):
    node = env["nodes"].NODE_CLASS_MAPPINGS["RettentionPatchModel"]
    args = dict(density=density, mask="auto", residual_dtype="auto", dense_first_last=False, stats_file="none",
                error_threshold=0.05)
    args.update(kw)
    return node.execute(patcher, schedule=schedule, **args).args[0]


def observe(env, patcher):
    config = sys.modules[env["pack"].__name__ + ".nodes.config"]
    reports = []
    patcher.model_options["transformer_options"][config.OBSERVER_KEY] = reports.append
    return reports


def release():
    """Drop the built models (and baselines) so that their memory can go."""
    import gc

    _BUILT.clear()
    gc.collect()


def baseline(name):
    key = ("baseline", name)
    if key not in _BUILT:
        _BUILT[key] = sample(build(name)[0], name)
    return _BUILT[key]


def close(a, b, tol=1e-4):
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) <= tol * scale
