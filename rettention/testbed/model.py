"""The testbed Diffusion Transformer, its checkpoint format and a rectified-flow Euler sampler.

One stream of tokens as in Flux's single blocks / MMDiT: ``cond_tokens`` condition tokens (one per
condition attribute plus learned registers) are prepended to the image/video tokens and share every
self-attention. Blocks are adaLN-zero (shift, scale and gate per block from the timestep and pooled
condition, zero-initialised); q and k get RMS norms and axial RoPE (t, h, w) on the image tokens; the
tokens also get learned factorised absolute positions. Classifier-free guidance uses a null id per
attribute (dropped in training with probability ``cond_drop``).

Attention is pluggable: ``model(x, t, cond, attention=fn)`` calls ``fn(q, k, v, layer_index)``
with (B, H, N, D) tensors of one dtype; the default is ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ATTRIBUTE_SIZES

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class DiTConfig:
    frames: int = 1                 # 1: images
    size: int = 128                 # pixels per side
    patch: int = 2
    channels: int = 3
    hidden: int = 256
    heads: int = 4
    layers: int = 8
    mlp_ratio: float = 3.0
    cond_dim: int = 128             # width of the adaLN conditioning vector
    cond_tokens: int = 8            # prepended condition tokens (>= number of attributes)
    rope_theta: float = 10000.0

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.size // self.patch, self.size // self.patch)

    @property
    def image_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def tokens(self) -> int:
        return self.cond_tokens + self.image_tokens

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def video(self) -> bool:
        return self.frames > 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DiTConfig":
        return cls(**json.loads(text))


IMAGE = DiTConfig(frames=1, size=128)                  # 64 x 64 = 4096 image tokens + 8
VIDEO = DiTConfig(frames=16, size=64)                  # 16 x 32 x 32 = 16384 video tokens + 8
TINY_IMAGE = DiTConfig(frames=1, size=16, hidden=64, heads=1, layers=2, mlp_ratio=2.0, cond_dim=32)
TINY_VIDEO = replace(TINY_IMAGE, frames=4)
CONFIGS = {"image": IMAGE, "video": VIDEO, "tiny_image": TINY_IMAGE, "tiny_video": TINY_VIDEO}


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The unconditional ids (one past each attribute's last value)."""
    return torch.tensor(ATTRIBUTE_SIZES, dtype=cond.dtype, device=cond.device).expand_as(cond).clone()


