"""Sign-language clip + caption dataset: discover, decode once, cache, hold in memory as uint8.

Which files are clips and captions, what is skipped and the train/val split are data/folder.py's rules. Each clip (a
GIF or a video file) is decoded once (`load_clip`): `num_frames` frames sampled evenly over the clip's playback TIME
(per-frame durations or timestamps, so a held pose counts for as long as it is shown and variable frame rates are
respected), converted to RGB, resized aspect-preserving to `image_size x image_size` (never a blind center crop that
cuts off hands), and cached on disk as a uint8 .npy keyed by the file's bytes and these settings. The split's clips
live in one uint8 tensor (N, T, H, W, 3); `get_batch` turns an index tensor into a float (B, 3, T, H, W) batch in
[-1, 1] in one shot.
"""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import DataConfig
from data.folder import HOW_TO_GET_DATA, DataError, find_pairs, select_split, shown, warn_skipped
from utils.atomic import atomic_write
from utils.device import available_memory, format_bytes
from utils.gif import GifReadError, read_gif
from utils.pixels import to_unit_range
from utils.video import is_video, read_video

CACHE_VERSION = 2  # bump when decoding/preprocessing changes so stale cache entries are not reused
RESIZE_MODES = ("pad", "crop")


# ----------------------------------------------------------------------------------------------------------
# Decoding and preprocessing


