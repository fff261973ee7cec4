"""Procedural training data: scenes of shapes, gradients and textures (images) and the same scenes
with shapes moving at constant velocity, wrapping at the edges (videos). Deterministic from a seed.

A condition is one integer per attribute in :data:`ATTRIBUTES`. The condition drives the *global*
structure, so a model that follows it must attend far: ``layout`` makes the scene mirror-symmetric
(left-right, both axes, point reflection) or repeats every object on a 2x2 or 3x3 lattice;
``palette`` sets every colour of the frame; ``shape`` and ``count`` say what and how many objects
(per fundamental domain); ``texture`` puts a periodic pattern on the background; ``motion`` (video
only) pans that background at constant velocity. In a video the objects always move at constant
velocity on the torus, so a token must find the same object elsewhere in other frames.

Everything random is drawn from a CPU ``torch.Generator`` in a fixed order (the number of draws
does not depend on the condition); rendering is plain tensor arithmetic on any device.
Values are in [-1, 1], shape (n, 3, frames, size, size).
"""
from __future__ import annotations

import math

import torch

ATTRIBUTES = ("layout", "palette", "shape", "count", "texture", "motion")
ATTRIBUTE_SIZES = (6, 8, 5, 4, 4, 2)
LAYOUTS = ("free", "mirror_x", "mirror_xy", "point", "tile2", "tile3")
SHAPES = ("circle", "square", "ring", "diamond", "bar")
TEXTURES = ("none", "stripes", "checker", "dots")
MAX_SHAPES = 4

# background 1, background 2, object colours 1-3 (texture uses colour 3)
_PALETTES = (
    ("0b1d3a", "1f4e79", "f2c14e", "f78154", "4d9de0"),   # night
    ("f4f1de", "e9c46a", "e76f51", "2a9d8f", "264653"),   # sand
    ("1b4332", "52b788", "ffd166", "ef476f", "073b4c"),   # forest
    ("2b2d42", "8d99ae", "ef233c", "edf2f4", "ffb703"),   # steel
    ("fde2e4", "cddafd", "6d597a", "b56576", "355070"),   # pastel
    ("000000", "3a0ca3", "4cc9f0", "f72585", "b5e48c"),   # neon
    ("582f0e", "b6ad90", "fefae0", "a4161a", "414833"),   # earth
    ("03045e", "90e0ef", "ff006e", "fb5607", "ffbe0b"),   # sea
)


def _palette_table() -> torch.Tensor:
    return torch.tensor([[[int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4)] for c in pal] for pal in _PALETTES])


PALETTES = _palette_table()          # (8, 5, 3) in [0, 1]


def sample_conditions(n: int, generator: torch.Generator, video: bool = False) -> torch.Tensor:
    """(n, len(ATTRIBUTES)) int64; ``motion`` is 0 for images."""
    cols = [torch.randint(size, (n,), generator=generator) for size in ATTRIBUTE_SIZES]
    cond = torch.stack(cols, dim=1)
    if not video:
        cond[:, ATTRIBUTES.index("motion")] = 0
    return cond


