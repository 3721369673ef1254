"""Frame autoencoders for latent diffusion: the project's own small KL autoencoder and frozen diffusers ones.

Every autoencoder here has one interface: `encode(frames (N, 3 x time_down, H, W) in [-1, 1]) -> (N, C, H/down,
W/down)` (unscaled latents: the posterior mean), `decode(latents) -> (N, 3 x time_down, H, W)`, attributes
`latent_channels`, `down`, `time_down` (consecutive frames per latent frame, stacked on the channels frame by frame:
data.latents.group_frames stacks them) and `scaling_factor` / `shift_factor` (a diffusion model trains on
(latents - shift) x scale: unit std) and `content_hash()` (weights + config, for cache keys). `load_autoencoder`
returns one frozen in eval mode, or None for autoencoder.kind "none".

The own autoencoder is 2D, on one frame or a frame pair (time_down 2: the pair's 6 channels in, one latent frame
out, so the denoiser sees half the frames): GroupNorm + SiLU residual blocks, strided-conv downsampling, nearest + conv
upsampling (no transposed convolutions: their checkerboard is what a sampler's imperfect latents bring out), and a
diagonal Gaussian posterior whose small KL keeps the latent space smooth and bounded. It is saved as a folder:
model.safetensors + config.json (never a pickle).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import AutoencoderConfig
from models.blocks import zero_module
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.safe_json import read_json

DECODER_PREFIXES = ("decoder.", "post_quant_conv.")  # state-dict names of the decoding half (own, KL and Tiny)
AUTOENCODER_KINDS = ("none", "own", "kl", "tiny")  # pixels, models/autoencoder.py's own, diffusers KL, diffusers TAESD
FORMAT = "text2sign-autoencoder"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
MAX_CONFIG_BYTES = 1 << 20  # config.json holds a dozen numbers: anything larger is not ours
GROUPS = 8  # GroupNorm groups (every width here is a multiple of 8)
LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior's log-variance, as in Stable Diffusion's DiagonalGaussian
HOW_TO_TRAIN = "python main.py train-autoencoder --preset P --set data.data_dir=DIR"


def widths(width: int, down: int) -> list[int]:
    """Channels at each resolution level: width at full size, doubling at each halving (down 4: 3 levels, 8: 4)."""
    levels = down.bit_length()  # 4 -> 3, 8 -> 4
    return [width * min(2 ** i, 4) for i in range(levels)]


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus a (1x1-projected when the width changes) skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(GROUPS, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(GROUPS, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(N, 3 x frames, H, W) -> (N, 2C, H/down, W/down): the posterior's mean and log-variance, stacked on the
    channels."""

    def __init__(self, chans: list[int], latent_channels: int, frames: int = 1):
        super().__init__()
        self.conv_in = nn.Conv2d(3 * frames, chans[0], 3, padding=1)
        layers = []
        for i, c in enumerate(chans):  # no residual block at full size: its cost, not its gain, is large there
            if i:
                layers.append(ResBlock(chans[i - 1], c))
            if i < len(chans) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halves H and W
        self.body = nn.Sequential(*layers, ResBlock(chans[-1], chans[-1]))
        self.norm_out = nn.GroupNorm(GROUPS, chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """(N, C, h, w) latents -> (N, 3 x frames, h*down, w*down) frames; mirrors the encoder with nearest + conv
    upsampling."""

    def __init__(self, chans: list[int], latent_channels: int, frames: int = 1):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, chans[-1], 3, padding=1)
        layers = [ResBlock(chans[-1], chans[-1])]
        for i in reversed(range(len(chans))):
            layers.append(ResBlock(chans[i], chans[i]))
            if i:  # doubles H and W, then narrows to the next level's width
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chans[i], chans[i - 1], 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(GROUPS, chans[0])
        self.conv_out = nn.Conv2d(chans[0], 3 * frames, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(z)))))


