"""SignPipeline: a trained model with its diffusion process, text encoder and sampling defaults, as one object that
turns captions into clips and GIFs (diffusers' pipeline objects are the model).

The one way every command draws clips: `sample`, `export` (the card's GIFs), `serve`, `evaluate` and the trainer's
sample GIFs. `from_pretrained` loads a training checkpoint (file) or an exported folder; the trainer wraps its live
EMA model directly.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from data.folder import caption_words
from data.latents import LatentNorm, decode_clips, encode_clips
from diffusion import GaussianDiffusion
from methods.checkpoint import check_weights_fit, load_checkpoint, load_weights, nonfinite_summary
from methods.run_config import config_from_checkpoint
from methods.sampling import SamplingSettings, generate, sample_seed, save_gifs
from methods.sharing.export_format import read_export
from models import build_video_model, model_input_shape
from models.autoencoder import load_autoencoder
from models.text_encoder import TextEmbeddings
from utils.device import available_memory, format_bytes
from utils.errors import UserError
from utils.pixels import to_uint8, to_unit_range

SAMPLER_COPIES = 6  # float32 clip-sized tensors a sampler step holds: x, noise, model output, x0, eps and the next x
DECODED_COPIES = 2  # float32 frame-sized tensors of a decoded batch: the decoder's output and to_uint8's rescaled copy


class SignPipeline:
    """EMA model + diffusion + text encoder (+ the frozen autoencoder of a latent model and the normalisation its
    training used): `pipe(captions, seed=0)` -> uint8 clips (N, T, H, W, 3)."""

    def __init__(self, cfg, model, diffusion: GaussianDiffusion, *, encoder=None, state: dict | None = None,
                 device="cpu", autoencoder=None, latent_norm: LatentNorm | None = None):
        if (autoencoder is None) != (latent_norm is None):
            raise ValueError("a latent model needs both its autoencoder and its latent normalisation")
        self.cfg, self.model, self.diffusion, self.encoder = cfg, model, diffusion, encoder
        self.autoencoder, self.latent_norm = autoencoder, latent_norm
        self.state = state or {}
        self.device = torch.device(device)
        self.defaults = SamplingSettings.resolve(cfg.diffusion)

    @classmethod
    def from_pretrained(cls, path: str, device="cpu", text_encoder: bool = True,
                        autoencoder: str | None = None) -> "SignPipeline":
        """A checkpoint file or an exported folder; its EMA weights in eval mode on `device`. text_encoder=False
        for callers that bring their own caption embeddings (`evaluate`'s cached ones). autoencoder: a folder (or
        kl / tiny name) to decode with instead of the one the model names: another decoder of its encoder."""
        from models.text_encoder import FrozenTextEncoder

        state = read_export(path) if os.path.isdir(path) else load_checkpoint(path)
        bad = nonfinite_summary(state["ema"])
        if bad:
            raise UserError(f"{path} holds non-finite EMA weights ({bad}): the run diverged before it was saved; "
                            f"sample an earlier checkpoint")
        cfg = config_from_checkpoint(state)
        if autoencoder:
            if cfg.autoencoder.kind == "none":
                raise UserError(f"{path} is a pixel model: it decodes nothing, so --autoencoder does not apply")
            cfg.autoencoder.path = autoencoder
        with torch.device("meta"):  # shapes only: a config declaring a model far larger than its file costs nothing
            check_weights_fit(build_video_model(cfg, state["text_dim"]), state["ema"], path)
        model = build_video_model(cfg, state["text_dim"])
        load_weights(model, state["ema"], path)
        encoder = FrozenTextEncoder(cfg.text.encoder, cfg.text.max_length, device) if text_encoder else None
        autoencoder, norm = latent_parts(cfg, state, path, device)
        return cls(cfg, model.to(device).eval(), GaussianDiffusion.from_config(cfg.diffusion), encoder=encoder,
                   state=state, device=device, autoencoder=autoencoder, latent_norm=norm)

    def settings(self, **flags) -> SamplingSettings:
        """The model's sampling defaults with a command's flags (steps, guidance, sampler, eta, noise_correlation)."""
        return SamplingSettings.resolve(self.cfg.diffusion, **flags)

    def __call__(self, captions: list[str], *, seed: int = 0, seeds: list[int] | None = None,
                 settings: SamplingSettings | None = None, text: TextEmbeddings | None = None,
                 batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Clip i of `captions` from seeds[i] (default: sample 0 of (seed, caption)), at the trained frames and size,
        at most `batch_size` clips at once (memory is bounded by it, never by len(captions)). `text`: the captions'
        embeddings when the caller has them, else the pipeline's encoder makes them."""
        seeds = seeds if seeds is not None else [sample_seed(seed, c, 0) for c in captions]
        if len(seeds) != len(captions):
            raise ValueError(f"{len(seeds)} seeds for {len(captions)} captions")
        if text is None:
            if self.encoder is None:
                raise ValueError("this pipeline has no text encoder: pass the captions' embeddings as text=")
            text = self.encoder.encode(captions)
        settings = settings or self.defaults
        batch_size = batch_size or max(1, len(captions))
        self.check_memory(len(captions), batch_size, settings)
        one_batch = len(captions) <= batch_size  # then the bar counts sampler steps, else clips
        _, frames, size = model_input_shape(self.cfg)  # the model's grid: pixels, or latents decoded below
        clips = []
        with tqdm(total=len(captions), desc="sample", unit="clip", disable=not progress or one_batch,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            for start in range(0, len(captions), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(captions)), device=text.pooled.device)
                clips.append(generate(self.model, self.diffusion, text.select(rows), settings,
                                      seeds[start:start + len(rows)], num_frames=frames, image_size=size,
                                      device=self.device, progress=progress and one_batch, decode=self.decode,
                                      clip_x0=self.autoencoder is None))
                bar.update(len(rows))
        return np.concatenate(clips)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space clips -> frames in [-1, 1]: pixel models' clips are frames already; a latent model's are
        un-normalised and decoded a few frames at a time (data.latents.decode_clips)."""
        return x if self.autoencoder is None else decode_clips(self.autoencoder, self.latent_norm, x)

    @torch.no_grad()
    def reconstruct(self, clips_u8: np.ndarray, batch_size: int = 16) -> np.ndarray | None:
        """Real clips uint8 (N, T, H, W, 3) through the autoencoder and back (None for a pixel model): the best a
        latent model can draw, so what its generated clips are measured against beside the real ones."""
        if self.autoencoder is None:
            return None
        out = []
        for start in range(0, len(clips_u8), batch_size):
            x = to_unit_range(torch.from_numpy(clips_u8[start:start + batch_size])).to(self.device)  # (B, 3, T, H, W)
            z = self.latent_norm.to_model(encode_clips(self.autoencoder, x).float())
            out.append(to_uint8(self.decode(z)))
        return np.concatenate(out)

    def check_memory(self, num_clips: int, batch_size: int, settings: SamplingSettings) -> None:
        """A one-line UserError before sampling when the clips alone cannot fit in free memory: the sampler's float32
        copies of one batch on the model's grid (doubled under guidance), that batch decoded to float32 frames (a
        latent model's) and every finished uint8 clip. A lower bound: the model's and the decoder's own activations
        come on top."""
        C, F, G = model_input_shape(self.cfg)  # F: the model's frames (a time_down 2 autoencoder's: half of T)
        T, S = self.cfg.data.num_frames, self.cfg.data.image_size
        copies = SAMPLER_COPIES * (1 if settings.guidance == 1.0 else 2)
        decoded = 0 if self.autoencoder is None else 3 * T * S * S * 4 * DECODED_COPIES
        need = min(batch_size, num_clips) * (C * F * G * G * 4 * copies + decoded) + num_clips * T * S * S * 3
        free = available_memory(self.device)
        if free is not None and need > free:
            raise UserError(f"sampling {num_clips} clip(s) of {T}x{S}x{S}, {min(batch_size, num_clips)} at once, "
                            f"needs more than {format_bytes(need)} but {self.device} has {format_bytes(free)} free: "
                            f"lower --batch_size or --num_samples")

    @staticmethod
    def save(clips: np.ndarray, captions: list[str], out_dir: str, suffix: str = "") -> list[str]:
        """One GIF per clip, named after its caption, never overwriting a file (methods.sampling.save_gifs)."""
        return save_gifs(clips, captions, out_dir, suffix=suffix)

    def unknown_words(self, captions: list[str]) -> list[str]:
        """The caption words that never occur in the model's training captions, in order, once each."""
        known = set(self.state.get("caption_words") or ())
        if not known:  # a checkpoint from before caption_words were saved: nothing to compare with
            return []
        return list(dict.fromkeys(w for c in captions for w in caption_words(c) if w not in known))

    def warn_unknown_words(self, captions: list[str]) -> list[str]:
        """One warning naming the words the model has not learned (returned)."""
        unknown = self.unknown_words(captions)
        if unknown:
            print(f"warning: never in the training captions, so the model has not learned them: "
                  f"{', '.join(repr(w) for w in unknown)}", file=sys.stderr)
        return unknown