def sample_frame_indices(durations: list[float], num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread evenly over the clip's playback time.

    Each frame occupies [start, start + duration) on the time axis; we sample `num_frames` instants evenly
    from the centre of the first frame to the centre of the last one (so both ends are always kept) and take
    the frame shown at each instant. With equal durations this is round(linspace(0, n - 1, num_frames)); a
    frame shown 5x longer gets picked ~5x as often. Clips with <= num_frames frames keep every frame and
    repeat the last one (no time stretching).
    """
    n = len(durations)
    if n == 0 or num_frames < 1:
        raise ValueError(f"need >= 1 frame and num_frames >= 1, got {n} frames, num_frames={num_frames}")
    if n <= num_frames:
        return list(range(n)) + [n - 1] * (num_frames - n)
    d = np.asarray(durations, dtype=np.float64)
    ends = np.cumsum(d)
    centers = ends - d / 2
    times = np.linspace(centers[0], centers[-1], num_frames)
    idx = np.searchsorted(ends, times, side="right")  # frame i is shown during [ends[i-1], ends[i])
    return np.minimum(idx, n - 1).tolist()


def resize_frames(frames: np.ndarray, image_size: int, resize_mode: str) -> np.ndarray:
    """(T, h, w, 3) uint8 -> (T, S, S, 3) uint8, aspect preserved.

    "pad": the whole frame fits inside S x S (nothing is cut off) and the letterbox bars take the clip's
    border colour (median of the outermost pixel ring over all frames: white studio backgrounds get white
    bars, black ones black), so the bars look like more background rather than a hard edge.
    "crop": the short side becomes S, then the centre S x S of the RESIZED frame is kept.
    """
    t, h, w, _ = frames.shape
    s = image_size
    if resize_mode == "pad":
        scale = s / max(h, w)
    elif resize_mode == "crop":
        scale = s / min(h, w)
    else:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if resize_mode == "crop":
        nh, nw = max(nh, s), max(nw, s)
    # LANCZOS in Pillow is antialiased when shrinking (filter support scales with the factor)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.LANCZOS)) for f in frames])
    if resize_mode == "crop":
        top, left = (nh - s) // 2, (nw - s) // 2
        return np.ascontiguousarray(resized[:, top:top + s, left:left + s])  # (T, S, S, 3)
    ring = np.concatenate([resized[:, 0], resized[:, -1], resized[:, :, 0], resized[:, :, -1]], axis=1)
    color = np.median(ring.reshape(-1, 3), axis=0).round().astype(np.uint8)
    out = np.empty((t, s, s, 3), dtype=np.uint8)
    out[:] = color
    top, left = (s - nh) // 2, (s - nw) // 2
    out[:, top:top + nh, left:left + nw] = resized
    return out


def load_clip(path: str, num_frames: int, image_size: int, resize_mode: str, max_pixels: int = 0,
              allow_stills: bool = True) -> np.ndarray:
    """Decode + preprocess one GIF or video: uint8 (num_frames, image_size, image_size, 3), decoding only the frames
    kept.

    Raises GifReadError / VideoReadError (corrupt, not that format, over max_pixels, or a still image when stills are
    not allowed); both are ValueErrors."""
    read = read_video if is_video(path) else read_gif
    frames, durations = read(path, lambda d: sample_frame_indices(d, num_frames), max_pixels)  # (T, h, w, 3)
    if len(durations) == 1 and not allow_stills:
        raise GifReadError("a still image (1 frame), not an animation; data.allow_stills=true keeps such files")
    return resize_frames(frames, image_size, resize_mode)


def is_constant(clip: np.ndarray) -> bool:
    """Every frame the same (a frozen or fully transparent GIF): it teaches no motion."""
    return bool((clip == clip[:1]).all())


# ----------------------------------------------------------------------------------------------------------
# Disk cache


def _cache_path(cache_dir: str, path: str, dc: DataConfig) -> str:
    """Keyed by the file's bytes and every setting that changes the decoded clip or whether it is accepted."""
    key = f"text2sign-clip-v{CACHE_VERSION}|{dc.num_frames}|{dc.image_size}|{dc.resize_mode}|{dc.allow_stills}|"
    h = hashlib.sha1(key.encode())
    with open(path, "rb") as f:
        h.update(f.read())
    return os.path.join(cache_dir, "clips", h.hexdigest() + ".npy")


def _read_cache(cache_file: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached clip, or None when absent or unusable (truncated, wrong shape/dtype): it is rebuilt."""
    if not os.path.exists(cache_file):
        return None
    try:
        arr = np.load(cache_file, allow_pickle=False)
    except Exception:
        return None
    return arr if arr.dtype == np.uint8 and arr.shape == shape else None


def _write_cache(cache_file: str, clip: np.ndarray) -> None:
    with atomic_write(cache_file) as f:
        np.save(f, clip, allow_pickle=False)


# ----------------------------------------------------------------------------------------------------------
# Dataset


class SignDataset(torch.utils.data.Dataset):
    """One split of a clip + caption folder, fully in memory as uint8.

    split: "train" | "val" | "all". quiet=True silences the progress bar and the skipped-files warning
    (the `skipped` list is filled either way), e.g. for the val set built right after the train set.
    """

    def __init__(self, cfg: DataConfig, split: str = "train", quiet: bool = False):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        self.cfg, self.split = cfg, split
        t, s = cfg.num_frames, cfg.image_size
        pairs, self.skipped = find_pairs(cfg.data_dir)
        pairs = select_split(pairs, split, cfg.val_fraction)
        need, free = len(pairs) * t * s * s * 3, available_memory(torch.device("cpu"))
        if free is not None and need > free:  # the split is held in memory as one uint8 tensor
            raise DataError(f"the {split} split's {len(pairs)} clips of {t} frames of {s}x{s} need "
                            f"{format_bytes(need)} of memory, {format_bytes(free)} is available: lower data.image_size "
                            f"or data.num_frames, or use fewer clips")

        # Pass 1: hash files and load cache hits. Pass 2: decode only the misses.
        clips: list[np.ndarray | None] = []
        misses = []
        for i, (path, _) in enumerate(pairs):
            try:
                cache_file = _cache_path(cfg.cache_dir, path, cfg)
            except OSError as e:
                cache_file = None
                self.skipped.append((shown(os.path.basename(path)), f"unreadable: {e}"))
            clip = _read_cache(cache_file, (t, s, s, 3)) if cache_file else None
            clips.append(clip)
            if clip is None and cache_file:
                misses.append((i, cache_file))
        for i, cache_file in tqdm(misses, desc="decoding clips", unit="clip", disable=quiet or None,
                                  dynamic_ncols=True, leave=False):
            path = pairs[i][0]
            try:
                clips[i] = load_clip(path, t, s, cfg.resize_mode, cfg.max_clip_pixels, cfg.allow_stills)
            except ValueError as e:  # GifReadError / VideoReadError: corrupt / truncated / not that format
                self.skipped.append((shown(os.path.basename(path)), f"unreadable: {e}"))
                continue
            _write_cache(cache_file, clips[i])

        keep = [i for i, c in enumerate(clips) if c is not None]
        self.skipped.sort()
        if self.skipped and not quiet:
            warn_skipped(cfg.data_dir, self.skipped, len(keep), sys.stderr)
        self.constant = [shown(os.path.basename(pairs[i][0])) for i in keep if is_constant(clips[i])]
        if self.constant and not quiet:
            print(f"warning: {len(self.constant)} clip(s) in {shown(cfg.data_dir)} are constant (every frame the same),"
                  f" kept but they teach no motion: {', '.join(self.constant)}", file=sys.stderr)
        if not keep and split != "val":  # an empty val split is fine for tiny sets
            raise DataError(f"no usable clips for split '{split}' in '{cfg.data_dir}' "
                            f"({len(self.skipped)} file(s) skipped): expected <name>.gif (or a video) + "
                            f"<name>.txt caption pairs; {HOW_TO_GET_DATA.replace('<dir>', cfg.data_dir)}")

        self.paths = [pairs[i][0] for i in keep]
        self.captions = [pairs[i][1] for i in keep]
        self.caption_vocab = sorted(set(self.captions))
        index = {c: k for k, c in enumerate(self.caption_vocab)}
        self.caption_ids = torch.tensor([index[c] for c in self.captions], dtype=torch.long)  # (N,)
        # one preallocated tensor: avoids a second full-size copy from np.stack
        self.clips = torch.empty((len(keep), t, s, s, 3), dtype=torch.uint8)  # (N, T, H, W, 3)
        for n, i in enumerate(keep):
            self.clips[n] = torch.from_numpy(clips[i])
            clips[i] = None  # release the numpy copy as we go

    def __len__(self) -> int:
        return self.clips.shape[0]

    def __getitem__(self, i: int) -> dict:
        return dict(video=to_unit_range(self.clips[i]), caption=self.captions[i],
                    caption_id=int(self.caption_ids[i]))

    def get_batch(self, indices: torch.Tensor, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos float32 (B, 3, T, H, W) in [-1, 1] and caption ids (B,), gathered in one indexing op.

        With `device`, the uint8 batch is moved first (4x fewer bytes over PCIe) and converted there.
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        clips, ids = self.clips[indices], self.caption_ids[indices]  # (B, T, H, W, 3), (B,)
        if device is not None:
            clips, ids = clips.to(device, non_blocking=True), ids.to(device, non_blocking=True)
        return to_unit_range(clips), ids
