"""Text-conditioned video ViT over space-time tubelets with joint space-time attention: ViViT's model 1 (Arnab et
al. 2021, tubelet embedding + one transformer over all tokens) turned denoiser the way U-ViT (Bao et al. 2023) turns
a ViT into one, with every condition entering through attention rather than through normalisation.

Pre-norm transformer blocks (affine LayerNorm, self-attention over every token of the clip, cross-attention,
MLP) under fixed 3D sin-cos positions. The cross-attention context is the timestep embedding, the pooled caption and
the caption's tokens, so the network learns where noise level and text matter (with text_alignment, the logits to
the caption's tokens get the alignment prior of each token's tubelet time). The cross-attention output
projections and the output layer start at zero: at initialisation the blocks ignore the context and the model
predicts exactly zero.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.blocks import (Attention, CrossAttention, Mlp, TextConditioner, TimestepEmbedder, TubeletEmbed,
                           alignment_prior, initialize_shared, maybe_checkpoint, sincos_3d, unpatchify_tubelets,
                           zero_module)

ViT3D_models: dict[str, dict[str, int]] = {
    "ViT3D-B/2x4": dict(depth=12, hidden_size=768, num_heads=12, tubelet=2, patch_size=4),
    "ViT3D-Demo/2x4": dict(depth=6, hidden_size=128, num_heads=4, tubelet=2, patch_size=4),
    "ViT3D-Test/2x4": dict(depth=2, hidden_size=32, num_heads=2, tubelet=2, patch_size=4),
}


class ViTBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the condition tokens, MLP."""

    def __init__(self, hidden_size: int, num_heads: int, aligned: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(hidden_size, eps=1e-6), Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, hidden_size, num_heads, aligned)
        self.norm3, self.mlp = nn.LayerNorm(hidden_size, eps=1e-6), Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x, context, context_mask, prior):
        """x (B, T'*N, D); context (B, L, D); context_mask (B, L); prior (B, T', L) or None."""
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, context_mask, prior)
        return x + self.mlp(self.norm3(x))


class ViT3D(nn.Module):
    """Denoiser for clips (B, C, T, H, W): a ViT with joint space-time attention, conditioned by cross-attention."""

    OPTIONS = ("cross_attention", "text_alignment", "grad_checkpointing")
    GRAD_PROBES = {"tubelet embedding": "x_embedder.proj.weight", "text projection": "text_embedder.proj.0.weight",
                   "output layer": "final_linear.weight"}

    @staticmethod
    def multiples(size: dict) -> tuple[int, int]:
        """(frames, pixels) the clip size must be a multiple of."""
        return size["tubelet"], size["patch_size"]

    def __init__(self, image_size: int, text_dim: int, depth: int, hidden_size: int, num_heads: int, tubelet: int,
                 patch_size: int, in_channels: int = 3, cross_attention: bool = True, text_alignment: bool = False,
                 grad_checkpointing: bool = False):
        super().__init__()
        assert image_size % patch_size == 0, "image size must be a multiple of the patch size"
        self.in_channels = self.out_channels = in_channels
        self.tubelet, self.patch_size, self.grid = tubelet, patch_size, image_size // patch_size
        self.grad_checkpointing = grad_checkpointing
        self.text_alignment = text_alignment and cross_attention  # the prior places caption tokens; none without them
        self.x_embedder = TubeletEmbed(tubelet, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_embedder = TextConditioner(text_dim, hidden_size)
        # caption tokens into the model's width (without cross_attention only the timestep and pooled caption remain)
        self.token_proj = nn.Linear(text_dim, hidden_size) if cross_attention else None
        self.blocks = nn.ModuleList([ViTBlock(hidden_size, num_heads, self.text_alignment) for _ in range(depth)])
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6)
        self.final_linear = nn.Linear(hidden_size, tubelet * patch_size * patch_size * in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears and tubelet projection, N(0, 0.02) embedders, cross-attention outputs and output at 0."""
        initialize_shared(self, self.x_embedder)
        for block in self.blocks:
            zero_module(block.cross_attn.proj)
        zero_module(self.final_linear)

    def forward(self, x, t, text_tokens, text_mask, pooled, drop=None):
        """x (B, C, T, H, W); t (B,); text_tokens (B, L, E); text_mask (B, L); pooled (B, E); drop (B,) bool."""
        B, C, T, H, W = x.shape
        text_tokens, text_mask, pooled = self.text_embedder.apply_dropout(text_tokens, text_mask, pooled, drop)
        h = self.x_embedder(x)  # (B, T'*N, D)
        h = h + sincos_3d(h.shape[-1], T // self.tubelet, self.grid).to(device=h.device, dtype=h.dtype)
        cond = torch.stack([self.t_embedder(t), self.text_embedder.proj(pooled)], dim=1)  # (B, 2, D)
        context, mask = cond, torch.ones(B, 2, dtype=torch.bool, device=x.device)
        if self.token_proj is not None:
            context = torch.cat([cond, self.token_proj(text_tokens)], dim=1)  # (B, 2+L, D)
            mask = torch.cat([mask, text_mask], dim=1)  # (B, 2+L)
        prior = None
        if self.text_alignment:  # the timestep and pooled caption are read by every frame alike: prior 0
            prior = F.pad(alignment_prior(T // self.tubelet, text_mask), (2, 0))  # (B, T', 2+L)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = maybe_checkpoint(use_ckpt, block, h, context, mask, prior)  # (B, T'*N, D)
        h = self.final_linear(self.norm_final(h))  # (B, T'*N, t*p*p*C)
        return unpatchify_tubelets(h, self.tubelet, self.patch_size, T, self.grid, C)  # (B, C, T, H, W)
