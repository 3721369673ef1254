"""Pictures for TensorBoard, built with numpy and Pillow only: in-memory GIF/PNG, frame strips, grids, a plot.

TensorBoard's Images tab shows whatever encoded image an image summary holds, and browsers animate GIFs, so an
animated GIF needs no moviepy (which `add_video` requires). All inputs are uint8 (..., H, W, 3) arrays.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour integer upscale of (..., H, W, 3) so the shorter side is >= min_side (tiny clips)."""
    factor = max(1, math.ceil(min_side / min(frames.shape[-3:-1])))
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def frame_strip(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) -> one static (H, T*W + gaps, 3) image, frames left to right."""
    T, H, W, _ = frames.shape
    strip = np.full((H, T * W + (T - 1) * gap, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        strip[:, i * (W + gap):i * (W + gap) + W] = frame
    return strip


def clip_grid(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Rows of equally shaped clips (T, H, W, 3) -> one clip (T, rows*H + gaps, cols*W + gaps, 3)."""
    T, H, W, _ = rows[0][0].shape
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    out = np.full((T, n_rows * H + (n_rows - 1) * gap, n_cols * W + (n_cols - 1) * gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, clip in enumerate(row):
            y, x = r * (H + gap), c * (W + gap)
            out[:, y:y + H, x:x + W] = clip
    return out


def scatter_plot(x: np.ndarray, y: np.ndarray, x_max: float, title: str, x_label: str,
                 size: tuple[int, int] = (360, 220)) -> np.ndarray:
    """Points (x, y) in grey, the mean of y per distinct x as a blue line; log10 y axis. (H, W, 3) uint8."""
    W, H = size
    left, right, top, bottom = 46, 10, 18, 28
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=11)  # Pillow's built-in FreeType font
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        font = ImageFont.load_default()
    keep = np.isfinite(y) & (y > 0)
    x, y = np.asarray(x, dtype=np.float64)[keep], np.log10(np.asarray(y, dtype=np.float64)[keep])
    draw.text((left, 2), title, fill="black", font=font)
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    draw.text((W // 2 - 20, H - 14), x_label, fill="black", font=font)
    if x.size == 0:
        return np.asarray(img)
    span = y.max() - y.min()
    tick = 0.5 if span <= 3 else math.ceil(span / 6)  # decades between y ticks: at most ~7 labels
    y_lo, y_hi = math.floor(y.min() / tick) * tick, math.ceil(y.max() / tick) * tick
    y_hi = max(y_hi, y_lo + tick)

    def px(xv, yv):
        return (left + (W - left - right) * xv / max(x_max, 1),
                H - bottom - (H - top - bottom) * (yv - y_lo) / (y_hi - y_lo))

    for yv in np.arange(y_lo, y_hi + 1e-9, tick):  # labelled with the real value, not its log
        _, py = px(0, yv)
        draw.line([left - 3, py, left, py], fill="black")
        draw.text((2, py - 6), f"{10 ** yv:.2g}", fill="black", font=font)
    for xv in np.linspace(0, x_max, 5).round():
        pxv, _ = px(xv, y_lo)
        draw.line([pxv, H - bottom, pxv, H - bottom + 3], fill="black")
        draw.text((pxv - 6, H - bottom + 3), f"{int(xv)}", fill="black", font=font)
    for xv, yv in zip(x, y):
        cx, cy = px(xv, yv)
        draw.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=(150, 150, 150))
    ux = np.unique(x)
    means = [px(u, np.log10(np.mean(10 ** y[x == u]))) for u in ux]
    if len(means) > 1:
        draw.line(means, fill=(30, 90, 200), width=2)
    return np.asarray(img)
