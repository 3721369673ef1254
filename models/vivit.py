"""Text-conditioned factorised-encoder video transformer after ViViT (Arnab et al. 2021, model 2), made a denoiser.

A per-frame ViT (patch embedding, class token, learned positions, pre-norm blocks; optionally initialised from a
Hugging Face ViT checkpoint, models/vit_init.py) encodes every frame; temporal transformer layers then mix each token
position across the frames (adaLN-Zero DiT blocks over time, Peebles & Xie 2023); a DiT final layer decodes the
tokens back to pixels. Timestep + pooled caption modulate the spatial blocks' norms (FiLM) and drive the temporal
blocks' adaLN; every block cross-attends to the caption's tokens. The spatial blocks' FiLM and cross-attention start
at zero, so at initialisation the encoder is exactly the (loaded) image ViT; the temporal blocks' gates and the final
layer start at zero, so the model predicts exactly zero.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks import (Attention, DiTBlock, FinalLayer, Mlp, PatchEmbed, TextConditioner, TextCrossAttention,
                           TimestepEmbedder, alignment_prior, initialize_shared, maybe_checkpoint, modulate,
                           sincos_1d, sincos_2d, zero_module)

# spatial (per-frame ViT) and temporal depths; ViViT-B/16 and -S/8 have the shapes of ViT-B/16
# (google/vit-base-patch16-224-in21k) and DINO ViT-S/8 (facebook/dino-vits8), so either can initialise them
ViViT_models: dict[str, dict[str, int]] = {
    "ViViT-B/16": dict(spatial_depth=12, temporal_depth=4, hidden_size=768, num_heads=12, patch_size=16),
    "ViViT-S/8": dict(spatial_depth=12, temporal_depth=4, hidden_size=384, num_heads=6, patch_size=8),
    "ViViT-Demo/4": dict(spatial_depth=4, temporal_depth=2, hidden_size=128, num_heads=4, patch_size=4),
    "ViViT-Test/4": dict(spatial_depth=2, temporal_depth=1, hidden_size=32, num_heads=2, patch_size=4),
}
VIT_LN_EPS = 1e-12  # ViT's LayerNorm epsilon: a loaded ViT computes exactly what it computed in its own code


class SpatialBlock(nn.Module):
    """ViT block on each frame (attention, MLP), FiLM-modulated by the condition, with cross-attention to the text."""

    def __init__(self, hidden_size: int, num_heads: int, text_dim: int, cross: bool, aligned: bool):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=VIT_LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=VIT_LN_EPS)
        self.mlp = Mlp(hidden_size, 4 * hidden_size, gelu="none")
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 4 * hidden_size))
        self.cross_attn = TextCrossAttention(hidden_size, text_dim, num_heads, aligned) if cross else None

    def forward(self, x, c, frame_pos, text, text_mask, prior):
        """x (B, T, N, D); c (B, D); frame_pos (T, D)."""
        B, T, N, D = x.shape
        shift1, scale1, shift2, scale2 = self.film(c).repeat_interleave(T, dim=0).chunk(4, dim=1)  # (B*T, D) each
        h = x.reshape(B * T, N, D)  # (B*T, N, D)
        h = h + self.attn(modulate(self.layernorm_before(h), shift1, scale1))
        h = h.view(B, T, N, D)
        if self.cross_attn is not None:
            h = h + self.cross_attn(h, frame_pos, text, text_mask, prior)
        h = h.reshape(B * T, N, D)
        h = h + self.mlp(modulate(self.layernorm_after(h), shift2, scale2))
        return h.view(B, T, N, D)


class TemporalBlock(DiTBlock):
    """adaLN-Zero DiT block over the frames at each token position, then cross-attention to the text."""

    def __init__(self, hidden_size: int, num_heads: int, text_dim: int, cross: bool, aligned: bool):
        super().__init__(hidden_size, num_heads)
        self.cross_attn = TextCrossAttention(hidden_size, text_dim, num_heads, aligned) if cross else None

    def forward(self, x, c, frame_pos, text, text_mask, prior):
        """x (B, T, N, D); c (B, D); frame_pos (T, D)."""
        B, T, N, D = x.shape
        h = x.permute(0, 2, 1, 3).reshape(B * N, T, D)  # (B*N, T, D)
        h = super().forward(h, c.repeat_interleave(N, dim=0))  # (B*N, T, D)
        x = h.view(B, N, T, D).permute(0, 2, 1, 3)  # (B, T, N, D)
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, frame_pos, text, text_mask, prior)
        return x


class ViViT(nn.Module):
    """Denoiser for clips (B, C, T, H, W): per-frame ViT encoder, temporal transformer, pixel decoder."""

    OPTIONS = ("cross_attention", "text_alignment", "grad_checkpointing")
    INIT_FIELD = "vit_init"
    GRAD_PROBES = {"patch embedding": "x_embedder.proj.weight", "text projection": "text_embedder.proj.0.weight",
                   "final layer": "final_layer.linear.weight"}

    @staticmethod
    def multiples(size: dict) -> tuple[int, int]:
        """(frames, pixels) the clip size must be a multiple of."""
        return 1, size["patch_size"]

    def __init__(self, image_size: int, text_dim: int, spatial_depth: int, temporal_depth: int, hidden_size: int,
                 num_heads: int, patch_size: int, in_channels: int = 3, cross_attention: bool = True,
                 text_alignment: bool = False, grad_checkpointing: bool = False):
        super().__init__()
        assert image_size % patch_size == 0, "image size must be a multiple of the patch size"
        self.in_channels = self.out_channels = in_channels
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.num_heads, self.grad_checkpointing, self.text_alignment = num_heads, grad_checkpointing, text_alignment
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, hidden_size))  # learned, as in ViT
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_embedder = TextConditioner(text_dim, hidden_size)
        block_args = (hidden_size, num_heads, text_dim, cross_attention, text_alignment)
        self.spatial_blocks = nn.ModuleList([SpatialBlock(*block_args) for _ in range(spatial_depth)])
        self.temporal_blocks = nn.ModuleList([TemporalBlock(*block_args) for _ in range(temporal_depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """ViT-style encoder init (sin-cos start for the learned positions); FiLM, cross-attention outputs,
        temporal adaLN-Zero and the final layer at zero."""
        initialize_shared(self, self.x_embedder)
        nn.init.normal_(self.cls_token, std=0.02)
        self.pos_embed.data[0, 1:] = sincos_2d(self.pos_embed.shape[-1], self.grid)
        for block in self.spatial_blocks:
            zero_module(block.film[-1])
        for block in self.temporal_blocks:
            zero_module(block.adaLN_modulation[-1])
        for block in (*self.spatial_blocks, *self.temporal_blocks):
            if block.cross_attn is not None:
                zero_module(block.cross_attn.proj)
        zero_module(self.final_layer.adaLN_modulation[-1])
        zero_module(self.final_layer.linear)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The ViT's input tokens: (B*T, C, H, W) -> (B*T, 1+N, D) with the class token first."""
        h = self.x_embedder(frames)  # (B*T, N, D)
        cls = self.cls_token.expand(h.shape[0], -1, -1)  # (B*T, 1, D)
        return torch.cat([cls, h], dim=1) + self.pos_embed  # (B*T, 1+N, D)

    def forward(self, x, t, text_tokens, text_mask, pooled, drop=None):
        """x (B, C, T, H, W); t (B,); text_tokens (B, L, E); text_mask (B, L); pooled (B, E); drop (B,) bool."""
        B, C, T, H, W = x.shape
        text_tokens, text_mask, pooled = self.text_embedder.apply_dropout(text_tokens, text_mask, pooled, drop)
        h = self.encode_frames(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, 1+N, D)
        h = h.view(B, T, h.shape[1], h.shape[2])  # (B, T, 1+N, D)
        c = self.t_embedder(t) + self.text_embedder.proj(pooled)  # (B, D)
        frame_pos = sincos_1d(torch.arange(T, device=x.device), h.shape[-1]).to(h.dtype)  # (T, D)
        prior = alignment_prior(T, text_mask) if self.text_alignment else None  # (B, T, L)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.spatial_blocks:
            h = maybe_checkpoint(use_ckpt, block, h, c, frame_pos, text_tokens, text_mask, prior)  # (B, T, 1+N, D)
        h = h + frame_pos[None, :, None, :]  # the temporal layers know each frame's index
        for block in self.temporal_blocks:
            h = maybe_checkpoint(use_ckpt, block, h, c, frame_pos, text_tokens, text_mask, prior)  # (B, T, 1+N, D)
        h = self.final_layer(h[:, :, 1:].reshape(B, -1, h.shape[-1]), c)  # (B, T*N, p*p*C), class token dropped
        p, g = self.patch_size, self.grid
        h = h.reshape(B, T, g, g, p, p, C)
        return torch.einsum("bthwpqc->bcthpwq", h).reshape(B, C, T, H, W)  # (B, C, T, H, W)