class FrameAutoencoder(nn.Module):
    """The project's own KL autoencoder of frames or frame pairs (down 4 or 8); see the module docstring."""

    def __init__(self, down: int = 4, latent_channels: int = 4, width: int = 32, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, time_down: int = 1):
        super().__init__()
        if down not in (4, 8) or time_down not in (1, 2):
            raise ValueError(f"down must be 4 or 8 and time_down 1 or 2, got {down}, {time_down}")
        self.down, self.latent_channels, self.width, self.time_down = down, latent_channels, width, time_down
        # 1 / std and mean of the val latents, measured when training ends
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.meta: dict = {}  # from_folder: the folder's config.json
        chans = widths(width, down)
        self.encoder = Encoder(chans, latent_channels, time_down)
        self.decoder = Decoder(chans, latent_channels, time_down)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Kaiming-normal convs with zero biases; each residual branch's last conv and the latent head start at 0,
        so every block starts as its skip and the first latents are all zero (the KL's optimum)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                zero_module(m.conv2)
        nn.init.normal_(self.encoder.conv_out.weight, std=1e-3)  # not zero: the encoder's gradients need a path

    def config(self) -> dict:
        """The constructor's arguments (time_down only when 2: a frame autoencoder's folder and content hash stay
        what they were before frame pairs existed, so its caches and checkpoints stay valid)."""
        pairs = {"time_down": self.time_down} if self.time_down != 1 else {}
        return {"down": self.down, "latent_channels": self.latent_channels, "width": self.width,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor, **pairs}

    def posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (N, C, H/down, W/down)."""
        mean, logvar = self.encoder(frames).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.posterior(frames)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None, latent_noise: float = 0.0
                ) -> dict:
        """Training pass: a posterior sample z = mean + std * eps, plus latent_noise x the batch's latent std of
        Gaussian noise (both from generator), decoded; and the KL to N(0, I) per latent element (mean over all).
        The extra noise is relative, so the encoder cannot outgrow it by scaling its latents up."""
        mean, logvar = self.posterior(frames)
        where = generator.device if generator is not None else mean.device  # a CPU stream for a GPU model, too
        eps = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        if latent_noise > 0:
            extra = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
            z = z + latent_noise * mean.detach().std() * extra
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return {"recon": self.decoder(z), "kl": kl, "mean": mean, "z": z}

    def content_hash(self) -> str:
        return weights_hash(self.config(), self.state_dict())

    def encoder_hash(self) -> str:
        return encoder_hash(self.config(), self.state_dict())

    def save(self, folder: str, meta: dict | None = None) -> None:
        """folder/model.safetensors + folder/config.json (the architecture, scaling factor and `meta`)."""
        from safetensors.torch import save

        os.makedirs(folder, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_write(os.path.join(folder, WEIGHTS_FILE)) as f:
            f.write(save(tensors))
        with atomic_write(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **self.config(), **(meta or {})}, f,
                      indent=2)

    @classmethod
    def from_folder(cls, folder: str) -> "FrameAutoencoder":
        from safetensors.torch import load_file

        how = f"train one with `{HOW_TO_TRAIN}`, and set autoencoder.path to the folder it prints"
        if not os.path.isdir(folder):
            raise UserError(f"no autoencoder at autoencoder.path={folder!r}: train it first with `python main.py "
                            f"train-autoencoder` and this command's --preset / --set (it writes that folder), or set "
                            f"autoencoder.path to another one")
        try:
            cfg = read_json(os.path.join(folder, CONFIG_FILE), MAX_CONFIG_BYTES)
            weights = load_file(os.path.join(folder, WEIGHTS_FILE))
        except (OSError, ValueError) as err:
            raise UserError(f"autoencoder.path={folder!r} is not an autoencoder folder ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120] if str(err) else 'unreadable'}): {how}") from None
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{folder}/{CONFIG_FILE} is not a {FORMAT} v{FORMAT_VERSION} config: {how}")
        try:
            model = cls(*(cfg[k] for k in ("down", "latent_channels", "width", "scaling_factor", "shift_factor")),
                        time_down=cfg.get("time_down", 1))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{folder}/{CONFIG_FILE} lacks or mangles a field ({err}): {how}") from None
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own != {k: tuple(v.shape) for k, v in weights.items()}:
            raise UserError(f"{folder}/{WEIGHTS_FILE} does not fit the architecture its config.json names: {how}")
        model.load_state_dict(weights)
        model.meta = cfg  # config.json as written: what it was trained on (data folder, frame size, val scores)
        return model


def weights_hash(config: dict, state: dict) -> str:
    """sha1 over a config dict and a state dict's names, shapes, dtypes and bytes: the same weights, the same key."""
    h = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_hash(config: dict, state: dict) -> str:
    """weights_hash of the encoding half: another decoder of the same encoder (decoder-only steps trained anew, or a
    fine-tuned decoder like SD's sd-vae-ft-mse) has the same key, so it decodes a model's latents as intended."""
    return weights_hash(config, {k: v for k, v in state.items() if not k.startswith(DECODER_PREFIXES)})


class DiffusersAutoencoder(nn.Module):
    """A frozen diffusers AutoencoderKL (encode -> the posterior mean) or AutoencoderTiny behind the shared interface;
    the scaling factor and the downsampling come from the model's own config."""

    def __init__(self, vae: nn.Module, kind: str):
        super().__init__()
        self.vae, self.kind = vae, kind
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.down = 2 ** (len(cfg.block_out_channels) - 1)  # one halving per block after the first (KL and Tiny)
        self.time_down = 1  # image autoencoders: one frame per latent frame
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)  # SD3 / Flux VAEs shift, SD's do not

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(frames)
        return out.latent_dist.mean if self.kind == "kl" else out.latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def content_hash(self) -> str:
        return weights_hash({"kind": self.kind, **dict(self.vae.config)}, self.vae.state_dict())

    def encoder_hash(self) -> str:
        return encoder_hash({"kind": self.kind, **dict(self.vae.config)}, self.vae.state_dict())


