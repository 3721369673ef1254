"""Video file reading and writing (PyAV: FFmpeg's decoders and encoders, shipped inside its PyPI wheel).

Mirrors utils/gif.py: `read_video(path, choose)` returns the frames `choose(durations)` picks from the presentation
timeline and every frame's display duration, so a variable-frame-rate clip is sampled by time exactly as a GIF is.
A video suffix must hold a video: FFmpeg would also open a GIF or a still image, but such a file is refused by name
(a GIF is decoded by utils/gif.py, under its own suffix), so every command agrees on it (data/folder.py states the
rule).
"""
from __future__ import annotations

import os

import av
import numpy as np

from utils.atomic import atomic_write
from utils.gif import PixelBudget, stack_frames

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v")  # matched case-insensitively


class VideoReadError(ValueError):
    """The file could not be decoded as a video (corrupt, truncated, no video stream, or declaring too much)."""


def _short(e: Exception, path: str) -> str:
    """One line of at most 120 characters; FFmpeg's messages end with the file's path, which the caller names."""
    msg = (str(e).splitlines()[0] if str(e) else "").replace(f": '{path}'", "").replace(f"'{path}'", "the file")
    return f"{type(e).__name__}: {msg}"[:120]


def _timeline(container, stream) -> tuple[list[int | None], list[float]]:
    """Presentation-ordered frame keys (pts, or None when the stream has none) and display durations in ms, from
    the packets alone (nothing decoded)."""
    pts, last_duration = [], None
    for packet in container.demux(stream):
        if packet.size and (packet.pts is not None or packet.dts is not None):
            pts.append(packet.pts if packet.pts is not None else packet.dts)
            last_duration = packet.duration
    pts = sorted(set(pts))
    tb = float(stream.time_base) if stream.time_base else 0.0
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    if not pts or not tb:  # no usable timestamps: every frame shown for 1 / frame rate
        n = stream.frames or len(pts)
        return [None] * n, [1000.0 / rate] * n
    times = [p * tb * 1000.0 for p in pts]
    gaps = [b - a for a, b in zip(times, times[1:])]
    last = last_duration * tb * 1000.0 if last_duration else (float(np.median(gaps)) if gaps else 1000.0 / rate)
    return pts, gaps + [last]


def _not_video(demuxer: str) -> str | None:
    """Why content FFmpeg opened with this demuxer is not a video (a GIF, or one of FFmpeg's still-image formats)."""
    kind = demuxer.removesuffix("_pipe")
    if kind == "gif":
        return "not a video file (GIF data; rename it to .gif)"
    if demuxer.endswith("_pipe") or demuxer in ("image2", "apng"):
        return f"not a video file ({'still' if kind == 'image2' else kind.upper()} image data)"
    return None


def _stream_timeline(path: str) -> tuple[list[int | None], list[float], int, int]:
    """(frame keys, durations in ms, width, height) of the first video stream, from its packets (nothing decoded)."""
    with av.open(path) as container:
        why = _not_video(container.format.name)
        if why:
            raise VideoReadError(why)
        if not container.streams.video:
            raise VideoReadError("no video stream")
        stream = container.streams.video[0]
        keys, durations = _timeline(container, stream)
        return keys, durations, stream.codec_context.width, stream.codec_context.height


def probe_video(path: str) -> tuple[int, float, int, int]:
    """(frames, seconds, width, height) from the packets alone, nothing decoded. Raises VideoReadError."""
    try:
        keys, durations, w, h = _stream_timeline(path)
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(_short(e, path)) from e
    return len(keys), sum(durations) / 1000.0, w, h


