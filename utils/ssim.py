"""SSIM (Wang et al. 2004) on torch tensors: one implementation for the metric `evaluate` reports and the
differentiable loss `train-autoencoder` trains with, so the two can never disagree."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(win: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The normalised 1-D Gaussian of win taps (centred), in like's dtype and device."""
    g = torch.exp(-((torch.arange(win, dtype=like.dtype, device=like.device) - (win - 1) / 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def separable_filter(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """img (N, C, H, W) filtered per channel by the 1-D window g along W then H, 'valid' borders (pad first to keep
    the size): (N, C, H - len(g) + 1, W - len(g) + 1)."""
    c, win = img.shape[1], len(g)
    img = F.conv2d(img, g.view(1, 1, 1, win).expand(c, 1, 1, win), groups=c)
    return F.conv2d(img, g.view(1, 1, win, 1).expand(c, 1, win, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM (N,) of image pairs (N, C, H, W), averaged over channels: 11x11 Gaussian window, sigma
    1.5, K1 0.01, K2 0.03, 'valid' borders as in the reference MATLAB code; images smaller than the window use a
    window of their size. Differentiable."""
    g = gaussian_window(min(win, x.shape[-1], x.shape[-2]), sigma, x)

    def filt(img):
        return separable_filter(img, g)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
