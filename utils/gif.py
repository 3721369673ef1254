"""Animated GIF reading and writing (Pillow)."""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata

import numpy as np
from PIL import Image

from utils.atomic import atomic_write

# Browsers play GIF frames with no delay or a delay of <= 10 ms at 100 ms; we read durations the same way.
DEFAULT_DURATION_MS = 100.0


class GifReadError(ValueError):
    """The file could not be decoded as a GIF (corrupt, truncated, empty, another format, or declaring too much)."""


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


def _durations(im) -> list[float]:
    """Every frame's display time in ms, as browsers play it (no delay or <= 10 ms: DEFAULT_DURATION_MS)."""
    durations = []
    for i in range(im.n_frames):
        im.seek(i)
        d = im.info.get("duration")
        durations.append(float(d) if isinstance(d, (int, float)) and d > 10 else DEFAULT_DURATION_MS)
    return durations


def read_gif(path: str, choose=None, max_pixels: int = 0) -> tuple[np.ndarray, list[float]]:
    """Decode a GIF's frames to RGB uint8, keeping only the ones `choose(durations)` picks (all when None).

    Returns (kept frames (K, H, W, 3), every frame's display duration in ms). Before anything is decoded, the file
    must really be a GIF and declare at most `max_pixels` pixels in all (width x height x frames; 0 = no limit):
    a few hundred bytes of LZW can declare gigabytes. Durations come from a first pass that keeps no pixels; the
    second pass keeps only the chosen frames, so memory grows with the frames kept, not the frames in the file.
    Every frame is converted to RGBA (Pillow composes palette, grayscale and partial frames onto the canvas) and
    alpha-composited on black, so transparent pixels get one deterministic colour.
    Raises GifReadError for anything unreadable or refused.
    """
    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                raise GifReadError(f"not a GIF file ({im.format} data)")
            (w, h), n = im.size, im.n_frames
            if max_pixels and w * h * n > max_pixels:
                raise GifReadError(f"declares {n} frames of {w}x{h} = {w * h * n / 1e6:,.0f}M pixels, over the "
                                   f"{max_pixels / 1e6:,.0f}M of data.max_clip_pixels")
            durations = _durations(im)
            wanted = list(range(n)) if choose is None else choose(durations)
            kept = {}
            for i in sorted(set(wanted)):
                im.seek(i)
                kept[i] = np.asarray(im.convert("RGBA"))
    except GifReadError:
        raise
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, EOFError, ValueError, ...)
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GifReadError(f"{type(e).__name__}: {msg}"[:120]) from e
    if not durations:
        raise GifReadError("no frames")
    shapes = {fr.shape for fr in kept.values()}
    if len(shapes) != 1:
        raise GifReadError(f"frames differ in size: {sorted(shapes)}")
    rgba = np.stack([kept[i] for i in wanted])  # (K, H, W, 4)
    if rgba[..., 3].min() == 255:  # fully opaque (the common case): just drop alpha
        rgb = np.ascontiguousarray(rgba[..., :3])  # (K, H, W, 3)
    else:
        alpha = rgba[..., 3:].astype(np.uint16)
        rgb = ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # (K, H, W, 3)
    return rgb, durations


def probe_gif(path: str) -> tuple[int, float, int, int]:
    """(frames, seconds, width, height) without decoding pixels. Raises GifReadError."""
    try:
        with Image.open(path) as im:
            if im.format != "GIF":
                raise GifReadError(f"not a GIF file ({im.format} data)")
            durations = _durations(im)
            return len(durations), sum(durations) / 1000.0, im.size[0], im.size[1]
    except GifReadError:
        raise
    except Exception as e:
        raise GifReadError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]) from e


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
