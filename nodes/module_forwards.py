"""Self-attention forwards for the families whose attention the override does not reach (PixArt,
Hunyuan-DiT): their modules call ComfyUI's ``optimized_attention`` without the forward's
transformer_options. While a patched model is loaded, each such module's ``forward`` is replaced
(an object patch) by a :class:`PatchedForward`: the module's own projections, then the same
attention call with the forward's transformer_options, so it enters through the override as every
other family does.
"""
from __future__ import annotations


def module_paths(model, kind: str) -> tuple[str, ...]:
    """Paths (from the BaseModel) of the self-attention modules to patch, in forward order."""
    blocks = getattr(model.diffusion_model, "blocks", None)
    if blocks is None:
        return ()
    attr = {"pixart": "attn", "hydit": "attn1"}[kind]
    return tuple(f"diffusion_model.blocks.{i}.{attr}" for i, block in enumerate(blocks) if hasattr(block, attr))


class PatchedForward:
    """Replaces ``forward`` of one self-attention module while the model is loaded. ``options`` is the
    transformer_options of the forward in flight (set by the APPLY_MODEL wrapper), None between forwards:
    then the module's own forward runs."""

    def __init__(self, module, kind: str):
        self.module = module
        self.kind = kind
        self.options: dict | None = None

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        module = self.module
        original = type(module).forward
        if self.options is None:
            return original(module, *args, **kwargs)
        if self.kind == "pixart":
            return self._pixart(original, *args, **kwargs)
        return self._hydit(original, *args, **kwargs)

    def _attention(self, q, k, v, heads, **extra):
        from comfy.ldm.modules.attention import optimized_attention

        return optimized_attention(q, k, v, heads, skip_reshape=True, transformer_options=self.options, **extra)

    def _pixart(self, original, x, mask=None, HW=None, block_id=None):
        module = self.module
        if mask is not None or getattr(module, "sr_ratio", 1) > 1:
            return original(module, x, mask=mask, HW=HW, block_id=block_id)
        batch, n, channels = x.shape
        heads = module.num_heads
        q, k, v = module.qkv(x).reshape(batch, n, 3, channels).unbind(2)
        q, k = module.q_norm(q), module.k_norm(k)
        q, k, v = (t.reshape(batch, n, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
        out = self._attention(q, k, v, heads)
        return module.proj(out.view(batch, n, channels))

    def _hydit(self, original, x, freqs_cis_img=None):
        from comfy.ldm.hydit.attn_layers import apply_rotary_emb

        module = self.module
        batch, n, channels = x.shape
        heads = module.num_heads
        qkv = module.Wqkv(x).reshape(batch, n, 3, heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        v = qkv[2]
        if freqs_cis_img is not None:
            q, k = apply_rotary_emb(q, k, freqs_cis_img, head_first=True)
        out = self._attention(q, k, v, heads, attn_precision=module.attn_precision)
        return (module.proj_drop(module.out_proj(out)),)


def patched_forwards(base_model, paths) -> list[PatchedForward]:
    """The PatchedForward objects in place on the loaded model at ``paths``."""
    found = []
    for path in paths:
        obj = base_model
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
        except AttributeError:
            continue
        forward = obj.__dict__.get("forward")
        if isinstance(forward, PatchedForward):
            found.append(forward)
    return found