def latent_parts(cfg, state: dict, path: str, device) -> tuple:
    """(autoencoder, LatentNorm) of a latent model's checkpoint or export, or (None, None) for a pixel one. The
    autoencoder is the one its config names (an export's own copy, or a kl / tiny name); a different one than training
    encoded with (another content hash) would decode garbage silently, so it is said; another decoder of the same
    encoder (the checkpoint's encoder hash) decodes the same latents, so it is only named."""
    if cfg.autoencoder.kind == "none":
        return None, None
    latent = state.get("latent")
    if not isinstance(latent, dict):
        raise UserError(f"{path} names autoencoder.kind={cfg.autoencoder.kind} but holds no latent normalisation "
                        f"(not written by this version's trainer): retrain it")
    autoencoder = load_autoencoder(cfg.autoencoder, device)
    if latent.get("autoencoder") and latent["autoencoder"] != autoencoder.content_hash():
        if latent.get("encoder") == autoencoder.encoder_hash():
            print(f"decoding with {cfg.autoencoder.path}: the encoder {path} was trained on, another decoder",
                  file=sys.stderr)
        else:
            print(f"warning: the autoencoder at {cfg.autoencoder.path} is not the one {path} was trained on (its "
                  f"encoder's weights or config differ): clips may decode wrongly", file=sys.stderr)
    return autoencoder, LatentNorm.from_dict(latent)
