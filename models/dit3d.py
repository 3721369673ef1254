"""Text-conditioned DiT over space-time tubelets: the DiT recipe (Peebles & Xie 2023, adaLN-Zero blocks) applied to
the whole clip, as in Latte's / DiT-3D's joint space-time variant.

The clip is cut into tubelets (t frames x p x p pixels); every token attends to every other token of the clip (joint
space-time attention) under fixed 3D sin-cos positions. Conditioning follows DiT: the timestep embedding plus the
pooled caption drive each block's adaLN-Zero shift/scale/gate, and a zero-initialised cross-attention to the
caption's tokens sits between attention and MLP (with text_alignment, its logits get the alignment prior of each
token's tubelet time). With its adaLN gates and the final layer at zero, the model's
output is exactly zero at initialisation and every block is the identity.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks import (CrossAttention, DiTBlock, FinalLayer, TextConditioner, TimestepEmbedder, TubeletEmbed,
                           alignment_prior, initialize_shared, maybe_checkpoint, sincos_3d, unpatchify_tubelets,
                           zero_module)

DiT3D_models: dict[str, dict[str, int]] = {
    "DiT3D-B/2x4": dict(depth=12, hidden_size=768, num_heads=12, tubelet=2, patch_size=4),
    "DiT3D-Demo/2x4": dict(depth=4, hidden_size=128, num_heads=4, tubelet=2, patch_size=4),
    "DiT3D-Test/2x4": dict(depth=2, hidden_size=32, num_heads=2, tubelet=2, patch_size=4),
}


class DiT3DBlock(DiTBlock):
    """adaLN-Zero DiT block over all tokens of the clip, with cross-attention to the caption before the MLP."""

    def __init__(self, hidden_size: int, num_heads: int, text_dim: int, cross: bool, aligned: bool):
        super().__init__(hidden_size, num_heads)
        self.norm_c = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, text_dim, num_heads, aligned) if cross else None

    def forward(self, x, c, text, text_mask, prior):
        """x (B, T'*N, D); c (B, D); prior (B, T', L) or None."""
        mod = self.modulation(c)
        x = self.attn_branch(x, mod)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_c(x), text, text_mask, prior)
        return self.mlp_branch(x, mod)


class DiT3D(nn.Module):
    """Denoiser for clips (B, C, T, H, W): adaLN-Zero DiT blocks with joint space-time attention over tubelets."""

    OPTIONS = ("cross_attention", "text_alignment", "grad_checkpointing")
    GRAD_PROBES = {"tubelet embedding": "x_embedder.proj.weight", "text projection": "text_embedder.proj.0.weight",
                   "final layer": "final_layer.linear.weight"}

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
        self.grad_checkpointing, self.text_alignment = grad_checkpointing, text_alignment
        self.x_embedder = TubeletEmbed(tubelet, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_embedder = TextConditioner(text_dim, hidden_size)
        self.blocks = nn.ModuleList([DiT3DBlock(hidden_size, num_heads, text_dim, cross_attention, text_alignment)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels, tubelet)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears and tubelet projection, N(0, 0.02) embedders, adaLN-Zero and the output at 0."""
        initialize_shared(self, self.x_embedder)
        for block in self.blocks:
            zero_module(block.adaLN_modulation[-1])
            if block.cross_attn is not None:
                zero_module(block.cross_attn.proj)
        zero_module(self.final_layer.adaLN_modulation[-1])
        zero_module(self.final_layer.linear)

    def forward(self, x, t, text_tokens, text_mask, pooled, drop=None):
        """x (B, C, T, H, W); t (B,); text_tokens (B, L, E); text_mask (B, L); pooled (B, E); drop (B,) bool."""
        B, C, T, H, W = x.shape
        text_tokens, text_mask, pooled = self.text_embedder.apply_dropout(text_tokens, text_mask, pooled, drop)
        h = self.x_embedder(x)  # (B, T'*N, D), T' = T / tubelet
        pos = sincos_3d(h.shape[-1], T // self.tubelet, self.grid).to(device=h.device, dtype=h.dtype)
        h = h + pos  # (B, T'*N, D)
        c = self.t_embedder(t) + self.text_embedder.proj(pooled)  # (B, D)
        prior = alignment_prior(T // self.tubelet, text_mask) if self.text_alignment else None  # (B, T', L)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = maybe_checkpoint(use_ckpt, block, h, c, text_tokens, text_mask, prior)  # (B, T'*N, D)
        h = self.final_layer(h, c)  # (B, T'*N, t*p*p*C)
        return unpatchify_tubelets(h, self.tubelet, self.patch_size, T, self.grid, C)  # (B, C, T, H, W)
