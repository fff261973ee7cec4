"""Reshape-weight rules: the w in ``out = w * O_sparse + R_w`` (DESIGN.md section 1).

At a capture step the residual is cached as ``R_w = O - w0 * O_sparse`` with ``w0 = weight(rho, 0)``;
a sparse step ``k`` steps later returns ``weight(rho, k) * O_sparse + R_w``. Each rule is a small
frozen dataclass with one method, ``weight(rho, steps_since_capture, heads)``: ``rho`` is
(B, h, N) for the heads ``heads`` (a slice of the layer's heads; callers may work on a few heads
at a time). :func:`weight_rule` makes a rule from its name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RhoWeight:
    """w = ρ: the paper's rule with λ = 0 (exact when only in-window keys change)."""

    name = "rho"

    def weight(self, rho: torch.Tensor, steps_since_capture: int, heads: slice = slice(None)) -> torch.Tensor:
        return rho


@dataclass(frozen=True)
class RhoRampWeight:
    """w = min(ρ + λ·k, 1): the paper code's ramp, λ per sparse step since the capture."""

    ramp: float = 0.04
    name = "rho_ramp"

    def weight(self, rho: torch.Tensor, steps_since_capture: int, heads: slice = slice(None)) -> torch.Tensor:
        return (rho + self.ramp * steps_since_capture).clamp(max=1.0)


@dataclass(frozen=True)
class UnitWeight:
    """w = 1: residual sharing as in DiTFastAttn (exact for a common-mode change of the values)."""

    name = "one"

    def weight(self, rho: torch.Tensor, steps_since_capture: int, heads: slice = slice(None)) -> torch.Tensor:
        return torch.ones_like(rho)


@dataclass(frozen=True, eq=False)
class CalibratedWeight:
    """w fitted per head from recorded runs (a stats file): ``per_head`` has shape (H,)."""

    per_head: torch.Tensor
    name = "calibrated"

    def __eq__(self, other) -> bool:
        return (isinstance(other, CalibratedWeight) and self.per_head.shape == other.per_head.shape
                and torch.equal(self.per_head.cpu(), other.per_head.cpu()))

    __hash__ = None

    def weight(self, rho: torch.Tensor, steps_since_capture: int, heads: slice = slice(None)) -> torch.Tensor:
        per_head = self.per_head[heads]
        if per_head.shape != (rho.shape[1],):
            raise ValueError(f"calibrated weight has {self.per_head.shape[0]} heads, "
                             f"attention has {rho.shape[1]} in {heads}")
        return per_head.to(rho)[None, :, None].expand_as(rho)


WeightRule = RhoWeight | RhoRampWeight | UnitWeight | CalibratedWeight
WEIGHT_RULES = {"rho": RhoWeight, "rho_ramp": RhoRampWeight, "one": UnitWeight, "calibrated": CalibratedWeight}


def weight_rule(name: str, **params) -> WeightRule:
    """The rule called ``name`` (``rho``, ``rho_ramp``, ``one``, ``calibrated``) with its parameters."""
    if name not in WEIGHT_RULES:
        raise ValueError(f"weight rule must be one of {tuple(WEIGHT_RULES)}, got {name!r}")
    return WEIGHT_RULES[name](**params)