def read_video(path: str, choose=None, max_pixels: int = 0, start_s: float | None = None,
               end_s: float | None = None, frame_range: tuple[int, int | None] | None = None,
               max_side: int = 0) -> tuple[np.ndarray, list[float]]:
    """Decode a video's frames to RGB uint8, keeping only those `choose(durations)` picks (all when None).

    Returns (kept frames (K, H, W, 3), the display duration in ms of every frame considered). start_s / end_s trim
    the timeline first (a frame belongs to [start_s, end_s) by its presentation time, relative to the stream's first
    frame); frame_range (first, last or None = to the end; 0-based, inclusive) then keeps those frames of what is
    left. max_side > 0 shrinks frames whose longer side exceeds it as they are decoded (area averaging), so a long
    high-resolution segment fits in memory. A first pass reads packet timestamps only; the second decodes and keeps
    the chosen frames, so memory grows with the frames kept. Width x height x frames over max_pixels (0 = no limit)
    is refused before decoding, and so is, before it is converted, the frame that brings the pixels decoded at their
    real sizes over it (a stream may declare a smaller size than its frames have: PixelBudget). Rotation metadata
    (phone footage) is applied. Raises VideoReadError for anything unreadable or refused.
    """
    try:
        keys, durations, w, h = _stream_timeline(path)
        if not keys:
            raise VideoReadError("no frames")
        times = np.concatenate([[0.0], np.cumsum(durations)[:-1]]) / 1000.0  # (N,) seconds from the first frame
        lo = 0 if start_s is None else int(np.searchsorted(times, start_s, side="left"))
        hi = len(keys) if end_s is None else int(np.searchsorted(times, end_s, side="left"))
        if hi <= lo:
            span = f"from {start_s or 0:g}s" + ("" if end_s is None else f" to {end_s:g}s")
            raise VideoReadError(f"no frames {span} (the video lasts {sum(durations) / 1000:.2f}s)")
        keys, durations = keys[lo:hi], durations[lo:hi]
        if frame_range is not None:
            first, last = frame_range
            stop, count = len(keys) if last is None else last + 1, len(keys)
            keys, durations = keys[first:stop], durations[first:stop]
            lo += first
            if not keys:
                raise VideoReadError(f"no frames in the frame range {first}..{last} (the video has {count} frames)")
        budget = PixelBudget(max_pixels, VideoReadError, (w, h))
        budget.check_declared(len(keys))
        wanted = list(range(len(keys))) if choose is None else list(choose(durations))
        scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
        size = (max(1, round(w * scale)), max(1, round(h * scale))) if scale < 1 else None
        kept = _decode(path, keys, lo, sorted(set(wanted)), budget, size)
    except VideoReadError:
        raise
    except Exception as e:  # FFmpeg errors come as many types (InvalidDataError, OSError, EOFError, ...)
        raise VideoReadError(_short(e, path)) from e
    return stack_frames([kept[i] for i in wanted], VideoReadError), durations


def _decode(path: str, keys: list[int | None], offset: int, wanted: list[int], budget: PixelBudget,
            size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """The frames at the sorted timeline positions `wanted` (0 = keys[0], the first frame after the trim). A frame the
    decoder drops is replaced by the last one decoded before it (what a player would still show), or at the very
    start by the first one decoded. Every decoded frame of the timeline is counted in `budget` at its own size before
    it is converted or kept."""
    index = {k: n for n, k in enumerate(keys)} if keys[0] is not None else None
    out, p, prev = {}, 0, None
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if index is not None and offset:  # jump to the keyframe before the trim instead of decoding from the start
            container.seek(keys[0], stream=stream, backward=True)
        for k, frame in enumerate(container.decode(stream)):
            if index is not None:
                if frame.pts is not None and frame.pts > keys[-1]:
                    break
                i = index.get(frame.pts, -1)
            else:
                i = k - offset
            if i < 0:
                continue
            budget.spend(i, frame.width, frame.height)
            if wanted[p] <= i:
                rgb = _rgb(frame, size)
                while p < len(wanted) and wanted[p] <= i:
                    out[wanted[p]] = rgb if wanted[p] == i or prev is None else _rgb(prev, size)
                    p += 1
                if p == len(wanted):
                    break
            prev = frame
    if not out and prev is None:
        raise VideoReadError("no frame could be decoded")
    for i in wanted[p:]:  # past the last decoded frame: it stays on screen
        out[i] = _rgb(prev, size) if prev is not None else out[max(out)]
    return out


def _rgb(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 of a decoded frame (shrunk to size (w, h) if given), turned upright by its rotation metadata."""
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
    turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def write_video(path: str, frames: np.ndarray, fps: float = 25.0, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 (yuv420p, so sides are padded to even sizes), atomically."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")  # yuv420p needs even sides
    with atomic_write(path) as f:
        with av.open(f, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height, stream.pix_fmt = W + W % 2, H + H % 2, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES
