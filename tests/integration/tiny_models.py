"""Tiny random-weight models of ComfyUI's own DiT classes (DESIGN.md section 6), with conditioning."""
from __future__ import annotations

import math

import torch


def _init(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("pos_embed") and b.is_floating_point():   # loaded from checkpoints, empty here
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model


def _patcher(config_cls, unet_config, seed=0):
    import comfy.model_management
    import comfy.model_patcher

    config = config_cls(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _init(model.diffusion_model, seed)
    model.diffusion_model.to(torch.float32)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=torch.device("cpu"))


def _cond(context, **extra):
    return [[context, dict(extra)]]


def wan():
    import comfy.supported_models as sm
    patcher = _patcher(sm.WAN21_T2V, dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2),
                                          text_len=16, in_dim=16, dim=256, ffn_dim=256, freq_dim=256,
                                          text_dim=64, out_dim=16, num_heads=2, num_layers=2))
    gen = torch.Generator().manual_seed(1)
    pos = _cond(torch.randn(1, 16, 64, generator=gen))
    neg = _cond(torch.randn(1, 16, 64, generator=gen))
    return patcher, (1, 16, 3, 16, 16), pos, neg


def flux():
    import comfy.supported_models as sm
    patcher = _patcher(sm.Flux, dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32,
                                     context_in_dim=64, hidden_size=128, mlp_ratio=2.0, num_heads=2, depth=1,
                                     depth_single_blocks=1, axes_dim=[16, 24, 24], theta=10000, patch_size=2,
                                     qkv_bias=True, guidance_embed=False))
    gen = torch.Generator().manual_seed(2)
    pos = _cond(torch.randn(1, 12, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    neg = _cond(torch.randn(1, 12, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    return patcher, (1, 16, 32, 32), pos, neg


def sd3():
    import comfy.supported_models as sm
    patcher = _patcher(sm.SD3, dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None,
                                    adm_in_channels=32, pos_embed_scaling_factor=None, pos_embed_max_size=32,
                                    num_patches=32 * 32, qk_norm="rms", x_block_self_attn_layers=[],
                                    context_embedder_config={"target": "torch.nn.Linear",
                                                             "params": {"in_features": 64, "out_features": 128}}))
    gen = torch.Generator().manual_seed(3)
    pos = _cond(torch.randn(1, 10, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    return patcher, (1, 16, 32, 32), pos, neg


def hunyuan_video():
    import comfy.supported_models as sm
    patcher = _patcher(sm.HunyuanVideo, dict(image_model="hunyuan_video", in_channels=16, out_channels=16,
                                             patch_size=[1, 2, 2], vec_in_dim=32, context_in_dim=64,
                                             hidden_size=128, mlp_ratio=2.0, num_heads=2, depth=1,
                                             depth_single_blocks=1, axes_dim=[16, 24, 24], theta=256,
                                             qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False))
    gen = torch.Generator().manual_seed(4)
    pos = _cond(torch.randn(1, 10, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    return patcher, (1, 16, 3, 16, 16), pos, neg


def qwen_image():
    import comfy.supported_models as sm
    patcher = _patcher(sm.QwenImage, dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                          num_layers=2, attention_head_dim=64, num_attention_heads=2,
                                          joint_attention_dim=64, axes_dims_rope=(16, 24, 24)))
    gen = torch.Generator().manual_seed(5)
    pos = _cond(torch.randn(1, 10, 64, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen))
    return patcher, (1, 16, 1, 32, 32), pos, neg


def pixart():
    import comfy.supported_models as sm
    patcher = _patcher(sm.PixArtSigma, dict(image_model="pixart_sigma", micro_condition=False, num_heads=2,
                                            patch_size=2, hidden_size=144, in_channels=4, depth=2,
                                            caption_channels=64, model_max_length=16, input_size=64,
                                            pe_interpolation=1))
    gen = torch.Generator().manual_seed(6)
    pos = _cond(torch.randn(1, 16, 64, generator=gen))
    neg = _cond(torch.randn(1, 16, 64, generator=gen))
    return patcher, (1, 4, 64, 64), pos, neg


def hunyuan_dit():
    import comfy.supported_models as sm
    patcher = _patcher(sm.HunyuanDiT, dict(image_model="hydit", input_size=32, patch_size=2, in_channels=4,
                                           hidden_size=128, depth=4, num_heads=2, mlp_ratio=2.0,
                                           text_states_dim=64, text_states_dim_t5=64, text_len=8, text_len_t5=8,
                                           size_cond=False, use_style_cond=False, learn_sigma=True))
    gen = torch.Generator().manual_seed(7)

    def cond():
        return _cond(torch.randn(1, 8, 64, generator=gen), attention_mask=torch.ones(1, 8),
                     conditioning_mt5xl=torch.randn(1, 8, 64, generator=gen), attention_mask_mt5xl=torch.ones(1, 8))
    return patcher, (1, 4, 32, 32), cond(), cond()


def chroma():
    import comfy.supported_models as sm
    # the modulation approximator's out_dim is the hidden size; its input is 16 + 16 + 32 = 64
    patcher = _patcher(sm.Chroma, dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=64,
                                       hidden_size=128, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
                                       axes_dim=[16, 24, 24], theta=10000, patch_size=2, qkv_bias=True,
                                       in_dim=64, out_dim=128, hidden_dim=64, n_layers=1))
    gen = torch.Generator().manual_seed(8)
    pos = _cond(torch.randn(1, 12, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    neg = _cond(torch.randn(1, 12, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen))
    return patcher, (1, 16, 32, 32), pos, neg


def auraflow():
    import comfy.supported_models as sm
    patcher = _patcher(sm.AuraFlow, dict(cond_seq_dim=64, in_channels=4, out_channels=4, patch_size=2, dim=128,
                                         n_layers=2, n_double_layers=1, n_heads=2, global_conddim=128,
                                         max_seq=16 * 16))
    gen = torch.Generator().manual_seed(9)
    pos = _cond(torch.randn(1, 10, 64, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen))
    return patcher, (1, 4, 32, 32), pos, neg


def ltxv():
    import comfy.supported_models as sm
    patcher = _patcher(sm.LTXV, dict(image_model="ltxv", in_channels=128, cross_attention_dim=128,
                                     attention_head_dim=64, num_attention_heads=2, caption_channels=64,
                                     num_layers=2))
    gen = torch.Generator().manual_seed(10)
    pos = _cond(torch.randn(1, 10, 64, generator=gen), attention_mask=torch.ones(1, 10, dtype=torch.long))
    neg = _cond(torch.randn(1, 10, 64, generator=gen), attention_mask=torch.ones(1, 10, dtype=torch.long))
    return patcher, (1, 128, 3, 8, 8), pos, neg


def hidream():
    import comfy.supported_models as sm
    patcher = _patcher(sm.HiDream, dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16,
                                        num_layers=1, num_single_layers=1, attention_head_dim=64,
                                        num_attention_heads=2, caption_channels=[64, 64], text_emb_dim=32,
                                        num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(32, 16, 16),
                                        max_resolution=(64, 64), llama_layers=[0, 1]))
    gen = torch.Generator().manual_seed(11)

    def cond():
        return _cond(torch.randn(1, 8, 64, generator=gen), pooled_output=torch.randn(1, 32, generator=gen),
                     conditioning_llama3=torch.randn(1, 2, 6, 64, generator=gen))
    return patcher, (1, 16, 32, 32), cond(), cond()


def lumina2():
    import comfy.supported_models as sm
    patcher = _patcher(sm.Lumina2, dict(image_model="lumina2", patch_size=2, in_channels=16, dim=128, n_layers=2,
                                        n_refiner_layers=1, n_heads=2, n_kv_heads=2, multiple_of=64,
                                        ffn_dim_multiplier=None, norm_eps=1e-5, qk_norm=True, cap_feat_dim=64,
                                        axes_dims=[16, 24, 24], axes_lens=[300, 64, 64]))
    gen = torch.Generator().manual_seed(12)
    pos = _cond(torch.randn(1, 10, 64, generator=gen), attention_mask=torch.ones(1, 10, dtype=torch.long))
    neg = _cond(torch.randn(1, 10, 64, generator=gen), attention_mask=torch.ones(1, 10, dtype=torch.long))
    return patcher, (1, 16, 32, 32), pos, neg


def cosmos_predict2():
    import comfy.supported_models as sm
    patcher = _patcher(sm.CosmosT2IPredict2, dict(image_model="cosmos_predict2", max_img_h=64, max_img_w=64,
                                                  max_frames=16, in_channels=16, out_channels=16, patch_spatial=2,
                                                  patch_temporal=1, concat_padding_mask=True, model_channels=128,
                                                  num_blocks=2, num_heads=2, mlp_ratio=2.0,
                                                  crossattn_emb_channels=64, pos_emb_cls="rope3d",
                                                  pos_emb_learnable=True, pos_emb_interpolation="crop",
                                                  use_adaln_lora=True, adaln_lora_dim=32,
                                                  extra_per_block_abs_pos_emb=False))
    gen = torch.Generator().manual_seed(13)
    pos = _cond(torch.randn(1, 10, 64, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen))
    return patcher, (1, 16, 3, 16, 16), pos, neg



def mochi():
    import comfy.supported_models as sm
    # AsymmetricJointBlock asserts hidden_size_x * mlp_ratio_x == 12288, so hidden 128 takes ratio 96 (a SwiGLU
    # of width 8192 after FeedForward's 2/3): ~3.4M parameters a block. Two blocks: the last one does not
    # update the text. The text mask crops the text (num_tokens) before the joint attention.
    patcher = _patcher(sm.GenmoMochi, dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=2,
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


def cosmos():
    import comfy.supported_models as sm
    # Cosmos 1 (GeneralDIT, "FA-CA-MLP" blocks in THWBD layout) as model_detection sets it up; its forward
    # needs the extra learnable per-block position embedding.
    patcher = _patcher(sm.CosmosT2V, dict(image_model="cosmos", max_img_h=64, max_img_w=64, max_frames=16,
                                          in_channels=16, out_channels=16, patch_spatial=2, patch_temporal=1,
                                          model_channels=128, block_config="FA-CA-MLP", concat_padding_mask=True,
                                          pos_emb_cls="rope3d", pos_emb_learnable=False, pos_emb_interpolation="crop",
                                          block_x_format="THWBD", affline_emb_norm=True, use_adaln_lora=True,
                                          adaln_lora_dim=32, num_blocks=2, num_heads=2, mlp_ratio=2.0,
                                          crossattn_emb_channels=64, extra_per_block_abs_pos_emb=True,
                                          extra_per_block_abs_pos_emb_type="learnable"))
    gen = torch.Generator().manual_seed(15)
    pos = _cond(torch.randn(1, 10, 64, generator=gen))
    neg = _cond(torch.randn(1, 10, 64, generator=gen))
    return patcher, (1, 16, 3, 16, 16), pos, neg


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
    return _with_reference_latents(flux(), [(1, 16, 24, 40)], negative=False)


def qwen_image_edit():
    # the tiny Qwen-Image with one reference latent of the target's size (the Wan VAE's 5-D latent) on both
    # prompts, as TextEncodeQwenImageEdit encodes each with the image
    return _with_reference_latents(qwen_image(), [(1, 16, 1, 32, 32)], negative=True)
