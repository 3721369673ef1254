"""A patch discriminator for the own autoencoder's decoder-only steps (`autoencoder.adversarial_weight`).

L1 + SSIM teach a decoder the mean of what a latent could be, so detail the latent does not fix (a hand's fingers, a
face's features) comes out blurred. Stable Diffusion's autoencoder adds an adversarial loss for it: a discriminator
scores small overlapping patches as real or decoded (PatchGAN, Isola et al., 2017) and the decoder learns to make its
patches score as real. This one is small (three strided convolutions), sees a frame group as the autoencoder codes it
(3 x time_down channels), and is used only in training: the model folder never holds it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.autoencoder import GROUPS


class PatchDiscriminator(nn.Module):
    """(N, 3 x frames, H, W) in [-1, 1] -> (N, 1, H/4 - 2, W/4 - 2) logits, one per overlapping ~34-pixel patch."""

    def __init__(self, frames: int = 1, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3 * frames, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # H/2
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(GROUPS, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, padding=1), nn.GroupNorm(GROUPS, 4 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 4, padding=1),  # H/4 - 2
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DCGAN's init: convs N(0, 0.02) with zero biases, norms the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real patches pushed above +1, decoded ones below -1 (0 once they are)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
