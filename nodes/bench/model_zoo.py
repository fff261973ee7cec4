"""ComfyUI's own DiT classes at named sizes, with random weights: no checkpoint, nothing downloaded.

One table, :data:`MODELS` (family -> size -> :class:`ModelSpec`), holds the unet_config ComfyUI's model
detection (comfy/model_detection.py) would produce for a real checkpoint, or a tiny one for tests,
plus the shape of the text conditioning the family's text encoder gives. The end-to-end benchmark
(nodes/bench/e2e.py) builds the real sizes; the integration tests build the ``tiny`` ones.

    patcher = build_patcher("wan", "14b", torch.bfloat16, torch.device("cuda"))
    positive, negative = conditioning("wan", "14b", seed=1)

Weights are created where the model runs, in its dtype (``comfy.supported_models.<Class>(unet_config)
.get_model({}, device=...)`` with ComfyUI's own no-init layers), then filled in place with
N(0, 1/fan_in): a 14B model in bf16 takes 28 GB on the GPU and never exists in fp32 or on the CPU.
That scale keeps activations finite through 40 layers (the blocks are pre-norm), and makes attention
matter to the output. Imports ComfyUI only inside functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ModelSpec:
    config_class: str                         # comfy.supported_models.<config_class>
    unet_config: dict = field(hash=False)     # copied on use
    context: tuple[int, int]                  # c_crossattn (tokens, width)
    # further conditioning tensors: (key, "randn" | "ones" | "ones_long", shape), made in this order
    extras: tuple[tuple[str, str, tuple[int, ...]], ...] = ()


def _pooled(width):
    return (("pooled_output", "randn", (1, width)),)


MODELS: dict[str, dict[str, ModelSpec]] = {
    "wan": {
        "1.3b": ModelSpec("WAN21_T2V", dict(
            image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536,
            ffn_dim=8960, freq_dim=256, text_dim=4096, out_dim=16, num_heads=12, num_layers=30, window_size=(-1, -1),
            qk_norm=True, cross_attn_norm=True, eps=1e-6), (512, 4096)),
        "14b": ModelSpec("WAN21_T2V", dict(
            image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=5120,
            ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16, num_heads=40, num_layers=40, window_size=(-1, -1),
            qk_norm=True, cross_attn_norm=True, eps=1e-6), (512, 4096)),
        "tiny": ModelSpec("WAN21_T2V", dict(
            image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=256,
            ffn_dim=256, freq_dim=256, text_dim=64, out_dim=16, num_heads=2, num_layers=2), (16, 64)),
    },
    "hunyuan_video": {
        "t2v": ModelSpec("HunyuanVideo", dict(
            image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
            context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40,
            axes_dim=[16, 56, 56], theta=256, qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False),
            (256, 4096), _pooled(768)),
        "tiny": ModelSpec("HunyuanVideo", dict(
            image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=32,
            context_in_dim=64, hidden_size=128, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
            axes_dim=[16, 24, 24], theta=256, qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False),
            (10, 64), _pooled(32)),
    },
    "flux": {
        "dev": ModelSpec("Flux", dict(
            image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
            mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True), (512, 4096), _pooled(768)),
        "tiny": ModelSpec("Flux", dict(
            image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=128,
            mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 24, 24], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=False), (12, 64), _pooled(32)),
    },
    "pixart": {
        # PixArt-Sigma-XL-2-2K: 256x256 latent, position embedding interpolated x4 from 512 px
        "sigma_2k": ModelSpec("PixArtSigma", dict(
            image_model="pixart_sigma", micro_condition=False, num_heads=16, patch_size=2, hidden_size=1152,
            in_channels=4, depth=28, caption_channels=4096, model_max_length=300, input_size=256,
            pe_interpolation=4), (300, 4096)),
        "tiny": ModelSpec("PixArtSigma", dict(
            image_model="pixart_sigma", micro_condition=False, num_heads=2, patch_size=2, hidden_size=144,
            in_channels=4, depth=2, caption_channels=64, model_max_length=16, input_size=64, pe_interpolation=1),
            (16, 64)),
    },
    "sd3": {
        "tiny": ModelSpec("SD3", dict(
            in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=32,
            pos_embed_scaling_factor=None, pos_embed_max_size=32, num_patches=32 * 32, qk_norm="rms",
            x_block_self_attn_layers=[], context_embedder_config={
                "target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}}),
            (10, 64), _pooled(32)),
    },
    "qwen_image": {
        "tiny": ModelSpec("QwenImage", dict(
            image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
            attention_head_dim=64, num_attention_heads=2, joint_attention_dim=64, axes_dims_rope=(16, 24, 24)),
            (10, 64)),
    },
    "hunyuan_dit": {
        "tiny": ModelSpec("HunyuanDiT", dict(
            image_model="hydit", input_size=32, patch_size=2, in_channels=4, hidden_size=128, depth=4, num_heads=2,
            mlp_ratio=2.0, text_states_dim=64, text_states_dim_t5=64, text_len=8, text_len_t5=8, size_cond=False,
            use_style_cond=False, learn_sigma=True),
            (8, 64), (("attention_mask", "ones", (1, 8)), ("conditioning_mt5xl", "randn", (1, 8, 64)),
                      ("attention_mask_mt5xl", "ones", (1, 8)))),
    },
    "chroma": {
        # the modulation approximator's out_dim is the hidden size; its input is 16 + 16 + 32 = 64
        "tiny": ModelSpec("Chroma", dict(
            image_model="chroma", in_channels=64, out_channels=64, context_in_dim=64, hidden_size=128, mlp_ratio=2.0,
            num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 24, 24], theta=10000, patch_size=2,
            qkv_bias=True, in_dim=64, out_dim=128, hidden_dim=64, n_layers=1), (12, 64), _pooled(32)),
    },
    "auraflow": {
        "tiny": ModelSpec("AuraFlow", dict(
            cond_seq_dim=64, in_channels=4, out_channels=4, patch_size=2, dim=128, n_layers=2, n_double_layers=1,
            n_heads=2, global_conddim=128, max_seq=16 * 16), (10, 64)),
    },
    "ltxv": {
        "tiny": ModelSpec("LTXV", dict(
            image_model="ltxv", in_channels=128, cross_attention_dim=128, attention_head_dim=64, num_attention_heads=2,
            caption_channels=64, num_layers=2), (10, 64), (("attention_mask", "ones_long", (1, 10)),)),
    },
    "hidream": {
        "tiny": ModelSpec("HiDream", dict(
            image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=64, num_attention_heads=2, caption_channels=[64, 64], text_emb_dim=32,
            num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(32, 16, 16), max_resolution=(64, 64),
            llama_layers=[0, 1]),
            (8, 64), (("pooled_output", "randn", (1, 32)), ("conditioning_llama3", "randn", (1, 2, 6, 64)))),
    },
    "lumina2": {
        "tiny": ModelSpec("Lumina2", dict(
            image_model="lumina2", patch_size=2, in_channels=16, dim=128, n_layers=2, n_refiner_layers=1, n_heads=2,
            n_kv_heads=2, multiple_of=64, ffn_dim_multiplier=None, norm_eps=1e-5, qk_norm=True, cap_feat_dim=64,
            axes_dims=[16, 24, 24], axes_lens=[300, 64, 64]), (10, 64), (("attention_mask", "ones_long", (1, 10)),)),
    },
    "cosmos": {     # Cosmos 1 (GeneralDIT, FA-CA-MLP blocks); its forward needs the per-block position embedding
        "tiny": ModelSpec("CosmosT2V", dict(
            image_model="cosmos", max_img_h=64, max_img_w=64, max_frames=16, in_channels=16, out_channels=16,
            patch_spatial=2, patch_temporal=1, model_channels=128, block_config="FA-CA-MLP", concat_padding_mask=True,
            pos_emb_cls="rope3d", pos_emb_learnable=False, pos_emb_interpolation="crop", block_x_format="THWBD",
            affline_emb_norm=True, use_adaln_lora=True, adaln_lora_dim=32, num_blocks=2, num_heads=2, mlp_ratio=2.0,
            crossattn_emb_channels=64, extra_per_block_abs_pos_emb=True,
            extra_per_block_abs_pos_emb_type="learnable"), (10, 64)),
    },
    "cosmos_predict2": {
        "tiny": ModelSpec("CosmosT2IPredict2", dict(
            image_model="cosmos_predict2", max_img_h=64, max_img_w=64, max_frames=16, in_channels=16, out_channels=16,
            patch_spatial=2, patch_temporal=1, concat_padding_mask=True, model_channels=128, num_blocks=2, num_heads=2,
            mlp_ratio=2.0, crossattn_emb_channels=64, pos_emb_cls="rope3d", pos_emb_learnable=True,
            pos_emb_interpolation="crop", use_adaln_lora=True, adaln_lora_dim=32, extra_per_block_abs_pos_emb=False),
            (10, 64)),
    },
}


# The latent (B, C, [T], H, W) each ``tiny`` size is made for (its position-embedding and maximum sizes fit it).
TINY_LATENTS: dict[str, tuple[int, ...]] = {
    "wan": (1, 16, 3, 16, 16), "flux": (1, 16, 32, 32), "sd3": (1, 16, 32, 32), "hunyuan_video": (1, 16, 3, 16, 16),
    "qwen_image": (1, 16, 1, 32, 32), "pixart": (1, 4, 64, 64), "hunyuan_dit": (1, 4, 32, 32),
    "chroma": (1, 16, 32, 32), "auraflow": (1, 4, 32, 32), "ltxv": (1, 128, 3, 8, 8), "hidream": (1, 16, 32, 32),
    "lumina2": (1, 16, 32, 32), "cosmos_predict2": (1, 16, 3, 16, 16), "cosmos": (1, 16, 3, 16, 16),
}


def spec_of(family: str, size: str) -> ModelSpec:
    try:
        return MODELS[family][size]
    except KeyError:
        known = ", ".join(f"{f}/{s}" for f, sizes in MODELS.items() for s in sizes)
        raise KeyError(f"no model {family}/{size}; known: {known}") from None


def build_patcher(family: str, size: str, dtype: torch.dtype = torch.float32, device=None, seed: int = 0):
    """A ``comfy.model_patcher.ModelPatcher`` around the family's ComfyUI model at that size,
    random weights made on ``device`` (default: ComfyUI's torch device) in ``dtype``."""
    spec = spec_of(family, size)
    return build_from_config(spec.config_class, spec.unet_config, dtype, device, seed)


# Fields that later ComfyUI releases made required in a family's parameter dataclass, with the value
# ComfyUI's model detection (comfy/model_detection.py) gives a plain checkpoint of the family. Each is
# added only where the installed ComfyUI's dataclass has it, so one table builds on 0.3.64 and 0.33.
LATER_FIELDS = {
    "flux": {"txt_ids_dims": []},
    "chroma": {"txt_ids_dims": [], "vec_in_dim": None},
    "hunyuan_video": {"use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False},
}


def _params_fields(image_model: str) -> set[str]:
    """The fields of the installed ComfyUI's parameter dataclass for ``image_model``."""
    import dataclasses

    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.hunyuan_video.model

    params = {"flux": comfy.ldm.flux.model.FluxParams, "chroma": comfy.ldm.chroma.model.ChromaParams,
              "hunyuan_video": comfy.ldm.hunyuan_video.model.HunyuanVideoParams}[image_model]
    return {f.name for f in dataclasses.fields(params)}


def for_installed_comfyui(unet_config: dict) -> dict:
    """``unet_config`` with the fields of :data:`LATER_FIELDS` the installed ComfyUI requires."""
    later = LATER_FIELDS.get(unet_config.get("image_model"), {})
    if not later:
        return dict(unet_config)
    fields = _params_fields(unet_config["image_model"])
    return {**{k: v for k, v in later.items() if k in fields}, **unet_config}


def build_from_config(config_class: str, unet_config: dict, dtype: torch.dtype = torch.float32, device=None,
                      seed: int = 0):
    """As :func:`build_patcher`, for any ``comfy.supported_models`` class and unet_config. The weights
    stay on ``device`` (random weights cannot be reloaded, so ComfyUI's offload device is the same)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    device = torch.device(device) if device is not None else comfy.model_management.get_torch_device()
    config = getattr(comfy.supported_models, config_class)(for_installed_comfyui(unet_config))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    model.diffusion_model.to(device)              # the few tensors a constructor made on the CPU
    init_random_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """In place: matrices and kernels N(0, 1/fan_in), biases 0, other vectors (norm scales) 1,
    position-embedding buffers N(0, 0.01); on the tensors' own device and dtype."""
    generators = {}

    def generator(tensor):
        if tensor.device not in generators:
            generators[tensor.device] = torch.Generator(device=tensor.device).manual_seed(seed)
        return generators[tensor.device]

    for name, p in module.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(math.prod(p.shape[1:])), generator=generator(p))
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    for name, b in module.named_buffers():
        if name.endswith("pos_embed") and b.is_floating_point():   # loaded from checkpoints, empty here
            b.normal_(0.0, 0.1, generator=generator(b))
    return module


def conditioning(family: str, size: str, seed: int = 0, **values):
    """(positive, negative) in ComfyUI's CONDITIONING format: random tensors of the text encoder's
    shapes (fp32, CPU, as a text encoder node returns them); ``values`` (e.g. ``guidance=3.5``) are
    added to both, as FluxGuidance does."""
    spec = spec_of(family, size)
    gen = torch.Generator().manual_seed(seed)

    def one():
        extra = {}
        context = torch.randn(1, *spec.context, generator=gen)
        for key, kind, shape in spec.extras:
            if kind == "randn":
                extra[key] = torch.randn(shape, generator=gen)
            elif kind == "ones":
                extra[key] = torch.ones(shape)
            elif kind == "ones_long":
                extra[key] = torch.ones(shape, dtype=torch.long)
            else:
                raise ValueError(f"unknown conditioning kind {kind!r}")
        extra.update(values)
        return [[context, extra]]
    return one(), one()


def release() -> None:
    """Unload every model from ComfyUI's model management and free the memory of those nobody
    references any more (drop your own references first)."""
    import gc

    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.cleanup_models()
    comfy.model_management.soft_empty_cache()
