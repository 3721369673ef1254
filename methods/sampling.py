"""Sampling clips from a trained model with classifier-free guidance, and writing them as GIFs.

Conventions owned here: the sampling settings a command runs with (`SamplingSettings.resolve`), the noise seed of
every generated clip (`sample_seed`), the sampling loop (`generate`) and GIF naming (`save_gifs`). Loading a model to
sample from is methods/pipeline.py's.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from config import DiffusionConfig
from diffusion import SAMPLERS
from models.text_encoder import TextEmbeddings
from utils.device import autocast, autocast_dtype
from utils.errors import UserError
from utils.gif import safe_filename, write_gif
from utils.pixels import to_uint8


@dataclass(frozen=True)
class SamplingSettings:
    """How clips are drawn: sampler steps, classifier-free guidance weight, sampler, DDIM eta and the share of the
    noise a clip's frames have in common."""
    steps: int
    guidance: float
    sampler: str
    eta: float
    noise_correlation: float = 0.0

    @classmethod
    def resolve(cls, dc: DiffusionConfig, steps: int | None = None, guidance: float | None = None,
                sampler: str | None = None, eta: float | None = None,
                noise_correlation: float | None = None) -> "SamplingSettings":
        """The DiffusionConfig's defaults with a command's flags on top; every bad value is a one-line UserError."""
        sampler = dc.sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if sampler == "ddpm":
            if steps is not None and steps != dc.timesteps:
                raise UserError(f"--steps {steps}: ddpm runs all {dc.timesteps} of the model's diffusion steps "
                                f"(use --sampler ddim to take fewer)")
            steps = dc.timesteps
        elif steps is None:
            steps = dc.sample_steps
        if not 1 <= steps <= dc.timesteps:
            raise UserError(f"--steps must be in [1, {dc.timesteps}] (the model's diffusion.timesteps), got {steps}")
        guidance = dc.guidance_scale if guidance is None else float(guidance)
        if not (math.isfinite(guidance) and guidance >= 0):
            raise UserError(f"--guidance must be a finite number >= 0, got {guidance}")
        eta = dc.eta if eta is None else float(eta)
        if not (math.isfinite(eta) and eta >= 0):
            raise UserError(f"--eta must be a finite number >= 0, got {eta}")
        if sampler == "dpm++2m" and eta > 0:
            raise UserError(f"--eta {eta:g}: dpm++2m solves the deterministic ODE (eta belongs to ddim; give --eta 0)")
        if noise_correlation is None:  # the config's negative sample_noise_correlation means "as in training"
            noise_correlation = (dc.sample_noise_correlation if dc.sample_noise_correlation >= 0
                                 else dc.frame_noise_correlation)
        noise_correlation = float(noise_correlation)
        if not 0 <= noise_correlation < 1:
            raise UserError(f"--noise_correlation must be in [0, 1), got {noise_correlation}")
        return cls(steps, guidance, sampler, eta, noise_correlation)


def sample_seed(seed: int, caption: str, index: int) -> int:
    """The noise seed of sample `index` of `caption` in a run with `seed`.

    A function of these three alone, so a clip does not depend on which other captions share the run, their order
    or the batch size: the same held-out caption gets the same clip in `evaluate --split train` and `--split val`.
    """
    digest = hashlib.sha256(f"text2sign-sample|{seed}|{index}|{caption}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch.Generator takes it


def generate(model, diffusion, text: TextEmbeddings, settings: SamplingSettings, seeds: list[int], *,
             num_frames: int, image_size: int, device="cpu", progress: bool = False, decode=None,
             clip_x0: bool = True) -> np.ndarray:
    """One clip per row of `text`, row i drawn from seeds[i], as uint8 frames (B, T, H, W, 3): the sampling loop on
    the model's image_size x image_size grid, then `decode` (model space -> frames in [-1, 1]; None: the model draws
    frames) and to_uint8. The pipeline passes a latent model's decoder (methods/pipeline.py)."""
    x = sample_clips(model, diffusion, text, settings, seeds, num_frames=num_frames, size=image_size, device=device,
                     progress=progress, clip_x0=clip_x0)
    return to_uint8(x if decode is None else decode(x))


@torch.no_grad()
def sample_clips(model, diffusion, text: TextEmbeddings, settings: SamplingSettings, seeds: list[int], *,
                 num_frames: int, size: int, device="cpu", progress: bool = False, clip_x0: bool = True
                 ) -> torch.Tensor:
    """The sampling loop: one clip per row of `text`, row i drawn from seeds[i], in the model's space: float
    (B, model.in_channels, T, size, size). clip_x0 clamps each x0 estimate to [-1, 1], the range of pixel clips;
    latent clips (unit std, unbounded) pass False. Decoding to frames is the caller's (methods/pipeline.py)."""
    model.eval()
    text = text.to(device)
    B = text.pooled.shape[0]
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds for {B} captions")

    def model_fn(x, t):
        if settings.guidance == 1.0:
            return model(x, t, text.tokens, text.mask, text.pooled)
        drop = torch.arange(2 * B, device=device) >= B  # second half: null caption
        out = model(torch.cat([x, x]), torch.cat([t, t]), text.tokens.repeat(2, 1, 1), text.mask.repeat(2, 1),
                    text.pooled.repeat(2, 1), drop=drop)
        cond, uncond = out.float().chunk(2)
        return uncond + settings.guidance * (cond - uncond)

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = (B, model.in_channels, num_frames, size, size)
    device = torch.device(device)
    unclamped = {} if clip_x0 else {"clip_x0": False}  # named only when off: a sampler's default is the clamp
    with autocast(device, autocast_dtype(device)):  # bf16 matmuls on CUDA, as in training; fp32 elsewhere
        return diffusion.sample(model_fn, shape, steps=settings.steps, sampler=settings.sampler, eta=settings.eta,
                                generator=generators, device=device, progress=progress,
                                noise_correlation=settings.noise_correlation, **unclamped)


def save_gifs(clips: np.ndarray, texts: list[str], out_dir: str, suffix: str = "",
              duration_ms: int = 100) -> list[str]:
    """Write one GIF per clip; names come from the caption, never overwriting an existing file."""
    paths = []
    for clip, text in zip(clips, texts):
        base = os.path.join(out_dir, safe_filename(text) + suffix)
        path, n = base + ".gif", 1
        while os.path.exists(path) or path in paths:
            path, n = f"{base}_{n}.gif", n + 1
        write_gif(path, clip, duration_ms=duration_ms)
        paths.append(path)
    return paths