def load_diffusers(kind: str, name: str) -> nn.Module:
    """AutoencoderKL / AutoencoderTiny.from_pretrained(hub name or local folder): the local copy first, the hub only
    when online and name is not a folder; offline without a copy: a one-line UserError saying how to get one."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    cls = diffusers.AutoencoderKL if kind == "kl" else diffusers.AutoencoderTiny
    try:
        try:
            return cls.from_pretrained(name, local_files_only=True)
        except OSError:
            if os.path.isdir(name) or os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            return cls.from_pretrained(name)
    except (OSError, ValueError) as err:
        example = "stabilityai/sd-vae-ft-mse" if kind == "kl" else "madebyollin/taesd"
        raise UserError(f"cannot load the {cls.__name__} autoencoder.path={name!r} ({type(err).__name__}); offline "
                        f"here? Download it once with internet (e.g. `huggingface-cli download {example} --local-dir "
                        f"DIR`) and set autoencoder.path=DIR, or train the project's own: {HOW_TO_TRAIN}, then "
                        f"--set autoencoder.kind=own --set autoencoder.path=<the folder it prints>") from None


def load_autoencoder(ac: AutoencoderConfig, device: torch.device | str = "cpu") -> nn.Module | None:
    """The configured autoencoder, frozen, in eval mode on device; None for kind "none" (pixel space)."""
    if ac.kind == "none":
        return None
    if not ac.path:
        raise UserError(f"autoencoder.kind={ac.kind} needs autoencoder.path (own: the folder `train-autoencoder` "
                        f"printed; kl / tiny: a Hugging Face name or a local folder)")
    if ac.kind == "own":
        model = FrameAutoencoder.from_folder(ac.path)
    elif ac.kind in ("kl", "tiny"):
        model = DiffusersAutoencoder(load_diffusers(ac.kind, ac.path), ac.kind)
    else:
        raise UserError(f"autoencoder.kind={ac.kind!r} must be one of {', '.join(AUTOENCODER_KINDS)}")
    return model.to(device).eval().requires_grad_(False)
