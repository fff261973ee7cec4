"""The one table of model families: how each lays out its attention tokens.

A family is recognised from the class of ComfyUI's model object (``comfy.model_base.<Class>``,
through its base classes, so WAN22 is found as WAN21 and Chroma as Flux). The table says:

- ``patch``: (t, h, w) patch size that turns the latent into the token grid;
- ``order``: where the image tokens sit in a self-attention call:
  ``image`` (image tokens only; text enters through separate cross-attention),
  ``text_first`` ([text, image, extra]), ``image_first`` ([image, text]);
- ``refs_after``: extra image tokens (reference latents: Flux Kontext, Qwen-Image-Edit) may follow
  the image tokens; the text length is then the conditioning's length;
- ``video``: the family makes videos (``auto`` mask: ``local3d``), else images;
- ``route``: ``override`` (ComfyUI's ``optimized_attention_override`` reaches the self-attention) or
  ``modules`` (the attention modules at ``module_paths`` are patched while the model is loaded).

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..rettention import TokenLayout


@dataclass(frozen=True)
class Family:
    name: str
    patch: tuple[int, int, int]
    order: str                      # "image" | "text_first" | "image_first"
    video: bool
    route: str = "override"         # "override" | "modules"
    refs_after: bool = False
    module_kind: str = ""           # for route="modules": which forward to install
    image_mask: str = "local3d"     # the auto mask kind for single images


FAMILIES: dict[str, Family] = {
    # model_base class name -> family
    "Flux": Family("flux", (1, 2, 2), "text_first", False, refs_after=True),
    "Chroma": Family("chroma", (1, 2, 2), "text_first", False, refs_after=True),
    "SD3": Family("sd3", (1, 2, 2), "text_first", False),
    "AuraFlow": Family("auraflow", (1, 2, 2), "text_first", False),
    "QwenImage": Family("qwen_image", (1, 2, 2), "text_first", False, refs_after=True),
    "Lumina2": Family("lumina2", (1, 2, 2), "text_first", False),
    "HiDream": Family("hidream", (1, 2, 2), "image_first", False),
    "WAN21": Family("wan", (1, 2, 2), "image", True),
    "HunyuanVideo": Family("hunyuan_video", (1, 2, 2), "image_first", True),
    "GenmoMochi": Family("mochi", (1, 2, 2), "image_first", True),
    "LTXV": Family("ltxv", (1, 1, 1), "image", True),
    "CosmosVideo": Family("cosmos", (1, 2, 2), "image", True),
    "CosmosPredict2": Family("cosmos_predict2", (1, 2, 2), "image", True),
    "PixArt": Family("pixart", (1, 2, 2), "image", False, route="modules", module_kind="pixart",
                     image_mask="band"),
    "HunyuanDiT": Family("hunyuan_dit", (1, 2, 2), "image", False, route="modules", module_kind="hydit",
                         image_mask="band"),
}


def family_of(model) -> Family | None:
    """The family of a ComfyUI model object (``comfy.model_base`` instance), or None."""
    for cls in type(model).__mro__:
        family = FAMILIES.get(cls.__name__)
        if family is not None and cls.__module__.endswith("model_base"):
            return family
    return None


def default_mask_kind(family: Family, grid: tuple[int, int, int]) -> str:
    """``auto``: a 3-D neighbourhood for video, the family's image mask for stills."""
    if family.video and grid[0] > 1:
        return "local3d"
    return family.image_mask


def latent_grids(family: Family, latent_shape) -> list[tuple[int, int, int]]:
    """Candidate token grids for a latent (B, C, H, W) or (B, C, T, H, W): padded (ceil) first,
    then cropped (floor) patching."""
    dims = list(latent_shape[2:])
    if len(dims) == 2:
        dims = [1] + dims
    if len(dims) != 3:
        return []
    grids = []
    for rounding in (math.ceil, math.floor):
        grid = tuple(max(1, int(rounding(d / p))) for d, p in zip(dims, family.patch))
        if grid not in grids:
            grids.append(grid)
    return grids


def self_attention_layout(family: Family, grids, n_tokens: int, text_tokens: int | None):
    """The TokenLayout of an ``n_tokens`` self-attention call, or None when the call is not one
    over this forward's image tokens (text-only refiners, shapes the table cannot explain)."""
    for grid in grids:
        image = grid[0] * grid[1] * grid[2]
        if family.order == "image":
            if n_tokens == image:
                return TokenLayout(grid)
            continue
        rest = n_tokens - image
        if rest < 0 or (text_tokens is not None and n_tokens == text_tokens and rest != 0):
            continue
        if family.order == "image_first":
            return TokenLayout(grid, 0, rest)
        if family.refs_after and text_tokens is not None and text_tokens <= rest:
            return TokenLayout(grid, text_tokens, rest - text_tokens)
        return TokenLayout(grid, rest, 0)
    return None