def _scene_params(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def uniform(*shape):
        return torch.rand(*shape, generator=generator)

    return {
        "center": uniform(n, MAX_SHAPES, 2),
        "radius": 0.07 + 0.11 * uniform(n, MAX_SHAPES),
        "angle": math.pi * uniform(n, MAX_SHAPES),
        "colour": torch.randint(3, (n, MAX_SHAPES), generator=generator),
        "jitter": 0.15 * (uniform(n, MAX_SHAPES, 3) - 0.5),
        "velocity": 0.07 * (uniform(n, MAX_SHAPES, 2) - 0.5),     # frame units per frame, |v| <= 0.035
        "bg_angle": 2 * math.pi * uniform(n),
        "tex_freq": 3.0 + 5.0 * uniform(n),
        "tex_angle": math.pi * uniform(n),
        "tex_strength": 0.2 + 0.2 * uniform(n),
        "pan": 0.04 * (uniform(n, 2) - 0.5),
    }


def _sdf(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor,
         r: torch.Tensor) -> torch.Tensor:
    """Signed distance of the shape ``kind`` (per sample, broadcast) with radius r at offset (x, y);
    (xr, yr) is the offset in the shape's rotated frame."""
    dist = torch.sqrt(x * x + y * y)
    out = dist - r                                                            # circle
    out = torch.where(kind == 1, torch.maximum(xr.abs(), yr.abs()) - 0.8 * r, out)   # square
    out = torch.where(kind == 2, (dist - r).abs() - 0.3 * r, out)            # ring
    out = torch.where(kind == 3, xr.abs() + yr.abs() - 1.1 * r, out)         # diamond
    out = torch.where(kind == 4, torch.maximum(xr.abs() - r, yr.abs() - 0.35 * r), out)   # bar
    return out


def render(cond: torch.Tensor, params: dict[str, torch.Tensor], frames: int, size: int,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Scenes for ``cond`` (n, 6) and ``params`` (from :func:`_scene_params`): (n, 3, frames, size, size)."""
    device = torch.device(device)
    n = cond.shape[0]
    cond = cond.to(device)
    p = {k: v.to(device) for k, v in params.items()}
    layout, palette, shape, count, texture, motion = (cond[:, i] for i in range(len(ATTRIBUTES)))
    pal = PALETTES.to(device)[palette]                                        # (n, 5, 3)

    def per_sample(t):                                                         # (n,) -> (n, 1, 1, 1)
        return t.view(n, 1, 1, 1)

    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    v = axis.view(1, 1, size, 1)
    u = axis.view(1, 1, 1, size)
    time = torch.arange(frames, device=device, dtype=torch.float32).view(1, frames, 1, 1)

    # --- background: a gradient and a texture, folded like the layout so that it is symmetric too
    mirror_x = per_sample((layout == 1) | (layout == 2))
    mirror_y = per_sample(layout == 2)
    point = per_sample(layout == 3)
    bu = torch.where(mirror_x, 2 * torch.minimum(u, 1 - u), u.expand(n, 1, 1, size))
    bv = torch.where(mirror_y, 2 * torch.minimum(v, 1 - v), v.expand(n, 1, size, 1))
    phi = per_sample(p["bg_angle"])
    linear = 0.5 + (bu - 0.5) * torch.cos(phi) + (bv - 0.5) * torch.sin(phi)
    radial = torch.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2) / math.sqrt(0.5)
    grad = torch.where(point, radial, linear).clamp(0, 1)                     # (n, 1, S, S)
    bg1, bg2 = pal[:, 0].view(n, 3, 1, 1, 1), pal[:, 1].view(n, 3, 1, 1, 1)
    image = bg1 + (bg2 - bg1) * grad.unsqueeze(1)                             # (n, 3, 1, S, S)

    pan_on = per_sample(motion == 1).float()
    tu = bu - pan_on * per_sample(p["pan"][:, 0]) * time                      # (n, T, S, S)
    tv = bv - pan_on * per_sample(p["pan"][:, 1]) * time
    freq, psi = per_sample(p["tex_freq"]), per_sample(p["tex_angle"])
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (tu * torch.cos(psi) + tv * torch.sin(psi)))
    checker = 0.5 + 0.5 * torch.tanh(4 * torch.sin(2 * math.pi * freq * tu) * torch.sin(2 * math.pi * freq * tv))
    du, dv = torch.frac(freq * tu) - 0.5, torch.frac(freq * tv) - 0.5
    dots = ((0.3 - torch.sqrt(du * du + dv * dv)) * 10).clamp(0, 1)
    tex = torch.zeros_like(stripes)
    tex = torch.where(per_sample(texture == 1), stripes, tex)
    tex = torch.where(per_sample(texture == 2), checker, tex)
    tex = torch.where(per_sample(texture == 3), dots, tex)
    weight = (per_sample(p["tex_strength"]) * tex).unsqueeze(1)              # (n, 1, T, S, S)
    image = image * (1 - weight) + pal[:, 4].view(n, 3, 1, 1, 1) * weight

    # --- objects: each drawn at the coordinate copies of the layout (mirror / point) or tiled
    tiles = per_sample(torch.where(layout == 4, 2, torch.where(layout == 5, 3, 1)).float())
    su, sv = torch.frac(u * tiles), torch.frac(v * tiles)                    # tile coordinates
    copies = (
        (su, sv, torch.ones_like(layout, dtype=torch.bool)),
        (1 - su, sv, (layout == 1) | (layout == 2)),
        (su, 1 - sv, layout == 2),
        (1 - su, 1 - sv, (layout == 2) | (layout == 3)),
    )
    aa = tiles / size                                                          # one pixel in tile units
    kind = per_sample(shape)
    for j in range(MAX_SHAPES):
        on = per_sample(count >= j).float()
        cx = torch.frac(per_sample(p["center"][:, j, 0]) + per_sample(p["velocity"][:, j, 0]) * time)
        cy = torch.frac(per_sample(p["center"][:, j, 1]) + per_sample(p["velocity"][:, j, 1]) * time)
        r = per_sample(p["radius"][:, j])
        cos_a, sin_a = torch.cos(per_sample(p["angle"][:, j])), torch.sin(per_sample(p["angle"][:, j]))
        alpha = torch.zeros(n, frames, size, size, device=device)
        shade_sum = torch.zeros_like(alpha)
        alpha_sum = torch.zeros_like(alpha)
        for cu, cv, enabled in copies:
            x = torch.frac(cu - cx + 0.5) - 0.5                                 # torus offsets
            y = torch.frac(cv - cy + 0.5) - 0.5
            xr, yr = x * cos_a + y * sin_a, -x * sin_a + y * cos_a
            a = (0.5 - _sdf(kind, x, y, xr, yr, r) / aa).clamp(0, 1) * per_sample(enabled).float()
            s = 1.15 - 0.3 * (y / r).clamp(-1, 1) - 0.15 * (torch.sqrt(x * x + y * y) / r).clamp(0, 1)
            shade_sum = shade_sum + a * s                                       # order-free: symmetric copies
            alpha_sum = alpha_sum + a
            alpha = torch.maximum(alpha, a)
        shade = torch.where(alpha_sum > 0, shade_sum / alpha_sum.clamp_min(1e-6), torch.ones_like(alpha))
        colour = pal.gather(1, (2 + p["colour"][:, j]).view(n, 1, 1).expand(n, 1, 3)).view(n, 3) + p["jitter"][:, j]
        alpha = (alpha * on).unsqueeze(1)
        image = image * (1 - alpha) + colour.view(n, 3, 1, 1, 1) * shade.unsqueeze(1) * alpha
    return (image.clamp(0, 1) * 2 - 1).contiguous()


def make_batch(seed: int, n: int, frames: int, size: int, device: torch.device | str = "cpu",
               cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes drawn from ``seed``: (x (n, 3, frames, size, size) in [-1, 1], cond (n, 6))."""
    generator = torch.Generator().manual_seed(int(seed))
    drawn = sample_conditions(n, generator, video=frames > 1)
    cond = drawn if cond is None else cond.cpu().long()
    params = _scene_params(n, generator)
    return render(cond, params, frames, size, device), cond


def describe(cond_row) -> str:
    """A readable condition, e.g. ``mirror_x/palette 3/ring x2/stripes``."""
    layout, palette, shape, count, texture, motion = (int(c) for c in cond_row)
    text = f"{LAYOUTS[layout]}/palette {palette}/{SHAPES[shape]} x{count + 1}/{TEXTURES[texture]}"
    return text + ("/pan" if motion else "")
