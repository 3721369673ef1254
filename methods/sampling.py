"""Sampling clips from a trained model with classifier-free guidance, and writing them as GIFs."""
from __future__ import annotations

import os

import numpy as np
import torch

from config import Config
from dataset import to_uint8
from diffusion import GaussianDiffusion
from methods.checkpoint import load_checkpoint
from models import build_video_model
from models.text_encoder import TextEmbeddings
from utils.errors import UserError
from utils.gif import safe_filename, write_gif


def load_ema_model(path: str, device="cpu"):
    """A checkpoint's config, its EMA weights in eval mode on `device`, its diffusion process, and the raw state."""
    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"])
    model = build_video_model(cfg, state["text_dim"])
    model.load_state_dict(state["ema"])
    return cfg, model.to(device).eval(), GaussianDiffusion.from_config(cfg.diffusion), state


def sampling_settings(dc, steps: int | None, guidance: float | None) -> tuple[int, float]:
    """A command's --steps / --guidance, defaulting to the checkpoint's DiffusionConfig; bad steps are a UserError."""
    steps = steps or dc.sample_steps
    if not 1 <= steps <= dc.timesteps:
        raise UserError(f"--steps must be in [1, {dc.timesteps}] (the model's diffusion.timesteps)")
    return steps, dc.guidance_scale if guidance is None else guidance


@torch.no_grad()
def generate(model, diffusion, text: TextEmbeddings, num_frames: int, image_size: int, steps: int,
             sampler: str = "ddim", eta: float = 0.0, guidance_scale: float = 1.0, seed: int | list[int] = 0,
             device="cpu", progress: bool = False) -> np.ndarray:
    """One clip per row of `text`: returns uint8 (B, T, H, W, 3). A list of seeds gives each row its own."""
    model.eval()
    text = text.to(device)
    B = text.pooled.shape[0]
    guided = guidance_scale != 1.0

    def model_fn(x, t):
        if not guided:
            return model(x, t, text.tokens, text.mask, text.pooled)
        drop = torch.arange(2 * B, device=device) >= B  # second half: null caption
        out = model(torch.cat([x, x]), torch.cat([t, t]), text.tokens.repeat(2, 1, 1), text.mask.repeat(2, 1),
                    text.pooled.repeat(2, 1), drop=drop)
        cond, uncond = out.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    if isinstance(seed, (list, tuple)):
        generator = [torch.Generator().manual_seed(s) for s in seed]
    else:
        generator = torch.Generator().manual_seed(seed)
    shape = (B, model.in_channels, num_frames, image_size, image_size)
    x0 = diffusion.sample(model_fn, shape, steps=steps if sampler == "ddim" else None, sampler=sampler, eta=eta,
                          generator=generator, device=device, progress=progress)
    return to_uint8(x0)


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
