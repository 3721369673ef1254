"""`main.py prepare-data`: a public data set's videos and manifest (or a folder of videos) into the flat caption folder
the trainer reads: one `<name>.mp4` (H.264) + `<name>.txt` per clip, trimmed, optionally cropped, shrunk to
--max-size, with a contact sheet and a summary.

It writes a folder rather than the decoded-clip cache: the folder does not depend on any training setting (frames,
size, resize mode), so one preparation serves every preset and experiment, and a user can open it, look at the clips,
delete bad ones or fix a caption; the cache is then built from it by `train` as for any folder.
Resumable: a clip whose .mp4 and .txt both exist is not redone (the .txt is written after the .mp4, both atomically,
so a present .txt means a complete clip). One bad video or manifest row is a named skip, never the end of the batch.
It writes only into a folder that is new, empty or marked as an earlier prepare-data run's (utils.folders), never into
--videos or around it: same-named files are replaced there, and --normalize-captions would rewrite the sources.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import random
import re
import shlex

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.folder import inside, normalize_caption, read_caption, shown
from data.manifests import Job, check_sources, read_manifest
from dataset import load_clip
from utils.atomic import atomic_write
from utils.contact_sheet import contact_sheet, write_png
from utils.errors import UserError
from utils.folders import claim_output_folder
from utils.gif import read_gif
from utils.video import read_video, write_video

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
SHEET = "contact_sheet.png"


class Refused(Exception):
    """A source file that is not read; the message is the whole skip reason."""


def read_frames(job: Job, max_side: int) -> tuple[np.ndarray, float]:
    """The job's frames (T, H, W, 3) uint8, trimmed, cropped and shrunk, and their frame rate."""
    if os.path.isdir(job.source):  # a folder of frame images (PHOENIX)
        names = sorted(n for n in os.listdir(job.source) if n.lower().endswith(FRAME_SUFFIXES))
        names = names[job.first_frame or 0:None if job.last_frame is None else job.last_frame + 1]
        if not names:
            raise ValueError("no frame images")
        for n in names:
            path = os.path.join(job.source, n)
            if not inside(path, job.source, strict=True):
                raise Refused(f"frame image {shown(n)} leads outside its frame folder")
            if not os.path.isfile(path):  # a pipe would wait for a writer forever
                raise Refused(f"frame image {shown(n)} is not a regular file")
        frames = np.stack([np.asarray(Image.open(os.path.join(job.source, n)).convert("RGB")) for n in names])
        return shrink(crop(frames, job.bbox), max_side), job.fps or 25.0
    if job.source.lower().endswith(".gif"):
        frames, durations = read_gif(job.source)
    else:
        frame_range = None if job.first_frame is None else (job.first_frame, job.last_frame)
        side = 0 if job.bbox else max_side  # a crop is cut in source pixels first
        frames, durations = read_video(job.source, start_s=job.start_s, end_s=job.end_s, frame_range=frame_range,
                                       max_side=side)
    return shrink(crop(frames, job.bbox), max_side), 1000.0 * len(durations) / sum(durations)


def crop(frames: np.ndarray, bbox) -> np.ndarray:
    """frames (T, H, W, 3) cut to bbox (x1, y1, x2, y2), clipped to the frame; an empty box is an error."""
    if bbox is None:
        return frames
    x1, y1, x2, y2 = bbox
    H, W = frames.shape[1:3]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(W, x2), min(H, y2)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"bounding box {tuple(bbox)} is empty inside the {W}x{H} frame")
    return np.ascontiguousarray(frames[:, y1:y2, x1:x2])


def shrink(frames: np.ndarray, max_side: int) -> np.ndarray:
    """frames whose longer side exceeds max_side, resized to it (aspect kept, area averaging); others unchanged."""
    H, W = frames.shape[1:3]
    if not max_side or max(H, W) <= max_side:
        return frames
    scale = max_side / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BOX)) for f in frames])


