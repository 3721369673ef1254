"""Latent clips for latent diffusion: every training clip encoded once by a frozen frame autoencoder, cached on disk,
normalised to unit std for the denoiser, and decoded back to frames when sampling.

    <cache_dir>/latents-<key>.safetensors   one float16 (C, T, h, w) tensor per clip, named by the clip store's key of
                                            its pixels (content hash + suffix), with a crc32 of each in the metadata
        key = sha1(the pixel clip store's folder (its preprocessing settings) | the autoencoder's content_hash() |
                   LATENT_VERSION)

Another autoencoder (or the same one retrained) has another content hash and so another file; a clip added to the
data folder is the only one encoded on the next start. The autoencoder is passed in (data/ may not import models/):
any object with encode(frames (N, 3 x time_down, H, W) in [-1, 1]) -> (N, C, h, w), decode(latents), time_down and
content_hash() works.
"""
from __future__ import annotations

import hashlib
import os
import sys
import zlib
from dataclasses import dataclass

import torch
from tqdm import tqdm

from utils.atomic import atomic_write
from utils.errors import UserError

LATENT_VERSION = 1  # bump when encoding (chunking, dtype, layout) changes so stale caches are not reused
FRAME_CHUNK = 8  # frames per encode / decode call: bounds the autoencoder's activation memory at any clip length
CACHE_DTYPE = torch.float16  # half the bytes of fp32; the latents' own noise (a KL / VAE posterior) is far larger


