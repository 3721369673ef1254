"""Text <-> video matching model used by `main.py evaluate` (a small CLIP for sign clips).

Video tower: every frame -> PatchEmbed + fixed 2D sin-cos positions -> LayerNorm -> one linear readout of the
whole patch grid (position-specific weights: where a hand is matters; on the synthetic set this trained ~8x faster
and generalised better than per-frame attention layers, which were tried) -> one vector per frame. The frame vectors
and their frame-to-frame differences, plus fixed 1D sin-cos frame positions -> `depth` transformer layers over time
-> attention pooling -> clip embedding. Frame positions and differences make the order of motions part of the
input, and training shows time-reversed and segment-shuffled copies of each clip as negatives, so reversed or
shuffled signing scores lower.
Text tower: the frozen encoder's contextual token embeddings (one per token, padding masked) -> linear + 1D sin-cos
token positions -> `depth` masked transformer layers -> attention pooling: word order changes the embedding.
Both embeddings are L2-normalised; similarity is their dot product. Training (symmetric InfoNCE) is in training.py,
saving and loading in store.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.blocks import Attention, CrossAttention, Mlp, PatchEmbed, sincos_1d, sincos_2d
from utils.pixels import to_unit_range

HEADS = 4
POOL_QUERIES = 4


class Block(nn.Module):
    """Pre-norm transformer layer. Masked sequences (text) use CrossAttention of the sequence onto itself."""

    def __init__(self, dim: int, masked: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, dim, HEADS) if masked else Attention(dim, HEADS)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self.attn(h, h, mask) if mask is not None else self.attn(h))
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """A few learned queries attend over a (masked) sequence; their outputs, concatenated, map to one vector."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(POOL_QUERIES, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, dim, HEADS)
        self.out = nn.Linear(POOL_QUERIES * dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        q = self.queries.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.out(self.attn(q, self.norm(x), mask).flatten(1))  # (B, out_dim)


def positions(n: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Fixed sin-cos features (n, dim) for sequence positions 0..n-1."""
    return sincos_1d(torch.arange(n, device=like.device), dim).to(like.dtype)


class VideoTower(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int, depth: int):
        super().__init__()
        self.patch = PatchEmbed(patch, 3, dim)
        self.register_buffer("pos2d", sincos_2d(dim, image_size // patch), persistent=False)
        self.norm = nn.LayerNorm(dim)
        self.readout = nn.Linear((image_size // patch) ** 2 * dim, dim)  # where a hand is = which weights it meets
        self.motion = nn.Linear(2 * dim, dim)  # [frame, frame - previous frame] -> dim
        self.temporal = nn.ModuleList(Block(dim) for _ in range(depth))
        self.clip_pool = AttentionPool(dim, dim)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> one feature per frame (B, T, D); each frame is encoded alone."""
        B, T = x.shape[:2]
        h = self.norm(self.patch(x.flatten(0, 1)) + self.pos2d)  # (B*T, N, D)
        return self.readout(h.flatten(1)).view(B, T, -1)

    def clip(self, f: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frame features, in playing order -> (B, D)."""
        diff = torch.cat([torch.zeros_like(f[:, :1]), f[:, 1:] - f[:, :-1]], dim=1)
        h = self.motion(torch.cat([f, diff], dim=-1)) + positions(f.shape[1], f.shape[2], f)
        for blk in self.temporal:
            h = blk(h)
        return self.clip_pool(h)


class TextTower(nn.Module):
    def __init__(self, text_dim: int, dim: int, depth: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, masked=True) for _ in range(depth))
        self.pool = AttentionPool(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(tokens) + positions(tokens.shape[1], self.proj.out_features, tokens)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.pool(h, mask)


class Evaluator(nn.Module):
    """Clip and caption embeddings in one space; hparams (primitives) rebuild it from a saved file."""

    def __init__(self, text_dim: int, image_size: int, num_frames: int, dim: int = 64, patch: int = 4,
                 depth: int = 2):
        super().__init__()
        self.hparams = dict(text_dim=text_dim, image_size=image_size, num_frames=num_frames, dim=dim, patch=patch,
                            depth=depth)
        self.video = VideoTower(image_size, patch, dim, depth)
        self.text = TextTower(text_dim, dim, depth)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's learned temperature

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) float in [-1, 1] -> (B, T, D): reorder these to score reordered clips cheaply."""
        return self.video.frames(x)

    def clip_embedding(self, frame_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.video.clip(frame_features), dim=-1)

    def text_embedding(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens, mask), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    @torch.no_grad()
    def encode_clips(self, clips, batch_size: int = 32, order: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 clips (N, T, H, W, 3) (numpy or torch) -> normalised embeddings (N, D) on the CPU.

        order: a frame permutation (T,) applied before the temporal stage (e.g. reversed time)."""
        self.eval()
        clips = torch.as_tensor(np.asarray(clips)) if not torch.is_tensor(clips) else clips
        device = self.logit_scale.device
        out = []
        for i in range(0, clips.shape[0], batch_size):
            f = self.frame_features(clips_to_input(clips[i:i + batch_size].to(device)))
            out.append(self.clip_embedding(f if order is None else f[:, order.to(device)]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.hparams["dim"])

    @torch.no_grad()
    def encode_text(self, text, batch_size: int = 256) -> torch.Tensor:
        """TextEmbeddings (tokens, mask) -> normalised embeddings (N, D) on the CPU."""
        self.eval()
        device = self.logit_scale.device
        return torch.cat([self.text_embedding(text.tokens[i:i + batch_size].to(device),
                                              text.mask[i:i + batch_size].to(device)).cpu()
                          for i in range(0, text.tokens.shape[0], batch_size)])


def clips_to_input(clips_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [-1, 1]."""
    return to_unit_range(clips_u8).transpose(1, 2)


def segment_shuffle(num_frames: int, seed: int, segments: int = 4) -> torch.Tensor:
    """A frame order that plays `segments` contiguous parts of the clip in a random, non-identity order."""
    bounds = [i * num_frames // segments for i in range(segments + 1)]
    parts = [torch.arange(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(len(parts))
    while len(parts) > 1 and bool((perm == torch.arange(len(parts))).all()):
        perm = torch.randperm(len(parts), generator=g)
    return torch.cat([parts[i] for i in perm.tolist()])


def reorderings(num_frames: int) -> dict[str, torch.Tensor]:
    """The fixed frame orders a clip is checked against: played backwards, and in shuffled segments."""
    return {"reversed": torch.arange(num_frames - 1, -1, -1), "shuffled": segment_shuffle(num_frames, 0)}
