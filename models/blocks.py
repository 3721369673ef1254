"""Building blocks shared by every architecture: embedders, attention, adaLN-Zero DiT block, final layer.

Parameter names follow TinyFusion/DiT (x_embedder.proj, t_embedder.mlp, blocks.i.attn.qkv, ...) so a pretrained
TinyDiT state dict maps onto these modules key for key.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; shift/scale are (B, D) and broadcast over the token axis of x (B, N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin-cos features (len(positions), dim) as in DiT's get_1d_sincos_pos_embed_from_grid."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.double().reshape(-1, 1) * omega.reshape(1, -1)  # (P, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """DiT's fixed 2D sin-cos position embedding for a grid_size x grid_size patch grid: (grid_size**2, dim)."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_h, grid_w = torch.meshgrid(coords, coords, indexing="xy")  # DiT puts w first
    emb_h = sincos_1d(grid_h.reshape(-1), dim // 2)
    emb_w = sincos_1d(grid_w.reshape(-1), dim // 2)
    return torch.cat([emb_h, emb_w], dim=1)


class TimestepEmbedder(nn.Module):
    """Embeds scalar (possibly fractional) timesteps into vectors via sinusoidal features and an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim); dim is even here

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided convolution."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, D)


class TubeletEmbed(nn.Module):
    """Non-overlapping tubelets (tubelet frames x patch x patch pixels) -> tokens, as in ViViT's tubelet embedding."""

    def __init__(self, tubelet: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        size = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=size, stride=size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, T'*N, D), time-major


def unpatchify_tubelets(x: torch.Tensor, tubelet: int, patch: int, frames: int, grid: int, channels: int):
    """(B, T'*N, t*p*p*C) tokens, time-major, -> (B, C, T, H, W) clips; the inverse of TubeletEmbed's layout."""
    B, tt, g = x.shape[0], frames // tubelet, grid
    x = x.reshape(B, tt, g, g, tubelet, patch, patch, channels)
    x = torch.einsum("bthwupqc->bctuhpwq", x)  # (B, C, T', t, g, p, g, p)
    return x.reshape(B, channels, frames, g * patch, g * patch)


def sincos_3d(dim: int, frames: int, grid: int) -> torch.Tensor:
    """Fixed position features of a time-major (frames x grid x grid) token grid: the 2D grid's sin-cos plus the
    frame index's sin-cos, (frames * grid**2, dim)."""
    space = sincos_2d(dim, grid)  # (N, dim)
    time = sincos_1d(torch.arange(frames), dim)  # (frames, dim)
    return (time[:, None, :] + space[None, :, :]).reshape(frames * grid * grid, dim)


class Mlp(nn.Module):
    """Transformer feed-forward (fc1 -> GELU -> fc2), named like timm's Mlp used by DiT."""

    def __init__(self, dim: int, hidden_dim: int, gelu: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=gelu)  # DiT uses the tanh approximation, ViT the exact GELU ("none")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over the token axis (fused qkv, like timm/DiT)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, "hidden size must divide by the head count"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, D/heads)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Tokens attend to a padded context sequence (text tokens); mask is True where the context is real. With
    aligned=True a per-head learned gain times a prior (B, T, L) on the logits says which context tokens each frame's
    queries favour (alignment_prior); x's N tokens are then T frames of N/T tokens each, frame-major."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, aligned: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(context_dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.align_gain = nn.Parameter(torch.ones(num_heads)) if aligned else None

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        L, H = context.shape[1], self.num_heads
        q = self.q(x).reshape(B, N, H, D // H).transpose(1, 2)  # (B, H, N, D/H)
        kv = self.kv(context).reshape(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (2, B, H, L, D/H)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L)
        if self.align_gain is not None:
            T = prior.shape[1]
            bias = self.align_gain[None, :, None, None, None] * prior[:, None, :, None, :]  # (B, H, T, 1, L)
            bias = bias.expand(-1, -1, -1, N // T, -1).reshape(B, H, N, L)  # (B, H, N, L)
            attn_mask = bias.to(q.dtype).masked_fill(~attn_mask, float("-inf"))  # (B, H, N, L)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class TemporalAttention(Attention):
    """Each spatial position attends over the frames; the residual of x (B, T, N, D) whose queries and keys know
    their frame index (frame_pos (T, D)). Parameters are Attention's, so state-dict keys stay qkv / proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        B, T, N, D = x.shape
        h = x.permute(0, 2, 1, 3).reshape(B * N, T, D)  # (B*N, T, D)
        h = super().forward(self.norm(h) + frame_pos)  # (B*N, T, D)
        return h.view(B, N, T, D).permute(0, 2, 1, 3)  # (B, T, N, D)


ALIGN_SHARPNESS = 18.0  # logit penalty per squared relative-position gap: -2 at a gap of 1/3 (a 3-word caption's step)


def alignment_prior(frames: int, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, L) prior that frame t reads the caption tokens at the same relative place: -(u_t - v_k)^2 x sharpness,
    u_t = (t + 1/2) / T over the clip, v_k = (k + 1/2) / n over each caption's n real tokens (mask (B, L)). Signed
    sentences and the synthetic captions both run their words through the clip in order."""
    u = (torch.arange(frames, device=mask.device, dtype=torch.float32) + 0.5) / frames  # (T,)
    n = mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # (B, 1)
    v = (torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32) + 0.5) / n  # (B, L)
    return -ALIGN_SHARPNESS * (u[None, :, None] - v[:, None, :]).square()  # (B, T, L)


class TextCrossAttention(CrossAttention):
    """Every token of x (B, T, N, D) attends to the caption tokens; queries carry their frame index (frame_pos (T, D)),
    so each frame can pick its own words; aligned / prior as in CrossAttention. Returns the residual (B, T, N, D)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, aligned: bool = False):
        super().__init__(dim, context_dim, num_heads, aligned)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, frame_pos: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                prior: torch.Tensor | None = None):
        B, T, N, D = x.shape
        q = (self.norm(x) + frame_pos[:, None, :]).reshape(B, T * N, D)  # (B, T*N, D)
        return super().forward(q, text, mask, prior).view(B, T, N, D)


class TextConditioner(nn.Module):
    """Maps the pooled caption vector into the conditioning space; learned null embeddings stand in for dropped
    captions (caption dropout in training, the unconditional half of classifier-free guidance in sampling)."""

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.null_pooled = nn.Parameter(torch.zeros(text_dim))
        self.null_token = nn.Parameter(torch.zeros(text_dim))

    def initialize_weights(self) -> None:
        for layer in (self.proj[0], self.proj[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.null_pooled, std=0.02)
        nn.init.normal_(self.null_token, std=0.02)

    def apply_dropout(self, tokens, mask, pooled, drop):
        """Replace the captions where drop (B,) is True by the null embedding (one null token, unmasked). The null
        embeddings enter every training forward, dropped or not: no host sync on drop, and DistributedDataParallel
        finds a gradient (zero) for them on every rank."""
        if drop is None:
            return tokens, mask, pooled
        d = drop.view(-1, 1)
        pooled = torch.where(d, self.null_pooled.to(pooled.dtype).expand_as(pooled), pooled)
        tokens = torch.where(d.unsqueeze(-1), self.null_token.to(tokens.dtype).expand_as(tokens), tokens)
        mask = torch.where(d, torch.ones_like(mask), mask)
        return tokens, mask, pooled


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of module: an added branch that starts as the identity of its residual."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def maybe_checkpoint(enabled: bool, fn, *args):
    """fn(*args), recomputed in backward instead of keeping its activations when enabled (activation checkpointing)."""
    return checkpoint(fn, *args, use_reentrant=False) if enabled else fn(*args)


def initialize_shared(model: nn.Module, patch_embed: nn.Module | None = None) -> None:
    """DiT's init of what every model shares, in DiT's order (the starting point each model's initialize_weights
    refines): xavier-uniform Linear weights with zero biases, the patch / tubelet projection as a flattened linear,
    N(0, 0.02) timestep MLP, and the caption conditioner. model has t_embedder and text_embedder."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if patch_embed is not None:
        w = patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(patch_embed.proj.bias)
    for layer in (model.t_embedder.mlp[0], model.t_embedder.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    model.text_embedder.initialize_weights()


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning: attention and MLP, each scaled by a conditioning gate."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) for attention then MLP, each (B, D)."""
        return self.adaLN_modulation(c).chunk(6, dim=1)

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift, scale, gate = mod[0:3]
        return x + gate.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift, scale))

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift, scale, gate = mod[3:6]
        return x + gate.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift, scale))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.modulation(c)
        return self.mlp_branch(self.attn_branch(x, mod), mod)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, tubelet: int = 1):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, tubelet * patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
