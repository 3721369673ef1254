"""Text-conditioned space-time U-Net, after the video diffusion U-Net of Ho et al. 2022 ("Video Diffusion Models").

Space and time are factorised: every residual block is a per-frame 2D convolution block (GroupNorm, SiLU, 3x3
convs, FiLM scale/shift from the timestep + pooled caption) followed by a temporal convolution across frames at each
pixel; at the low resolutions an attention block adds per-frame spatial self-attention, attention across frames
and cross-attention to the caption's tokens (queries know their frame index, so each frame can pick its words).
An optional pixel-unshuffle stem trades resolution for channels first (cheap on small frames). Every branch that
writes into a residual (second conv, temporal conv, attention projections) and the output conv start at zero, so
at initialisation each block is the identity and the network predicts exactly zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.blocks import (Attention, CrossAttention, TemporalAttention, TextConditioner, TextCrossAttention,
                           TimestepEmbedder, alignment_prior, initialize_shared, maybe_checkpoint, sincos_1d,
                           zero_module)

# channels per level (each level halves the resolution), residual blocks per level, the levels (0 = the stem's
# resolution) that get attention, attention heads, pixel-unshuffle factor of the stem
UNet3D_models: dict[str, dict] = {
    "UNet3D-B": dict(channels=(128, 256, 384, 512), num_blocks=2, attn_levels=(2, 3), num_heads=8, unshuffle=1),
    "UNet3D-S": dict(channels=(32, 64), num_blocks=1, attn_levels=(1,), num_heads=4, unshuffle=2),
    # UNet3D-S behind a third level at the input's own resolution instead of its pixel-unshuffle: the demo's hands
    # land 1.5 px nearer their places for 1.28x the step; W (16 channels there): closer still for 1.6x (docs/demo.md)
    "UNet3D-S3": dict(channels=(8, 32, 64), num_blocks=1, attn_levels=(2,), num_heads=4, unshuffle=1),
    "UNet3D-S3W": dict(channels=(16, 32, 64), num_blocks=1, attn_levels=(2,), num_heads=4, unshuffle=1),
    "UNet3D-Demo": dict(channels=(64, 128), num_blocks=1, attn_levels=(1,), num_heads=4, unshuffle=2),
    "UNet3D-Test": dict(channels=(16, 32), num_blocks=1, attn_levels=(1,), num_heads=2, unshuffle=2),
}


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Per-frame conv residual block with FiLM conditioning, then a temporal conv residual across frames."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * out_ch))
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.norm_t, self.temporal_conv = group_norm(out_ch), nn.Conv1d(out_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B*T, C, H, W); c (B, cond_dim)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B*T, C', H, W)
        scale, shift = self.film(c).repeat_interleave(frames, dim=0)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        x = self.skip(x) + h  # (B*T, C', H, W)
        BT, C, H, W = x.shape
        h = F.silu(self.norm_t(x)).view(BT // frames, frames, C, H * W).permute(0, 3, 2, 1)  # (B, HW, C, T)
        h = self.temporal_conv(h.reshape(-1, C, frames))  # (B*HW, C, T)
        h = h.view(BT // frames, H * W, C, frames).permute(0, 3, 2, 1).reshape(BT, C, H, W)  # (B*T, C, H, W)
        return x + h


class AttnBlock(nn.Module):
    """Spatial self-attention within each frame, attention across frames, cross-attention to the caption."""

    def __init__(self, channels: int, text_dim: int, num_heads: int, temporal: bool, cross: bool, aligned: bool):
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(channels, num_heads)
        self.temporal_attn = TemporalAttention(channels, num_heads) if temporal else None
        self.cross_attn = TextCrossAttention(channels, text_dim, num_heads, aligned) if cross else None

    def forward(self, x, frame_pos, text, text_mask, prior):
        """x (B*T, C, H, W); frame_pos (T, C)."""
        BT, C, H, W = x.shape
        T = frame_pos.shape[0]
        h = x.view(BT // T, T, C, H * W).transpose(2, 3)  # (B, T, N, C)
        h = h + self.attn(self.norm(h.reshape(BT, H * W, C))).view_as(h)
        if self.temporal_attn is not None:
            h = h + self.temporal_attn(h, frame_pos)
        if self.cross_attn is not None:
            h = h + self.cross_attn(h, frame_pos, text, text_mask, prior)
        return h.transpose(2, 3).reshape(BT, C, H, W)  # (B*T, C, H, W)


class UNet3D(nn.Module):
    """Denoiser for clips (B, C, T, H, W): a factorised space-time U-Net conditioned on timestep and caption."""

    OPTIONS = ("temporal_attention", "cross_attention", "text_alignment", "grad_checkpointing")
    GRAD_PROBES = {"input conv": "conv_in.weight", "text projection": "text_embedder.proj.0.weight",
                   "output conv": "conv_out.weight"}

    @staticmethod
    def multiples(size: dict) -> tuple[int, int]:
        """(frames, pixels) the clip size must be a multiple of."""
        return 1, size["unshuffle"] * 2 ** (len(size["channels"]) - 1)

    def __init__(self, image_size: int, text_dim: int, channels: tuple[int, ...], num_blocks: int,
                 attn_levels: tuple[int, ...], num_heads: int, unshuffle: int, in_channels: int = 3,
                 temporal_attention: bool = True, cross_attention: bool = True, text_alignment: bool = False,
                 grad_checkpointing: bool = False):
        super().__init__()
        assert image_size % self.multiples(dict(channels=channels, unshuffle=unshuffle))[1] == 0
        self.in_channels = self.out_channels = in_channels
        self.unshuffle, self.grad_checkpointing, self.text_alignment = unshuffle, grad_checkpointing, text_alignment
        cond_dim = 4 * channels[0]
        self.t_embedder = TimestepEmbedder(cond_dim)
        self.text_embedder = TextConditioner(text_dim, cond_dim)
        self.conv_in = nn.Conv2d(in_channels * unshuffle ** 2, channels[0], 3, padding=1)

        def attn(ch, level):
            return AttnBlock(ch, text_dim, num_heads, temporal_attention, cross_attention, text_alignment) \
                if level in attn_levels \
                else None
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        ch, skips = channels[0], []
        for level, out_ch in enumerate(channels):
            for _ in range(num_blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, out_ch, cond_dim), attn(out_ch, level)]))
                ch = out_ch
            skips.append(ch)
            if level < len(channels) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(ch, ch, cond_dim), attn(ch, max(attn_levels, default=-1)),
                                  ResBlock(ch, ch, cond_dim)])
        for level in reversed(range(len(channels))):
            out_ch = channels[level]
            for i in range(num_blocks):
                self.up.append(nn.ModuleList([ResBlock(ch + (skips[level] if i == 0 else 0), out_ch, cond_dim),
                                              attn(out_ch, level)]))
                ch = out_ch
            if level > 0:
                # after a nearest 2x upsample, at the finer level's width: keeping the coarse width at the fine
                # resolution cost UNet3D-S 12% more FLOPs (the largest conv of the network, and a wider skip concat)
                self.up.append(nn.Conv2d(ch, channels[level - 1], 3, padding=1))
                ch = channels[level - 1]
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, in_channels * unshuffle ** 2, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, then every residual branch and the output conv zeroed: identity blocks, zero output."""
        initialize_shared(self)
        for m in self.modules():
            if isinstance(m, ResBlock):
                zero_module(m.conv2), zero_module(m.temporal_conv)
            elif isinstance(m, (Attention, CrossAttention)):
                zero_module(m.proj)
        zero_module(self.conv_out)

    def level(self, blocks, h, c, T, text, text_mask, prior, use_ckpt):
        """A ResBlock and its optional attention, each checkpointed when use_ckpt."""
        res, attn = blocks
        h = maybe_checkpoint(use_ckpt, res, h, c, T)
        if attn is None:
            return h
        frame_pos = sincos_1d(torch.arange(T, device=h.device), h.shape[1]).to(h.dtype)  # (T, C)
        return maybe_checkpoint(use_ckpt, attn, h, frame_pos, text, text_mask, prior)

    def forward(self, x, t, text_tokens, text_mask, pooled, drop=None):
        """x (B, C, T, H, W); t (B,); text_tokens (B, L, E); text_mask (B, L); pooled (B, E); drop (B,) bool."""
        B, C, T, H, W = x.shape
        text_tokens, text_mask, pooled = self.text_embedder.apply_dropout(text_tokens, text_mask, pooled, drop)
        c = self.t_embedder(t) + self.text_embedder.proj(pooled)  # (B, cond_dim)
        h = F.pixel_unshuffle(x.transpose(1, 2).reshape(B * T, C, H, W), self.unshuffle)  # (B*T, C*u*u, H/u, W/u)
        h = self.conv_in(h)  # (B*T, C0, H/u, W/u)
        prior = alignment_prior(T, text_mask) if self.text_alignment else None  # (B, T, L)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        args = (T, text_tokens, text_mask, prior, use_ckpt)
        skips = []
        for block in self.down:
            if isinstance(block, nn.Conv2d):
                skips.append(h)
                h = block(h)  # (B*T, C, H/2, W/2)
            else:
                h = self.level(block, h, c, *args)
        skips.append(h)
        h = self.level(self.mid[:2], h, c, *args)
        h = self.mid[2](h, c, T)
        first = True
        for block in self.up:
            if isinstance(block, nn.Conv2d):
                h = block(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B*T, C, 2H, 2W)
                first = True
                continue
            if first:
                h = torch.cat([h, skips.pop()], dim=1)  # (B*T, C + C_skip, H, W)
                first = False
            h = self.level(block, h, c, *args)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B*T, C*u*u, H/u, W/u)
        h = F.pixel_shuffle(h, self.unshuffle)  # (B*T, C, H, W)
        return h.view(B, T, C, H, W).transpose(1, 2)  # (B, C, T, H, W)
