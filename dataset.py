"""Sign-language clip + caption dataset: discover, decode once into the clip store, read batch by batch.

Which files are clips and captions, what is skipped and the train/val split are data/folder.py's rules. Each clip (a
GIF or a video file) is decoded once (`load_clip`): `num_frames` frames sampled evenly over the clip's playback TIME
(per-frame durations or timestamps, so a held pose counts for as long as it is shown and variable frame rates are
respected), converted to RGB, resized aspect-preserving to `image_size x image_size` (never a blind center crop that
cuts off hands), and stored as uint8 in the on-disk clip store (data/clip_store.py), keyed by the file's bytes, its
suffix and these settings. Memory does not grow with the data set: `get_batch` reads the batch's clips from the store
and turns them into a float (B, 3, T, H, W) batch in [-1, 1].
"""
from __future__ import annotations

import collections
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config import DataConfig
from data.clip_store import ClipStore, ClipView, clip_key, content_hash
from data.folder import HOW_TO_GET_DATA, DataError, find_pairs, select_split, shown, warn_skipped
from utils.device import format_bytes
from utils.gif import GifReadError, read_gif
from utils.pixels import to_unit_range
from utils.video import is_video, read_video

CACHE_VERSION = 3  # bump when decoding/preprocessing changes so stale cache entries are not reused
RESIZE_MODES = ("pad", "fit", "crop")
FIT_CUT = 0.25  # resize_mode "fit" cuts at most this share of the long side: a 4:3 clip then fills the square
SCAN_FRAMES = 64  # frames data.trim_still judges: all of a short clip, evenly by time over a longer one


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
    "fit": the long side is first cut to its centre, by at most FIT_CUT of it (never past square), then padded: on
    real footage a 4:3 clip then fills the square, losing about 1% of its motion, and a 16:9 one fills 3/4 of it
    instead of 9/16 (benchmarks/framing.py).
    """
    if resize_mode == "fit":
        frames, resize_mode = centre_cut(frames, FIT_CUT), "pad"
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


def centre_cut(frames: np.ndarray, share: float) -> np.ndarray:
    """(T, h, w, 3) -> the centred part of the longer side, cutting at most `share` of it and never past square."""
    _, h, w, _ = frames.shape
    long, short = max(h, w), min(h, w)
    keep = max(short, round(long * (1 - share)))
    start = (long - keep) // 2
    return frames[:, start:start + keep] if h > w else frames[:, :, start:start + keep]  # (T, h', w', 3)


def moving_span(frames: np.ndarray, threshold: float) -> tuple[int, int]:
    """(first, last) index of frames (N, h, w, 3) once the still frames at both ends are dropped: an end frame goes
    while its mean absolute change (0-255, grey) to the next frame inwards is below threshold. A clip where nothing
    changes that much is kept whole."""
    grey = frames.astype(np.float32).mean(axis=3)  # (N, h, w)
    change = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (N-1,): frame i -> i+1
    moving = np.flatnonzero(change >= threshold)
    return (0, len(frames) - 1) if not moving.size else (int(moving[0]), int(moving[-1]) + 1)


def scan_indices(durations: list[float]) -> list[int]:
    """The frames data.trim_still judges: every frame of a short clip, SCAN_FRAMES evenly by time of a longer one."""
    n = len(durations)
    return list(range(n)) if n <= SCAN_FRAMES else sample_frame_indices(durations, SCAN_FRAMES)


def scan_slices(durations: list[float]) -> list[float]:
    """Each scanned frame's share of the clip's time: its own duration, or an equal share when the scan spread
    SCAN_FRAMES frames over a longer clip."""
    return durations if len(durations) <= SCAN_FRAMES else [sum(durations) / SCAN_FRAMES] * SCAN_FRAMES


def load_clip(path: str, num_frames: int, image_size: int, resize_mode: str, max_pixels: int = 0,
              allow_stills: bool = True, trim_still: float = 0.0) -> np.ndarray:
    """Decode + preprocess one GIF or video: uint8 (num_frames, image_size, image_size, 3), decoding only the frames
    kept. With trim_still, the rest poses at both ends (moving_span) are cut first, judged on every frame of a clip
    of up to SCAN_FRAMES frames, or on SCAN_FRAMES frames evenly spread over the time of a longer one.

    Raises GifReadError / VideoReadError (corrupt, not that format, over max_pixels, or a still image when stills are
    not allowed); both are ValueErrors."""
    read = read_video if is_video(path) else read_gif
    if not trim_still:
        frames, durations = read(path, lambda d: sample_frame_indices(d, num_frames), max_pixels)  # (T, h, w, 3)
    else:
        frames, durations = read(path, scan_indices, max_pixels)  # (K, h, w, 3)
        slices = scan_slices(durations)
        lo, hi = moving_span(frames, trim_still)
        frames = frames[[lo + i for i in sample_frame_indices(slices[lo:hi + 1], num_frames)]]  # (T, h, w, 3)
    if len(durations) == 1 and not allow_stills:
        raise GifReadError("a still image (1 frame), not an animation; data.allow_stills=true keeps such files")
    return resize_frames(frames, image_size, resize_mode)


def is_constant(clip: np.ndarray) -> bool:
    """Every frame the same (a frozen or fully transparent GIF): it teaches no motion."""
    return bool((clip == clip[:1]).all())


# ----------------------------------------------------------------------------------------------------------
# Dataset


def check_disk_space(folder: str, need: int, split: str, count: int) -> None:
    """Refuse, before decoding, a build of the clip store that the disk cannot hold."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DataError(f"the {split} split's {count} new clips need {format_bytes(need)} in the clip cache "
                        f"{folder}, {format_bytes(free)} is free there: point data.cache_dir at a larger disk, or "
                        f"lower data.image_size or data.num_frames")