def _rope_angles(cfg: DiTConfig) -> torch.Tensor:
    """(N, D/2) rotation angles: 0 for the condition tokens, axial (t, h, w) for the image tokens."""
    half = cfg.head_dim // 2
    frames, height, width = cfg.grid
    t_pairs = (half // 4) if cfg.video else 0
    h_pairs = (half - t_pairs) // 2
    w_pairs = half - t_pairs - h_pairs
    tt, yy, xx = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    parts = []
    for pos, pairs in ((tt, t_pairs), (yy, h_pairs), (xx, w_pairs)):
        if pairs:
            freqs = cfg.rope_theta ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
            parts.append(pos.reshape(-1, 1).double() * freqs)
    angles = torch.cat(parts, dim=1)
    return torch.cat([torch.zeros(cfg.cond_tokens, half, dtype=torch.float64), angles]).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d, hidden = cfg.hidden, int(cfg.hidden * cfg.mlp_ratio)
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.mod = nn.Linear(cfg.cond_dim, 6 * d)

    def forward(self, x, c, cos, sin, attention: Attention, index: int):
        batch, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(batch, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q.float()), self.k_norm(k.float())          # fp32 norms and rotation
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        o = attention(q.to(v.dtype), k.to(v.dtype), v.contiguous(), index)
        x = x + gate1 * self.proj(o.transpose(1, 2).reshape(batch, n, d))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.head_dim not in (64, 72, 80, 88, 96, 128):
            raise ValueError(f"head dim {cfg.head_dim} is not one the attention core supports")
        if cfg.cond_tokens < len(ATTRIBUTE_SIZES):
            raise ValueError(f"cond_tokens must be >= {len(ATTRIBUTE_SIZES)}")
        self.cfg = cfg
        d = cfg.hidden
        frames, height, width = cfg.grid
        patch_dim = cfg.channels * cfg.patch * cfg.patch
        vocab = sum(s + 1 for s in ATTRIBUTE_SIZES)
        self.register_buffer("attr_offsets", torch.tensor([0] + [s + 1 for s in ATTRIBUTE_SIZES[:-1]]).cumsum(0),
                             persistent=False)
        self.embed = nn.Linear(patch_dim, d)
        self.pos_t = nn.Parameter(torch.randn(frames, d) * 0.02)
        self.pos_h = nn.Parameter(torch.randn(height, d) * 0.02)
        self.pos_w = nn.Parameter(torch.randn(width, d) * 0.02)
        self.cond_embed = nn.Embedding(vocab, d)
        self.cond_pos = nn.Parameter(torch.randn(cfg.cond_tokens, d) * 0.02)
        self.cond_vector = nn.Embedding(vocab, cfg.cond_dim)
        self.time_mlp = nn.Sequential(nn.Linear(256, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(cfg.cond_dim, 2 * d)
        self.final = nn.Linear(d, patch_dim)
        angles = _rope_angles(cfg)
        self.register_buffer("rope_cos", torch.cat([angles.cos(), angles.cos()], -1), persistent=False)
        self.register_buffer("rope_sin", torch.cat([angles.sin(), angles.sin()], -1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: Xavier linears, zero adaLN modulation and output (blocks start as identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cond_embed.weight, std=0.02)
        nn.init.normal_(self.cond_vector.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.mod.weight)
            nn.init.zeros_(block.mod.bias)
        for layer in (self.final_mod, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T*h*w, p*p*C), raster order (frame, row, column)."""
        b, c, t, hh, ww = x.shape
        p = self.cfg.patch
        x = x.view(b, c, t, hh // p, p, ww // p, p).permute(0, 2, 3, 5, 4, 6, 1)
        return x.reshape(b, t * (hh // p) * (ww // p), p * p * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b = tokens.shape[0]
        t, h, w = cfg.grid
        p, c = cfg.patch, cfg.channels
        x = tokens.view(b, t, h, w, p, p, c).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(b, c, t, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                attention: Attention | None = None) -> torch.Tensor:
        """Velocity for x (B, C, T, H, W) at times t (B,) in [0, 1] under condition ids cond (B, 6)."""
        attention = attention or sdpa
        cfg = self.cfg
        ids = cond.long() + self.attr_offsets
        c = self.time_mlp(timestep_embedding(t)) + self.cond_vector(ids).sum(dim=1)
        tokens = self.embed(self.patchify(x))
        pos = (self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]).reshape(-1, cfg.hidden)
        tokens = tokens + pos
        attrs = self.cond_embed(ids)
        cond_tokens = self.cond_pos.expand(x.shape[0], -1, -1).clone()
        cond_tokens[:, : attrs.shape[1]] += attrs
        h = torch.cat([cond_tokens.to(tokens.dtype), tokens], dim=1)
        for index, block in enumerate(self.blocks):
            h = block(h, c, self.rope_cos, self.rope_sin, attention, index)
        shift, scale = self.final_mod(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        out = self.final(self.final_norm(h[:, cfg.cond_tokens:]) * (1 + scale) + shift)
        return self.unpatchify(out.float())


def randomize(model: DiT, seed: int = 0, scale: float = 1.0) -> DiT:
    """Random weights everywhere (gates and output included) so that every attention call shows in the
    output: for tests of an untrained model. Weights ~ N(0, scale^2 / fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            fan_in = param.shape[-1] if param.dim() > 1 else 1
            std = scale / math.sqrt(fan_in) if param.dim() > 1 else 0.1 * scale
            param.copy_(torch.randn(param.shape, generator=generator) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


# --- checkpoints -----------------------------------------------------------------------------------

def save_checkpoint(model: DiT, path: str, metadata: dict | None = None, dtype=torch.bfloat16) -> None:
    import os
    from safetensors.torch import save_file

    meta = {"format": "rettention-testbed", "config": model.cfg.to_json()}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[DiT, dict]:
    """A model (fp32 weights, eval mode) and the checkpoint's metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "rettention-testbed":
        raise ValueError(f"{path} is not a testbed checkpoint")
    model = DiT(DiTConfig.from_json(meta["config"]))
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.to(device).eval(), meta


# --- sampling --------------------------------------------------------------------------------------

def timesteps(steps: int, shift: float = 1.0) -> list[float]:
    """t from 1 (noise) to 0 (data), ``steps + 1`` values; ``shift`` > 1 spends more steps at high noise."""
    out = []
    for i in range(steps + 1):
        t = 1.0 - i / steps
        out.append(shift * t / (1 + (shift - 1) * t))
    return out


def initial_noise(seeds, cfg: DiTConfig) -> torch.Tensor:
    """One noise tensor per seed, drawn on the CPU (the same on every device)."""
    shape = (cfg.channels, cfg.frames, cfg.size, cfg.size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s) * 7919 + 1))
                        for s in seeds])


@torch.no_grad()
def sample(model: DiT, x: torch.Tensor, cond: torch.Tensor, steps: int, guidance: float = 3.5,
           attention: Attention | None = None, start: int = 0, stop: int | None = None, shift: float = 1.0,
           on_step: Callable[[int, float], None] | None = None, autocast: bool | None = None) -> torch.Tensor:
    """Euler steps ``start .. stop-1`` of a ``steps``-step rectified-flow run from ``x`` (noise when
    start = 0), classifier-free guidance with the null condition batched first: [uncond, cond].
    ``on_step(i, t)`` is called before each step's model evaluation. Returns x (fp32)."""
    device = next(model.parameters()).device
    ts = timesteps(steps, shift)
    stop = steps if stop is None else stop
    x = x.to(device, torch.float32)
    cond = cond.to(device)
    both = torch.cat([null_condition(cond), cond]) if guidance != 1.0 else cond
    autocast = device.type == "cuda" if autocast is None else autocast
    for i in range(start, stop):
        if on_step is not None:
            on_step(i, ts[i])
        xin = torch.cat([x, x]) if guidance != 1.0 else x
        tin = torch.full((xin.shape[0],), ts[i], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            velocity = model(xin, tin, both, attention).float()
        if guidance != 1.0:
            uncond, conditional = velocity.chunk(2)
            velocity = uncond + guidance * (conditional - uncond)
        x = x + (ts[i + 1] - ts[i]) * velocity
    return x