@dataclass(frozen=True)
class LatentNorm:
    """The denoiser trains on (z - shift) * scale: the training latents' mean and 1 / std, so it sees std 1 as in
    pixel space (a schedule's noise levels assume unit-scale data). Saved in checkpoints and exports as primitives, so
    sampling decodes with exactly the values training used."""
    shift: float
    scale: float

    @classmethod
    def measure(cls, latents: torch.Tensor) -> "LatentNorm":
        """Mean and 1 / std of every value (float64 sums: millions of fp16 values)."""
        z = latents.double()
        std = float(z.std())
        if not (torch.isfinite(z).all() and std > 0):
            raise UserError(f"the autoencoder's latents of the training clips are non-finite or constant (std {std}): "
                            f"the autoencoder is broken; retrain it or pick another autoencoder.path")
        return cls(float(z.mean()), 1.0 / std)

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift) * self.scale

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale + self.shift

    def to_dict(self) -> dict:
        return {"shift": self.shift, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentNorm":
        return cls(float(d["shift"]), float(d["scale"]))


def group_frames(clips: torch.Tensor, group: int) -> torch.Tensor:
    """Clips (B, C, T, h, w) -> (B*T/group, group*C, h, w): each `group` consecutive frames stacked on the channels,
    frame by frame. The one home of the layout a time_down autoencoder codes (encoding here, training draws too)."""
    B, C, T = clips.shape[:3]
    return clips.transpose(1, 2).reshape(B * T // group, C * group, *clips.shape[3:])


def split_frames(x: torch.Tensor, split: int) -> torch.Tensor:
    """The inverse of group_frames' stacking: (N, split*C, h, w) -> the frames (N*split, C, h, w), in order."""
    return x.reshape(len(x) * split, x.shape[1] // split, *x.shape[2:])


def per_frame(fn, clips: torch.Tensor, chunk: int = FRAME_CHUNK, group: int = 1, split: int = 1) -> torch.Tensor:
    """Apply a per-frame map fn ((N, C x group, h, w) -> (N, C' x split, h', w')) to clips (B, C, T, h, w), about
    `chunk` frames a call: (B, C', T / group x split, h', w'). `group` consecutive frames go in stacked on the
    channels, frame by frame (an autoencoder with time_down 2 encodes frame pairs), and each output's channels are
    split into `split` consecutive frames (it decodes one latent frame to a pair)."""
    groups = group_frames(clips, group)  # (B*T/g, g*C, h, w)
    step = max(1, chunk // max(group, split))
    out = torch.cat([fn(groups[i:i + step]) for i in range(0, len(groups), step)])  # (B*T/g, s*C', h', w')
    frames = split_frames(out, split)  # (B*T/g*s, C', h', w')
    return frames.reshape(len(clips), -1, *frames.shape[1:]).transpose(1, 2)  # (B, C', T/g*s, h', w')


@torch.no_grad()
def encode_clips(autoencoder, clips: torch.Tensor) -> torch.Tensor:
    """Frames (B, 3, T, H, W) in [-1, 1] -> latents (B, C, T / time_down, h, w), not normalised, encoded FRAME_CHUNK
    frames at a time in the autoencoder's dtype."""
    dtype = next(autoencoder.parameters()).dtype
    return per_frame(autoencoder.encode, clips.to(dtype), group=autoencoder.time_down)


@torch.no_grad()
def decode_clips(autoencoder, norm: LatentNorm, x: torch.Tensor) -> torch.Tensor:
    """Model-space clips (B, C, T, h, w) -> frames (B, 3, T x time_down, H, W), decoded FRAME_CHUNK frames at a
    time."""
    dtype = next(autoencoder.parameters()).dtype
    return per_frame(lambda z: autoencoder.decode(z.to(dtype)).float(), norm.from_model(x.float()),
                     split=autoencoder.time_down)


def cache_path(cache_dir: str, store_root: str, autoencoder_hash: str) -> str:
    key = f"text2sign-latents-v{LATENT_VERSION}|{os.path.basename(store_root)}|{autoencoder_hash}"
    return os.path.join(cache_dir, f"latents-{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors")


def _crc(t: torch.Tensor) -> str:
    return str(zlib.crc32(t.contiguous().view(torch.uint8).numpy().tobytes()))


def read_cache(path: str) -> dict[str, torch.Tensor]:
    """The cached latents whose crc32 matches (a damaged tensor is encoded again); {} for a missing or unreadable
    file (said once)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.exists(path):
        return {}
    try:
        with safe_open(path, "pt") as f:
            sums = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        print(f"warning: latent cache {path} is unreadable ({type(err).__name__}): encoding the clips again",
              file=sys.stderr)
        return {}
    return {k: t for k, t in tensors.items() if sums.get(k) == _crc(t)}


def write_cache(path: str, latents: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    with atomic_write(path) as f:
        f.write(save(latents, metadata={k: _crc(t) for k, t in latents.items()}))


class LatentDataset:
    """The training split as normalised latents: what SignDataset is to the trainer (len, caption_vocab,
    top_captions, get_batch), over latents held in memory as float16 (a latent clip is C x (down^2 / 3) / 2 times
    smaller than its uint8 pixels: 1/6 at down 4 with 4 channels). The pixels stay in `pixels` (evaluate and the
    data statistics read real frames)."""

    def __init__(self, pixels, autoencoder, device, quiet: bool = False):
        self.pixels, self.caption_vocab, self.caption_ids = pixels, pixels.caption_vocab, pixels.caption_ids
        self.autoencoder_hash = autoencoder.content_hash()  # hashing every weight: once
        self.encoder_hash = autoencoder.encoder_hash()  # what sampling may decode with: this encoder's decoders
        self.latents = self.load(pixels, autoencoder, torch.device(device), quiet)  # (N, C, T, h, w) float16
        self.norm = LatentNorm.measure(self.latents)

    def state(self) -> dict:
        """What a checkpoint keeps (primitives): the normalisation and which autoencoder's latents it measured."""
        return {**self.norm.to_dict(), "autoencoder": self.autoencoder_hash, "encoder": self.encoder_hash}

    def resume(self, latent) -> None:
        """Continue on a checkpoint's normalisation (its state()), refusing one from another autoencoder or pixels."""
        if not isinstance(latent, dict) or latent.get("autoencoder") != self.autoencoder_hash:
            raise UserError("the checkpoint was not trained on latents of this autoencoder (another autoencoder.path, "
                            "or a pixel model): resume with the autoencoder it was trained with")
        self.norm = LatentNorm.from_dict(latent)

    def load(self, pixels, autoencoder, device: torch.device, quiet: bool) -> torch.Tensor:
        """Every clip's latents, from the cache or encoded now (then the cache is rewritten with them)."""
        store = pixels.clips.store.root  # <cache_dir>/clips-<settings key>: the latents sit beside it
        path = cache_path(os.path.dirname(store), store, self.autoencoder_hash)
        keys = pixels.clips.keys
        cached = read_cache(path)
        missing = [i for i, k in enumerate(keys) if k not in cached]
        if missing:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            for i in tqdm(missing, desc="encoding latents", unit="clip", disable=quiet or None,
                          dynamic_ncols=True, leave=False):
                z = encode_clips(autoencoder, pixels.get_batch(torch.tensor([i]), device=device)[0])[0]
                cached[keys[i]] = z.to("cpu", CACHE_DTYPE).contiguous()
            write_cache(path, cached)
        shapes = {tuple(cached[k].shape) for k in keys}
        if len(shapes) > 1:  # one file per store and autoencoder: only a hand-edited file gets here
            raise UserError(f"latent cache {path} mixes latent shapes {sorted(shapes)}: delete it to rebuild")
        return torch.stack([cached[k] for k in keys])

    def __len__(self) -> int:
        return self.latents.shape[0]

    def top_captions(self, k: int = 3) -> list[str]:
        return self.pixels.top_captions(k)

    def get_batch(self, indices: torch.Tensor, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised latents float32 (B, C, T, h, w) and caption ids (B,), as SignDataset.get_batch gives pixels."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        z, ids = self.latents[indices], self.caption_ids[indices]
        if device is not None:
            z, ids = z.to(device), ids.to(device)
        return self.norm.to_model(z.float()), ids
