"""Text-conditioned video DiT in the TinyDiT family.

Each frame goes through the image DiT's spatial blocks (in chunks of frames, to bound memory); every block also
attends across frames at each spatial position (temporal attention) and from every token to the caption's tokens
(cross-attention). Both added attentions have zero-initialised output projections, so at initialisation the
model is exactly the per-frame image DiT, and pretrained image weights keep their meaning. The pooled caption
vector takes the place of DiT's class embedding in the adaLN conditioning.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.blocks import (DiTBlock, FinalLayer, PatchEmbed, TemporalAttention, TextConditioner, TextCrossAttention,
                           TimestepEmbedder, alignment_prior, initialize_shared, maybe_checkpoint, sincos_1d, sincos_2d)

# Named sizes, like DiT's DiT_models; TinyDiT-D14/2 is TinyFusion's pruned 14-block DiT-XL/2.
DiT_models: dict[str, dict[str, int]] = {
    "TinyDiT-D14/2": dict(depth=14, hidden_size=1152, patch_size=2, num_heads=16),
    "DiT-S/4": dict(depth=12, hidden_size=384, patch_size=4, num_heads=6),
    "DiT-Demo-L/4": dict(depth=6, hidden_size=256, patch_size=4, num_heads=4),
    "DiT-Demo/4": dict(depth=4, hidden_size=128, patch_size=4, num_heads=4),
    "DiT-Test/4": dict(depth=2, hidden_size=32, patch_size=4, num_heads=2),
}


class VideoDiTBlock(DiTBlock):
    """DiT block (spatial, per frame) + temporal attention across frames + cross-attention to text tokens."""

    def __init__(self, hidden_size: int, num_heads: int, text_dim: int, temporal: bool, cross: bool,
                 aligned: bool = False, mlp_ratio: float = 4.0):
        super().__init__(hidden_size, num_heads, mlp_ratio)
        self.temporal_attn = TemporalAttention(hidden_size, num_heads) if temporal else None
        self.cross_attn = TextCrossAttention(hidden_size, text_dim, num_heads, aligned) if cross else None

    def spatial(self, x, mod):
        """Per-frame self-attention: x (B, Tc, N, D)."""
        B, Tc, N, D = x.shape
        mod_frames = tuple(m.repeat_interleave(Tc, dim=0) for m in mod)  # (B*Tc, D) each
        return self.attn_branch(x.reshape(B * Tc, N, D), mod_frames).view(B, Tc, N, D)

    def temporal(self, x, frame_pos):
        """Each spatial position attends over all frames: x (B, T, N, D), frame_pos (T, D)."""
        return x + self.temporal_attn(x, frame_pos)

    def cross_and_mlp(self, x, mod, frame_pos, text, text_mask, prior):
        """Cross-attention to the caption (queries know their frame index), then the adaLN MLP: x (B, Tc, N, D)."""
        B, Tc, N, D = x.shape
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, frame_pos, text, text_mask, prior)
        return self.mlp_branch(x.reshape(B, Tc * N, D), mod).view(B, Tc, N, D)

    def forward(self, x, c, frame_pos, text, text_mask, prior, chunk: int, use_checkpoint: bool):
        mod = self.modulation(c)
        run = lambda f, *a: maybe_checkpoint(use_checkpoint, f, *a)  # noqa: E731
        T = x.shape[1]
        x = torch.cat([run(self.spatial, x[:, i:i + chunk], mod) for i in range(0, T, chunk)], dim=1)
        if self.temporal_attn is not None:
            x = run(self.temporal, x, frame_pos)
        return torch.cat([run(self.cross_and_mlp, x[:, i:i + chunk], mod, frame_pos[i:i + chunk], text, text_mask,
                              None if prior is None else prior[:, i:i + chunk]) for i in range(0, T, chunk)], dim=1)


class VideoDiT(nn.Module):
    """Denoiser for clips (B, C, T, H, W) conditioned on a diffusion timestep and a caption embedding."""

    OPTIONS = ("temporal_attention", "cross_attention", "text_alignment", "frame_chunk_size", "grad_checkpointing")
    INIT_FIELD = "pretrained"
    GRAD_PROBES = {"patch embedding": "x_embedder.proj.weight", "text projection": "text_embedder.proj.0.weight",
                   "final layer": "final_layer.linear.weight"}

    @staticmethod
    def multiples(size: dict) -> tuple[int, int]:
        """(frames, pixels) the clip size must be a multiple of."""
        return 1, size["patch_size"]

    def __init__(self, image_size: int, text_dim: int, depth: int, hidden_size: int, patch_size: int,
                 num_heads: int, in_channels: int = 3, mlp_ratio: float = 4.0, temporal_attention: bool = True,
                 cross_attention: bool = True, text_alignment: bool = False, frame_chunk_size: int = 4,
                 grad_checkpointing: bool = False, learn_sigma: bool = False):
        super().__init__()
        assert image_size % patch_size == 0, "image size must be a multiple of the patch size"
        self.in_channels = self.out_channels = in_channels  # what forward returns: the epsilon / v prediction
        # learn_sigma: DiT's final layer (2C channels: C epsilon, then C variance). Kept so a pretrained latent-space
        # file loads exactly; forward drops the variance half (our samplers use fixed variances): it gets no gradient
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.frame_chunk_size = frame_chunk_size
        self.grad_checkpointing, self.text_alignment = grad_checkpointing, text_alignment
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_embedder = TextConditioner(text_dim, hidden_size)
        # Fixed (not learned) sin-cos grid, recomputed for this resolution rather than stored in checkpoints.
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([
            VideoDiTBlock(hidden_size, num_heads, text_dim, temporal_attention, cross_attention, text_alignment,
                          mlp_ratio)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels * (2 if learn_sigma else 1))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init, plus zero output projections on the added attentions (identity at init)."""
        initialize_shared(self, self.x_embedder)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            for extra in (block.temporal_attn, block.cross_attn):
                if extra is not None:
                    nn.init.zeros_(extra.proj.weight)
                    nn.init.zeros_(extra.proj.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B*T, N, p*p*C) -> (B*T, C, H, W); C = the final layer's channels (2 x out_channels with learn_sigma)."""
        p, g = self.patch_size, self.grid
        C = x.shape[-1] // (p * p)
        x = x.reshape(x.shape[0], g, g, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, g * p, g * p)

    def forward(self, x, t, text_tokens, text_mask, pooled, drop=None):
        """x (B, C, T, H, W); t (B,) on the 0..999 scale; text_tokens (B, L, E); text_mask (B, L); pooled (B, E);
        drop (B,) bool: use the null caption (caption dropout / the unconditional half of guidance)."""
        B, C, T, H, W = x.shape
        text_tokens, text_mask, pooled = self.text_embedder.apply_dropout(text_tokens, text_mask, pooled, drop)
        frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        h = self.x_embedder(frames) + self.pos_embed  # (B*T, N, D)
        h = h.view(B, T, h.shape[1], h.shape[2])  # (B, T, N, D)
        c = self.t_embedder(t) + self.text_embedder.proj(pooled)  # (B, D)
        frame_pos = sincos_1d(torch.arange(T, device=x.device), h.shape[-1]).to(h.dtype)  # (T, D)
        prior = alignment_prior(T, text_mask) if self.text_alignment else None  # (B, T, L)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = block(h, c, frame_pos, text_tokens, text_mask, prior, self.frame_chunk_size, use_ckpt)
        out = self.final_layer(h.reshape(B, -1, h.shape[-1]), c)  # (B, T*N, p*p*C), p*p*2C with learn_sigma
        out = self.unpatchify(out.reshape(B * T, -1, out.shape[-1]))[:, :C]  # (B*T, C, H, W): sigma half dropped
        return out.reshape(B, T, C, H, W).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
