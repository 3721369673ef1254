"""Noise schedules on the standard 1000-step grid, subsampled to T diffusion steps.

The pretrained DiT backbone was trained on timesteps 0..999 of a 1000-step schedule. Training with fewer steps T
keeps that scale instead of inventing a new one: step k in 0..T-1 sits on grid index s_k = round((k+1)*1000/T) - 1
(so the last step is always s = 999, the noisiest level), its noise level is ᾱ_k = ᾱ^{1000}[s_k], and the network is
fed s_k rather than k. The T-step betas follow from ᾱ (β_k = 1 - ᾱ_k / ᾱ_{k-1}) so that the usual DDPM posterior
formulas hold exactly on the coarse grid.

Everything here is float64; diffusion code makes float32 copies where it needs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

BASE_TIMESTEPS = 1000  # grid the pretrained backbone (and every schedule definition below) uses
_BETA_START, _BETA_END = 1e-4, 0.02  # DDPM's linear range; quadratic and sigmoid span the same interval


def linear_betas() -> torch.Tensor:
    """Ho et al. (2020): betas linear from 1e-4 to 0.02."""
    return torch.linspace(_BETA_START, _BETA_END, BASE_TIMESTEPS, dtype=torch.float64)


def quadratic_betas() -> torch.Tensor:
    """Linear in sqrt(beta): spends more steps at low noise than the linear schedule."""
    return torch.linspace(_BETA_START ** 0.5, _BETA_END ** 0.5, BASE_TIMESTEPS, dtype=torch.float64) ** 2


def sigmoid_betas() -> torch.Tensor:
    """Sigmoid ramp over [-6, 6] between the linear schedule's end points: flat at both ends."""
    ramp = torch.sigmoid(torch.linspace(-6.0, 6.0, BASE_TIMESTEPS, dtype=torch.float64))
    return ramp * (_BETA_END - _BETA_START) + _BETA_START


def cosine_betas(s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = f(t)/f(0), f(t) = cos(((t/1000) + s)/(1 + s) * pi/2)^2.

    β_i = 1 - ᾱ(i+1)/ᾱ(i); the clip matters only for the last step, where ᾱ(1000) = 0 would make β exactly 1 and
    the final level pure noise with no signal at all.
    """
    t = torch.arange(BASE_TIMESTEPS + 1, dtype=torch.float64) / BASE_TIMESTEPS
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)


SCHEDULES: dict[str, Callable[[], torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


@dataclass(frozen=True, eq=False)
class Schedule:
    """A T-step schedule (float64 tensors of shape (T,)); eq=False because tensors have no scalar equality."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    model_timesteps: torch.Tensor  # s_k on the 1000-step scale: what the network sees as its timestep

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ / (1 - ᾱ) per step (for loss weighting and diagnostics)."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)


def subsample_indices(timesteps: int) -> torch.Tensor:
    """Grid indices s_k = round((k+1) * 1000 / T) - 1 for k = 0..T-1, as int64.

    Integer arithmetic with halves rounded up, so the result does not depend on float rounding; since the spacing
    1000/T is >= 1 the indices are strictly increasing either way.
    """
    k1 = torch.arange(1, timesteps + 1, dtype=torch.int64)
    return (2 * k1 * BASE_TIMESTEPS + timesteps) // (2 * timesteps) - 1


def make_schedule(name: str, timesteps: int) -> Schedule:
    """The `timesteps`-step subsample of the named 1000-step schedule (see the module docstring)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or not 1 <= timesteps <= BASE_TIMESTEPS:
        raise ValueError(f"timesteps must be an integer in [1, {BASE_TIMESTEPS}], got {timesteps!r}")
    base_betas = SCHEDULES[name]()
    grid = subsample_indices(timesteps)
    alphas_cumprod = torch.cumprod(1 - base_betas, dim=0)[grid]
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    # Where a step covers exactly one grid step its beta is the base beta; reusing it (rather than recomputing
    # 1 - ᾱ_k/ᾱ_{k-1}, which is off by rounding) makes T = 1000 reproduce the base schedule bit for bit.
    stride = torch.diff(grid, prepend=grid.new_full((1,), -1))
    betas = torch.where(stride == 1, base_betas[grid], 1 - alphas_cumprod / alphas_cumprod_prev)
    return Schedule(betas=betas, alphas_cumprod=alphas_cumprod, model_timesteps=grid.to(torch.float64))