def clip_settings(dc: DataConfig) -> str:
    """Every setting that changes a decoded clip or whether a file is accepted: the clip store's key."""
    return (f"text2sign-clip-v{CACHE_VERSION}|{dc.num_frames}|{dc.image_size}|{dc.resize_mode}|{dc.allow_stills}|"
            f"{dc.trim_still}|{dc.max_clip_pixels}")


class SignDataset(torch.utils.data.Dataset):
    """One split of a clip + caption folder; the decoded clips live in the on-disk clip store (data/clip_store.py),
    read batch by batch.

    split: "train" | "val" | "all". quiet=True silences the progress bar, the skipped-files warning and the summary
    line (the `skipped` list is filled either way), e.g. for the val set built right after the train set.
    """

    def __init__(self, cfg: DataConfig, split: str = "train", quiet: bool = False):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        self.cfg, self.split = cfg, split
        t, s = cfg.num_frames, cfg.image_size
        all_pairs, self.skipped = find_pairs(cfg.data_dir, cfg.caption_normalize)
        pairs = select_split(all_pairs, split, cfg.val_fraction)
        store = ClipStore(cfg.cache_dir, clip_settings(cfg), (t, s, s, 3))
        keys = [self._key(store, path) for path, _ in pairs]  # size + mtime, or the file's hash when new
        misses = [i for i, k in enumerate(keys) if k and store.row(k) is None and not store.failure(k)]
        if misses or store.needs_writing:
            check_disk_space(store.root, len(misses) * store.record_bytes, split, len(misses))
            with store:
                for i in tqdm(misses, desc="decoding clips", unit="clip", disable=quiet or None, dynamic_ncols=True,
                              leave=False):
                    if store.row(keys[i]) is not None or store.failure(keys[i]):  # another run sharing the cache
                        continue  # stored or refused it meanwhile
                    try:
                        clip = self._decode(pairs[i][0])
                    except ValueError as e:  # GifReadError / VideoReadError: corrupt / truncated / not that format
                        store.fail(keys[i], f"unreadable: {e}")
                        continue
                    store.add(keys[i], clip, is_constant(clip))
        for i, k in enumerate(keys):
            if k and store.failure(k):
                self.skipped.append((shown(os.path.basename(pairs[i][0])), store.failure(k)))
        keep = [i for i, k in enumerate(keys) if k and store.row(k) is not None]

        self.skipped.sort()
        if self.skipped and not quiet:
            warn_skipped(cfg.data_dir, self.skipped, len(keep), sys.stderr)
        self.constant = [shown(os.path.basename(pairs[i][0])) for i in keep if store.is_constant(keys[i])]
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
        if not quiet:
            n_val = len(select_split(all_pairs, "val", cfg.val_fraction))
            which = "" if split == "all" else split + " "
            print(f"data: {shown(cfg.data_dir)}: {len(all_pairs)} captioned clips (train {len(all_pairs) - n_val}, val "
                  f"{n_val}); {len(keep)} {which}clips loaded with {len(self.caption_vocab)} distinct captions, "
                  f"{len(self.skipped)} file(s) skipped", file=sys.stderr)
        index = {c: k for k, c in enumerate(self.caption_vocab)}
        self.caption_ids = torch.tensor([index[c] for c in self.captions], dtype=torch.long)  # (N,)
        # (N, T, H, W, 3) uint8, read on indexing; a clip failing its checksum is decoded again from its file
        self.clips = ClipView(store, [keys[i] for i in keep], self._redecode)

    def _key(self, store: ClipStore, path: str) -> str | None:
        """path's clip_key (its content hash from the store's size + mtime record when unchanged); None, with a named
        skip, when the file cannot be read."""
        try:
            digest = store.stat_hash(path)
            if digest is None:
                digest = content_hash(path)
                store.remember(path, digest)
            return clip_key(digest, path)
        except OSError as e:
            self.skipped.append((shown(os.path.basename(path)), f"unreadable: {e}"))
            return None

    def _decode(self, path: str) -> np.ndarray:
        c = self.cfg
        return load_clip(path, c.num_frames, c.image_size, c.resize_mode, c.max_clip_pixels, c.allow_stills,
                         c.trim_still)

    def _redecode(self, i: int) -> tuple[str, np.ndarray]:
        """Clip i decoded again from its file, its copy in the store having failed its checksum (flipped bytes, or an
        index whose rows were swapped), and stored again under the file's key: the store never serves another clip's
        pixels. One warning line names the file; a file that no longer decodes is a one-line DataError."""
        path = self.paths[i]
        name = shown(os.path.basename(path))
        print(f"warning: the clip cache's copy of {name} fails its checksum (a damaged cache): decoded it again from "
              f"the file", file=sys.stderr)
        try:
            key, clip = clip_key(content_hash(path), path), self._decode(path)
        except (OSError, ValueError) as e:
            raise DataError(f"the clip cache's copy of {name} fails its checksum and the file cannot be decoded "
                            f"again ({e}); delete {self.clips.store.root} to rebuild the cache") from e
        try:
            with self.clips.store as store:
                store.add(key, clip, is_constant(clip), replace=True)
        except OSError:
            pass  # a cache that cannot be written leaves this read right all the same; the next one decodes again
        return key, clip

    def top_captions(self, k: int = 3) -> list[str]:
        """The k most frequent captions (ties in caption order): sample prompts the data set itself holds."""
        counts = collections.Counter(self.captions)
        return sorted(self.caption_vocab, key=lambda c: (-counts[c], c))[:k]

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
            if torch.device(device).type == "cuda":  # a pinned source makes the copy asynchronous
                clips, ids = clips.pin_memory(), ids.pin_memory()
            clips, ids = clips.to(device, non_blocking=True), ids.to(device, non_blocking=True)
        return to_unit_range(clips), ids