def prepare_one(args: tuple[Job, str, int, bool]) -> tuple[str, str, str | None]:
    """(name, "converted" | "done" | "skipped", reason): one clip into out_dir; never raises."""
    job, out_dir, max_side, normalize = args
    mp4, txt = (os.path.join(out_dir, job.name + ext) for ext in (".mp4", ".txt"))
    if os.path.exists(mp4) and os.path.exists(txt):
        return job.name, "done", None
    caption = normalize_caption(job.caption) if normalize else " ".join(job.caption.split())
    if not caption:
        return job.name, "skipped", "empty caption after normalising"
    try:
        frames, fps = read_frames(job, max_side)
        if len(frames) < 2:
            return job.name, "skipped", "fewer than 2 frames"
        write_video(mp4, frames, fps=fps)
        with atomic_write(txt, "w") as f:
            f.write(caption + "\n")
    except Refused as e:
        return job.name, "skipped", str(e)
    except Exception as e:  # a bad input of any kind is this clip's skip, not the run's end
        msg = shown(str(e).splitlines()[0]) if str(e) else ""
        return job.name, "skipped", f"{type(e).__name__}: {msg}"[:120]
    return job.name, "converted", None


def prepare_data(fmt: str, manifest: str | None, videos: str, out_dir: str, workers: int = 1, max_side: int = 256,
                 normalize: bool = False, options: dict | None = None, sheet_clips: int = 16,
                 quiet: bool = False) -> dict:
    """Run the preparation; returns the summary (counts, skips by reason, sheet path). Every option, and the output
    folder, is checked before the manifest is read: a mistake is one line at once, not after the work."""
    options = options or {}
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if max_side < 8:
        raise UserError(f"--max-size must be >= 8, got {max_side}")
    check_sources(fmt, manifest, videos, options)
    if inside(out_dir, videos) or inside(videos, out_dir):
        raise UserError(f"--out {out_dir} and --videos {videos} overlap (one is or holds the other): write the "
                        f"prepared clips to a separate folder, so no source file is replaced")
    claim_output_folder(out_dir, "prepare-data", command_line(fmt, manifest, videos, out_dir, max_side, normalize,
                                                               options))
    jobs, skipped = read_manifest(fmt, manifest, videos, options)
    counts = collections.Counter()
    work = [(job, out_dir, max_side, normalize) for job in jobs]
    workers = min(workers, len(work))  # a process per clip at most
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(prepare_one, work, chunksize=1)
        for name, status, why in tqdm(results, total=len(work), desc="preparing clips", unit="clip",
                                      disable=quiet or None, dynamic_ncols=True):
            counts[status] += 1
            if why:
                skipped.append((name, why))
    reasons = collections.Counter(reason_kind(why) for _, why in skipped)
    summary = dict(out_dir=out_dir, converted=counts["converted"], already_done=counts["done"],
                   skipped=len(skipped), skipped_by_reason=dict(reasons.most_common()), skipped_files=sorted(skipped),
                   sheet=None)
    done = sorted(n[:-4] for n in os.listdir(out_dir) if n.endswith(".txt") and
                  os.path.exists(os.path.join(out_dir, n[:-4] + ".mp4")))
    if done:
        clips, captions = [], []
        for name in random.Random(0).sample(done, min(sheet_clips, len(done))):
            try:  # the folder may hold clips of an earlier run or the user's edits: one that fails is not shown
                clips.append(load_clip(os.path.join(out_dir, name + ".mp4"), 8, 64, "pad"))
            except ValueError:
                continue
            captions.append(read_caption(os.path.join(out_dir, name + ".txt"))[0] or "")
        if clips:
            summary["sheet"] = os.path.join(out_dir, SHEET)
            write_png(summary["sheet"], contact_sheet(clips, captions))
    return summary


def command_line(fmt: str, manifest: str | None, videos: str, out_dir: str, max_side: int, normalize: bool,
                 options: dict) -> str:
    """The prepare-data command that makes this output (recorded in the folder's mark; --workers changes nothing)."""
    args = ["--from", fmt] + (["--manifest", manifest] if manifest else []) + ["--videos", videos, "--out", out_dir,
                                                                               "--max-size", str(max_side)]
    args += ["--normalize-captions"] if normalize else []
    for key, value in sorted(options.items()):
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)] if value not in (None, False) else []
    return "python main.py prepare-data " + shlex.join(args)


def reason_kind(why: str) -> str:
    """A skip reason without its particulars (file names, quoted values, numbers), to count skips by kind."""
    if why.split(":")[0].endswith(("Error", "Exception")):
        return why.split(":")[0]
    return re.sub(r"\s+", " ", re.sub(r"'[^']*'|\S+\.\w{2,4}\b|-?\d+(\.\d+)?", "#", why)).strip()


class _Serial:
    """The Pool interface in this process (workers=1: no start-up cost, tracebacks stay simple)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, items, chunksize=1):
        return map(fn, items)
