"""Every architecture by its named sizes: the choices of model.arch, what each needs of the clip size, which model
fields it honours, and the one place a Config becomes a model."""
from __future__ import annotations

import torch.nn as nn

from config import Config, ConfigError, ModelConfig
from models.dit3d import DiT3D, DiT3D_models
from models.pretrained import FILE_LATENT_CHANNELS
from models.unet3d import UNet3D, UNet3D_models
from models.video_dit import DiT_models, VideoDiT
from models.vit3d import ViT3D, ViT3D_models
from models.vivit import ViViT, ViViT_models

# name -> (family, its constructor's size arguments); every family takes x (B, C, T, H, W), t, caption tokens + mask,
# pooled caption and drop, and returns the shape of x
MODELS: dict[str, tuple[type[nn.Module], dict]] = {
    name: (family, size)
    for family, sizes in ((VideoDiT, DiT_models), (UNet3D, UNet3D_models), (ViT3D, ViT3D_models),
                          (DiT3D, DiT3D_models), (ViViT, ViViT_models))
    for name, size in sizes.items()
}
# fields that change what a model computes: setting one its family ignores is an error (frame_chunk_size, a memory
# knob of VideoDiT's per-frame passes, is simply unused by the families that process whole clips)
DESIGN_FIELDS = ("temporal_attention", "cross_attention", "text_alignment")
INIT_FIELDS = ("pretrained", "vit_init")  # weights a family can start from (a TinyDiT file, a Hugging Face ViT)


def families_with(field: str) -> str:
    names = {family.__name__ for family, _ in MODELS.values()
             if field in family.OPTIONS or getattr(family, "INIT_FIELD", None) == field}
    return ", ".join(sorted(names))


def check_model_config(cfg: Config) -> None:
    """model.arch names a registered size, the clip fits its patches / tubelets / levels, and no model field is set
    that the architecture would ignore."""
    m, defaults = cfg.model, ModelConfig()
    if m.arch not in MODELS:
        raise ConfigError(f"model.arch={m.arch!r} must be one of {', '.join(MODELS)}")
    family, size = MODELS[m.arch]
    frames, pixels = family.multiples(size)
    _, model_frames, grid = model_input_shape(cfg)
    if grid % pixels and cfg.autoencoder.kind == "none":
        raise ConfigError(f"data.image_size={cfg.data.image_size} must be a multiple of {pixels} for "
                          f"model.arch={m.arch} (its patch / downsampling size)")
    if grid % pixels:
        raise ConfigError(f"data.image_size={cfg.data.image_size} / autoencoder.down={cfg.autoencoder.down} = a "
                          f"{grid}x{grid} latent grid, which must be a multiple of {pixels} for model.arch={m.arch} "
                          f"(its patch / downsampling size): raise data.image_size or pick a smaller patch")
    if model_frames % frames:
        per = "" if model_frames == cfg.data.num_frames else f" / autoencoder.time_down={cfg.autoencoder.time_down}"
        raise ConfigError(f"data.num_frames={cfg.data.num_frames}{per} must be a multiple of {frames} for "
                          f"model.arch={m.arch} (its tubelet length)")
    for field in DESIGN_FIELDS + INIT_FIELDS:
        honoured = field in family.OPTIONS or getattr(family, "INIT_FIELD", None) == field
        if not honoured and getattr(m, field) != getattr(defaults, field):
            raise ConfigError(f"model.{field}={getattr(m, field)!r} does not apply to model.arch={m.arch} "
                              f"({family.__name__}); it applies to {families_with(field)}")


def model_input_shape(cfg: Config) -> tuple[int, int, int]:
    """(channels, frames, size) of the clips the denoiser sees: RGB pixels, or with an autoencoder its latent grid
    (autoencoder.latent_channels of data.num_frames / autoencoder.time_down frames of data.image_size /
    autoencoder.down; the trainer checks the loaded autoencoder agrees). The one place this is decided: model, memory
    estimates and samplers all ask it."""
    ac, dc = cfg.autoencoder, cfg.data
    if ac.kind == "none":
        return 3, dc.num_frames, dc.image_size
    return ac.latent_channels, dc.num_frames // ac.time_down, dc.image_size // ac.down


def check_autoencoder(cfg: Config, autoencoder) -> None:
    """The loaded autoencoder makes the latents model_input_shape promised (autoencoder.latent_channels, .down and
    .time_down describe the model grid before any autoencoder is loaded; a kl / tiny one's own config decides them)."""
    ac = cfg.autoencoder
    for field in ("down", "latent_channels", "time_down"):
        if getattr(autoencoder, field) != getattr(ac, field):
            raise ConfigError(f"autoencoder.{field}={getattr(ac, field)} but the {ac.kind} autoencoder "
                              f"{ac.path} has {field} {getattr(autoencoder, field)}: set "
                              f"autoencoder.{field}={getattr(autoencoder, field)}")


def build_model(arch: str, image_size: int, text_dim: int, **options) -> nn.Module:
    """The named size of an architecture; options are constructor arguments the family honours (and in_channels)."""
    family, size = MODELS[arch]
    return family(image_size=image_size, text_dim=text_dim, **size, **options)


def build_video_model(cfg: Config, text_dim: int) -> nn.Module:
    """The model a Config describes (cfg.model on model_input_shape's clips), randomly initialised."""
    m = cfg.model
    channels, _, grid = model_input_shape(cfg)
    options = dict(temporal_attention=m.temporal_attention, cross_attention=m.cross_attention,
                   text_alignment=m.text_alignment, frame_chunk_size=m.frame_chunk_size,
                   grad_checkpointing=m.grad_checkpointing)
    family, _ = MODELS[m.arch]
    options = {k: options[k] for k in family.OPTIONS}
    if getattr(family, "INIT_FIELD", None) == "pretrained" and m.pretrained and channels == FILE_LATENT_CHANNELS:
        # the TinyDiT file's own latent space: keep its learned-sigma output half so every tensor loads exactly
        # (decided here, not by a config field, so a checkpoint's config always rebuilds the same model)
        options["learn_sigma"] = True
    return build_model(m.arch, grid, text_dim, in_channels=channels, **options)


def load_initial_weights(model: nn.Module, cfg: Config) -> str | None:
    """Start model from the weights its config names (model.pretrained / model.vit_init); a one-line report."""
    if cfg.model.pretrained:
        from models.pretrained import load_pretrained

        return str(load_pretrained(model, cfg.model.pretrained))
    if cfg.model.vit_init:
        from models.vit_init import load_vit

        return load_vit(model, cfg.model.vit_init)
    return None


def parameter_groups(model: nn.Module) -> dict[str, int]:
    """Parameter counts by role: text conditioning, temporal mixing, cross-attention, and the rest (backbone)."""
    groups = {"backbone": 0, "text": 0, "temporal": 0, "cross": 0}
    for name, p in model.named_parameters():
        key = ("text" if name.startswith(("text_embedder", "token_proj")) else "cross" if ".cross_attn." in name
               else "temporal" if (".temporal_" in name or name.startswith("temporal_")) else "backbone")
        groups[key] += p.numel()
    return groups
