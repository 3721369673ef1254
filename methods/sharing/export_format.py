"""An exported model folder: the EMA weights as model.safetensors and everything needed to rebuild the model and its
sampler as config.json (+ the model card README.md). Reading one never unpickles anything."""
from __future__ import annotations

import json
import os

import torch

from config import ConfigError
from methods.run_config import config_from_checkpoint
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.safe_json import read_json

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
AUTOENCODER_DIR = "autoencoder"  # a latent model's own autoencoder folder, copied in; config.json names it relatively
FORMAT = "text2sign-export"
FORMAT_VERSION = 1


MAX_CONFIG_BYTES = 16 << 20  # config.json holds a config and a vocabulary: kilobytes
MAX_TEXT_DIM = 65_536  # text encoder widths are hundreds to a few thousand; beyond this the file is not ours


def is_export(path: str) -> bool:
    """A folder whose config.json names this format (an earlier export, even one from before folders were marked)."""
    try:
        meta = read_json(os.path.join(path, CONFIG_FILE), MAX_CONFIG_BYTES)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def write_export(out_dir: str, ema: dict[str, torch.Tensor], meta: dict) -> None:
    """model.safetensors (the EMA weights, fp32, contiguous) and config.json (meta + the format's name and version),
    each written atomically."""
    from safetensors.torch import save

    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ema.items()}
    with atomic_write(os.path.join(out_dir, WEIGHTS_FILE)) as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    with atomic_write(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, f, indent=2)
        f.write("\n")


def read_export(model_dir: str) -> dict:
    """A checkpoint-like dict ({"ema", "config", "text_dim", "caption_words", "step"}) from an export folder; every
    problem is a one-line UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights_path = os.path.join(model_dir, CONFIG_FILE), os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isdir(model_dir):
        raise UserError(f"--model {model_dir}: not a folder (give the folder `python main.py export` wrote)")
    for path in (cfg_path, weights_path):
        if not os.path.isfile(path):
            raise UserError(f"--model {model_dir}: {os.path.basename(path)} is missing (not an exported model)")
    try:
        meta = read_json(cfg_path, MAX_CONFIG_BYTES)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{cfg_path}: not readable JSON ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{cfg_path} is not a Text2Sign export (format {FORMAT} version {FORMAT_VERSION})")
    try:
        ema = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read {weights_path}: {str(err).splitlines()[0][:160]}") from None
    try:
        config_from_checkpoint(meta)
        text_dim = int(meta["text_dim"])
        if not 1 <= text_dim <= MAX_TEXT_DIM:
            raise ValueError(f"text_dim {text_dim} is not in [1, {MAX_TEXT_DIM}]")
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, ConfigError) as err:
        raise UserError(f"{cfg_path}: incomplete or invalid ({type(err).__name__}: {err})") from None
    config = meta["config"]
    ac = config.get("autoencoder") or {}
    if ac.get("kind") == "own" and not os.path.isabs(ac.get("path", "")):  # the copy inside this folder
        config = {**config, "autoencoder": {**ac, "path": os.path.join(model_dir, ac["path"])}}
    return {"ema": ema, "config": config, "text_dim": text_dim, "step": int(meta.get("step", 0)),
            "caption_words": list(meta.get("caption_words", [])), "export": model_dir,
            **({"latent": meta["latent"]} if isinstance(meta.get("latent"), dict) else {})}
