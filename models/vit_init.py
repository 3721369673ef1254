"""Start ViViT's per-frame encoder from a Hugging Face ViT checkpoint (model.vit_init: a hub name or a local folder).

The ViT's patch embedding, class token, positions (resampled bicubically when the patch grid differs, as ViT does
for other resolutions), and its first spatial_depth layers map onto ViViT's spatial blocks one to one (separate
q/k/v fused into one qkv); everything else keeps its initialisation. Because ViViT's FiLM and cross-attention start
at zero, the loaded encoder computes exactly the ViT's hidden states (tests/test_architectures.py checks this).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from utils.errors import UserError


def _vit_state(name: str):
    from transformers import ViTModel  # slow import, only when a ViT is asked for
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        vit = ViTModel.from_pretrained(name, add_pooling_layer=False)
    except (OSError, ValueError) as err:
        where = "folder" if os.path.isdir(name) else "Hugging Face name (offline: download it once, or give a folder)"
        raise UserError(f"model.vit_init={name!r}: cannot load a ViT from this {where}: "
                        f"{str(err).splitlines()[0]}") from None
    return vit.config, vit.state_dict()


def _resample_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+n*n, D) ViT positions -> (1, 1+grid*grid, D): the class position kept, the grid resampled bicubically."""
    n = int(round((pos.shape[1] - 1) ** 0.5))
    if n == grid:
        return pos
    patch = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, D, n, n)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def load_vit(model, name: str) -> str:
    """Copy a ViT's weights into model (a ViViT); returns a one-line report. Mismatches are one-line UserErrors."""
    from models.vivit import VIT_LN_EPS

    config, sd = _vit_state(name)
    depth, width = len(model.spatial_blocks), model.pos_embed.shape[-1]
    wanted = {"hidden_size": width, "num_attention_heads": model.num_heads, "patch_size": model.patch_size,
              "num_channels": model.in_channels, "intermediate_size": 4 * width, "hidden_act": "gelu",
              "layer_norm_eps": VIT_LN_EPS, "qkv_bias": True}
    wrong = [f"{k}={getattr(config, k, None)!r} (ViViT needs {v!r})" for k, v in wanted.items()
             if getattr(config, k, None) != v]
    if config.num_hidden_layers < depth:
        wrong.append(f"num_hidden_layers={config.num_hidden_layers} (ViViT needs >= {depth})")
    if wrong:
        raise UserError(f"model.vit_init={name!r} does not fit {type(model).__name__} with spatial depth {depth}: "
                        + "; ".join(wrong) + " (pick a model.arch of the ViT's shape, e.g. ViViT-B/16)")
    new = {"x_embedder.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "x_embedder.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "cls_token": sd["embeddings.cls_token"],
           "pos_embed": _resample_positions(sd["embeddings.position_embeddings"], model.grid)}
    for i in range(depth):
        src, dst = f"layers.{i}.", f"spatial_blocks.{i}."
        for part in ("weight", "bias"):
            new[dst + "attn.qkv." + part] = torch.cat([sd[f"{src}attention.{p}_proj.{part}"] for p in "qkv"])
            new[dst + "attn.proj." + part] = sd[f"{src}attention.o_proj.{part}"]
            for norm in ("layernorm_before", "layernorm_after"):
                new[dst + f"{norm}.{part}"] = sd[src + f"{norm}.{part}"]
            for fc in ("fc1", "fc2"):
                new[dst + f"mlp.{fc}.{part}"] = sd[src + f"mlp.{fc}.{part}"]
    own = model.state_dict()
    with torch.no_grad():
        for key, value in new.items():
            own[key].copy_(value)
    n = sum(v.numel() for v in new.values())
    skipped = config.num_hidden_layers - depth
    return (f"model.vit_init {name}: {len(new)} tensors ({n:,} values) into the per-frame encoder"
            + (f", its last {skipped} layers unused" if skipped else "")
            + (f", positions resampled to {model.grid}x{model.grid}" if new["pos_embed"] is not
               sd["embeddings.position_embeddings"] else ""))
