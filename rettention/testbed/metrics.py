"""Fidelity of a sample against a reference, per sample, in torch: PSNR, SSIM, relative L2.

Inputs are (B, C, H, W) images or (B, C, T, H, W) videos with values in [-1, 1] (``data_range`` 2).
SSIM is Wang et al.'s: Gaussian window 11 (sigma 1.5), K1 = 0.01, K2 = 0.03, computed per channel
over the valid region (as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False)``) and averaged; a video's SSIM is the mean over its frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().reshape(x.shape[0], -1)


def mse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((_flat(x) - _flat(ref)) ** 2).mean(dim=1)


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """(B,) dB; inf where x equals ref."""
    err = mse(x, ref)
    return torch.where(err > 0, 10 * torch.log10(data_range ** 2 / err.clamp_min(1e-300)),
                       torch.full_like(err, math.inf))


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B,) ||x - ref|| / ||ref||."""
    return (_flat(x) - _flat(ref)).norm(dim=1) / _flat(ref).norm(dim=1).clamp_min(1e-300)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """(B,) mean SSIM; 1.0 where x equals ref."""
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    batch, channels = x.shape[:2]
    if x.dim() == 5:                                          # frames as images
        frames = x.shape[2]
        x, ref = (t.transpose(1, 2).reshape(batch * frames, channels, *t.shape[3:]) for t in (x, ref))
    else:
        frames = 1
    x, ref = x.detach().double(), ref.detach().double()
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2                                      # odd
    g = _gaussian_window(size, sigma).to(x.device)
    kernel_h = g.view(1, 1, size, 1).expand(channels, 1, size, 1)
    kernel_w = g.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(t):
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_w, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(ref * ref) - mu_y ** 2
    cov = blur(x * ref) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_image = ssim_map.mean(dim=(1, 2, 3))
    return per_image.view(batch, frames).mean(dim=1)


def summary(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Means over the batch: psnr (dB, inf when every sample is exact), ssim, rel_l2."""
    return {"psnr": float(psnr(x, ref).mean()), "ssim": float(ssim(x, ref).mean()),
            "rel_l2": float(rel_l2(x, ref).mean())}
