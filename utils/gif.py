"""Animated GIF reading (imageio v3 API, Pillow plugin) and writing (Pillow)."""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata

import imageio.v3 as iio
import numpy as np
from PIL import Image

from utils.atomic import atomic_write

# Browsers play GIF frames with no delay or a delay of <= 10 ms at 100 ms; we read durations the same way.
DEFAULT_DURATION_MS = 100.0


class GifReadError(ValueError):
    """The file could not be decoded as an animated image (corrupt, truncated, empty or not an image)."""


def safe_filename(text: str, max_len: int = 60) -> str:
    """A file-name stem (or tag part) from free text: lowercase letters, digits and '_' only (no path traversal).

    Accents are transliterated ("café" -> "cafe"); when anything was dropped or changed on the way to ASCII, a short
    hash of the text is appended, so two non-Latin captions ("你好", "谢谢") never share a name."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    exact = ascii_text == text
    stem = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")[:max_len if exact else max_len - 9].strip("_")
    if exact:
        return stem or "sample"
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem}_{digest}" if stem else f"u{digest}"


def read_gif(path: str) -> tuple[np.ndarray, list[float]]:
    """Decode every frame of a GIF to RGB uint8.

    Returns frames (T, H, W, 3) and per-frame display durations in ms. Every frame is decoded as RGBA
    (Pillow composes palette, grayscale and partial frames onto the full canvas) and then alpha-composited
    on black, so files whose frames mix P / L / RGB / RGBA all come out the same shape and transparent
    pixels get one deterministic colour instead of whatever the palette stored behind them.
    Raises GifReadError for anything unreadable.
    """
    frames, durations = [], []
    try:
        with iio.imopen(path, "r", plugin="pillow") as f:
            for i, rgba in enumerate(f.iter(mode="RGBA")):
                frames.append(rgba)
                # metadata(index=i) is the frame just decoded, so this does not seek or re-decode
                durations.append(f.metadata(index=i).get("duration"))
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, EOFError, ValueError, ...)
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GifReadError(f"{type(e).__name__}: {msg}"[:120]) from e
    if not frames:
        raise GifReadError("no frames")
    shapes = {fr.shape for fr in frames}
    if len(shapes) != 1:
        raise GifReadError(f"frames differ in size: {sorted(shapes)}")
    rgba = np.stack(frames)  # (T, H, W, 4)
    if rgba[..., 3].min() == 255:  # fully opaque (the common case): just drop alpha
        rgb = np.ascontiguousarray(rgba[..., :3])  # (T, H, W, 3)
    else:
        alpha = rgba[..., 3:].astype(np.uint16)
        rgb = ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # (T, H, W, 3)
    durations = [float(d) if isinstance(d, (int, float)) and d > 10 else DEFAULT_DURATION_MS for d in durations]
    return rgb, durations


def gif_bytes(frames: np.ndarray, duration_ms: int = 100) -> bytes:
    """(T, H, W, 3) uint8 -> a looping animated GIF, in memory. Pillow merges identical consecutive frames."""
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def write_gif(path: str, frames: np.ndarray, duration_ms: int = 100) -> None:
    """Write (T, H, W, 3) uint8 frames as a looping GIF, atomically."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_gif expects (T, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    data = gif_bytes(frames, duration_ms)
    with atomic_write(path) as f:
        f.write(data)
