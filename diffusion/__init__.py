"""Gaussian diffusion process (forward noising, training loss, DDIM/DDPM samplers)."""
from diffusion.gaussian_diffusion import PREDICTIONS, SAMPLERS, GaussianDiffusion

__all__ = ["GaussianDiffusion", "PREDICTIONS", "SAMPLERS"]
