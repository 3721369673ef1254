"""Animated GIF reading and writing (Pillow), and what every clip reader shares: the pixel budget a decode may spend
(`PixelBudget`) and the one rule for frames of several sizes (`stack_frames`).

A `.gif` must hold GIF data: anything else (a PNG, or a video given the wrong suffix) is refused by name rather than
decoded as what it really is, so every command agrees on it (data/folder.py states the rule).
"""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.atomic import atomic_write

# Browsers play GIF frames with no delay or a delay of <= 10 ms at 100 ms; we read durations the same way.
DEFAULT_DURATION_MS = 100.0


class GifReadError(ValueError):
    """The file could not be decoded as a GIF (corrupt, truncated, empty, another format, or declaring too much)."""


def _mega(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f}M" if pixels >= 1e6 else f"{pixels / 1e6:.2g}M"


class PixelBudget:
    """data.max_clip_pixels (0 = no limit) for one pass over a clip's frames.

    What a file declares is checked first, before anything is decoded; then every frame is counted at the size it
    really decodes to, before it is decoded further or kept: a GIF frame may extend beyond the logical screen (Pillow
    grows its canvas to fit) and an MJPEG packet may be larger than its stream's header says, so the declared size
    alone does not bound memory. Raises `error` (the reader's own ValueError) with the frame and both sizes."""

    def __init__(self, max_pixels: int, error: type[ValueError], declared: tuple[int, int]):
        self.max_pixels, self.error, self.declared, self.spent = max_pixels, error, declared, 0

    def _over(self, pixels: int) -> str:
        return f"{_mega(pixels)} pixels, over the {_mega(self.max_pixels)} of data.max_clip_pixels"

    def check_declared(self, frames: int) -> None:
        w, h = self.declared
        if self.max_pixels and w * h * frames > self.max_pixels:
            raise self.error(f"declares {frames} frames of {w}x{h} = {self._over(w * h * frames)}")

    def spend(self, index: int, width: int, height: int) -> None:
        self.spent += width * height
        if self.max_pixels and self.spent > self.max_pixels:
            w, h = self.declared
            raise self.error(f"frame {index} decodes to {width}x{height} (declared {w}x{h}): {self._over(self.spent)}")


def stack_frames(frames: list[np.ndarray], error: type[ValueError]) -> np.ndarray:
    """(K, H, W, C) from frames of one size; frames of several sizes are refused by name, never resized."""
    shapes = {fr.shape for fr in frames}
    if len(shapes) != 1:
        raise error(f"frames differ in size: {sorted(shapes)}")
    return np.stack(frames)


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


def _frames(im, budget: PixelBudget, stop: int):
    """Seek frames 0 .. stop - 1 one at a time, yielding each index once the canvas it decodes onto fits the budget:
    Pillow decodes a frame only when the next one is sought or it is converted, so no frame is decoded at a size not
    yet counted. Seeking back to frame 0 keeps the grown canvas, so a second pass counts again."""
    for i in range(stop):
        im.seek(i)
        budget.spend(i, *im.size)
        yield i


def _durations(im, budget: PixelBudget) -> list[float]:
    """Every frame's display time in ms, as browsers play it (no delay or <= 10 ms: DEFAULT_DURATION_MS)."""
    durations = []
    for _ in _frames(im, budget, im.n_frames):
        d = im.info.get("duration")
        durations.append(float(d) if isinstance(d, (int, float)) and d > 10 else DEFAULT_DURATION_MS)
    return durations


def _not_gif(head: bytes) -> str:
    """What a file Pillow cannot open as an image holds, as its refusal names it: a video is told its own suffix."""
    if not head:
        return "an empty file"
    if head[4:8] == b"ftyp":
        return "MP4 data; rename it to .mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM data; rename it to .mkv or .webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI data; rename it to .avi"
    return "unrecognised data"


def _open_gif(path: str):
    """Pillow's image of a GIF file; other content, another image format or a video, is refused by name."""
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(12)
        raise GifReadError(f"not a GIF file ({_not_gif(head)})") from None
    if im.format != "GIF":
        im.close()
        raise GifReadError(f"not a GIF file ({im.format} data)")
    return im


def read_gif(path: str, choose=None, max_pixels: int = 0) -> tuple[np.ndarray, list[float]]:
    """Decode a GIF's frames to RGB uint8, keeping only the ones `choose(durations)` picks (all when None).

    Returns (kept frames (K, H, W, 3), every frame's display duration in ms). Before anything is decoded, the file
    must really be a GIF and declare at most `max_pixels` pixels in all (width x height x frames; 0 = no limit):
    a few hundred bytes of LZW can declare gigabytes. Each pass then counts every frame at its real canvas size
    (PixelBudget), as frames may be larger than the screen the file declares. Durations come from a first pass that
    keeps no pixels; the second pass keeps only the chosen frames, so memory grows with the frames kept, not the
    frames in the file. Every frame is converted to RGBA (Pillow composes palette, grayscale and partial frames onto
    the canvas) and alpha-composited on black, so transparent pixels get one deterministic colour.
    Raises GifReadError for anything unreadable or refused.
    """
    try:
        with _open_gif(path) as im:
            budget = PixelBudget(max_pixels, GifReadError, im.size)
            budget.check_declared(im.n_frames)
            durations = _durations(im, budget)
            if not durations:
                raise GifReadError("no frames")
            wanted = list(range(len(durations))) if choose is None else list(choose(durations))
            keep, kept = set(wanted), {}
            budget.spent = 0  # the first pass kept no pixels: this one may spend the whole budget again
            for i in _frames(im, budget, max(keep) + 1):
                if i in keep:
                    kept[i] = np.asarray(im.convert("RGBA"))
    except GifReadError:
        raise
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, EOFError, ValueError, ...)
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GifReadError(f"{type(e).__name__}: {msg}"[:120]) from e
    rgba = stack_frames([kept[i] for i in wanted], GifReadError)  # (K, H, W, 4)
    if rgba[..., 3].min() == 255:  # fully opaque (the common case): just drop alpha
        rgb = np.ascontiguousarray(rgba[..., :3])  # (K, H, W, 3)
    else:
        alpha = rgba[..., 3:].astype(np.uint16)
        rgb = ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # (K, H, W, 3)
    return rgb, durations


def probe_gif(path: str) -> tuple[int, float, int, int]:
    """(frames, seconds, width, height) without keeping pixels. Raises GifReadError."""
    try:
        with _open_gif(path) as im:
            durations = _durations(im, PixelBudget(0, GifReadError, im.size))
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
