"""The configuration a command runs with: config.py's typed fields and ranges, plus the choices whose owners
(schedulers, diffusion, models, data, device) define the allowed names. config.py imports none of them, so this
module, above them all, joins the two."""
from __future__ import annotations

from config import Config, ConfigError, apply_overrides, build_config
from dataset import RESIZE_MODES
from diffusion import PREDICTIONS, SAMPLERS
from models import MODELS, check_model_config
from models.autoencoder import AUTOENCODER_KINDS
from schedulers import BASE_TIMESTEPS, LR_SCHEDULES, SCHEDULES
from utils.device import PRECISIONS, is_device_name

# field -> the owner's collection of allowed names (referenced, never retyped)
CHOICES = {
    "data.resize_mode": RESIZE_MODES, "model.arch": MODELS, "diffusion.schedule": SCHEDULES,
    "diffusion.prediction": PREDICTIONS, "diffusion.sampler": SAMPLERS, "train.lr_schedule": LR_SCHEDULES,
    "train.precision": PRECISIONS, "autoencoder.kind": AUTOENCODER_KINDS,
}


def check_choices(cfg: Config) -> Config:
    """Every choice field names something its owner defines, and the model's own rules hold (clip size, fields)."""
    for dotted, allowed in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r} must be one of {', '.join(allowed)}")
    if not is_device_name(cfg.train.device):
        raise ConfigError(f"train.device={cfg.train.device!r} must be auto, cpu, cuda, cuda:N or mps")
    check_model_config(cfg)
    if cfg.data.image_size % cfg.eval.evaluator_patch:
        raise ConfigError(f"eval.evaluator_patch={cfg.eval.evaluator_patch} must divide data.image_size="
                          f"{cfg.data.image_size}")
    if cfg.diffusion.timesteps > BASE_TIMESTEPS:
        raise ConfigError(f"diffusion.timesteps={cfg.diffusion.timesteps} must be <= {BASE_TIMESTEPS}: the schedules "
                          f"are defined on a {BASE_TIMESTEPS}-step grid and subsampled")
    return cfg


def load_config(preset: str, overrides: list[str] | None = None) -> Config:
    """A named preset with --set overrides, fully checked."""
    return check_choices(build_config(preset, overrides))


def config_from_checkpoint(state: dict, overrides: list[str] | None = None) -> Config:
    """The configuration a checkpoint was trained with (`--set` may still change fields), fully checked."""
    cfg = apply_overrides(Config.from_dict(state["config"]), overrides or [])
    cfg.validate()
    return check_choices(cfg)
