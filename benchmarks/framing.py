"""The figures behind the `real` presets' data.resize_mode: pad, fit or crop for real sign footage.

    python benchmarks/framing.py --real DIR     # a folder of real clips, e.g. ../shared/realdev/clips
    python benchmarks/framing.py --smoke        # synthetic 16:9, 4:3 and square videos: checks the script runs

--real reads the folder's videos for measurement only. Per clip, at its own resolution, and per resize mode (pad
keeps the whole frame, fit cuts at most a quarter of the long side and pads the rest, crop keeps the centre square):
- motion cut: per pixel, the mean absolute difference of consecutive grey frames over the clip (the arms and hands
  move, the backdrop does not); the share of it in the part of the frame the mode cuts away;
- picture: the share of the square training frame the picture fills (the rest is bars), which is also how large the
  mode draws the signer against crop (1.0 for a square clip: the three modes are the same);
- baked-in bars: border rows / columns whose every pixel stays below 16 grey levels in every frame (a letterbox
  inside the video itself, which neither mode removes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data.synth import render_clip  # noqa: E402
from dataset import FIT_CUT, SCAN_FRAMES, centre_cut, sample_frame_indices  # noqa: E402
from utils.video import is_video, read_video, write_video  # noqa: E402

DARK = 16  # grey level below which a border line counts as a letterbox bar
MOTION_CUT = 0.05  # a mode that cuts more than this share of a clip's motion loses part of the sign
MODES = {"pad": 0.0, "fit": FIT_CUT, "crop": 1.0}  # the most of the long side each mode may cut
SHAPES = ((1.05, "square"), (1.25, "near square"), (1.5, "4:3"), (float("inf"), "16:9 and wider"))


def measure(frames: np.ndarray) -> dict:
    """frames (T, H, W, 3) uint8 -> the clip's shape, per mode the motion cut and picture share, and its baked-in
    bar shares."""
    grey = frames.astype(np.float32).mean(axis=3)  # (T, H, W)
    motion = np.abs(np.diff(grey, axis=0)).mean(axis=0)  # (H, W)
    h, w = motion.shape
    long, short = max(h, w), min(h, w)
    out = dict(shape=next(name for limit, name in SHAPES if long / short < limit))
    for mode, most in MODES.items():
        kept = centre_cut(motion[None, :, :, None], most)[0, :, :, 0]  # (h', w'): what the loader's cut keeps
        out[mode] = (float(1 - kept.sum() / max(motion.sum(), 1e-9)), short / max(kept.shape))
    dark = grey.max(axis=0) < DARK  # (H, W): never brighter than DARK
    rows, cols = dark.all(axis=1), dark.all(axis=0)
    out.update(bars=max((_run(rows) + _run(rows[::-1])) / h, (_run(cols) + _run(cols[::-1])) / w))
    return out


def _run(flags: np.ndarray) -> int:
    """How many leading entries of flags are True."""
    return int(np.argmin(flags)) if not flags.all() else len(flags)


def report(clips: list[dict]) -> None:
    groups = defaultdict(list)
    for c in clips:
        groups[c["shape"]].append(c)
    print(f"| frame shape (long / short side) | clips | mode | motion cut: median / 95th pct / max | clips losing > "
          f"{MOTION_CUT:.0%} | picture share of the square (median) |")
    print("|---|---|---|---|---|---|")
    for _, shape in SHAPES:
        for mode in MODES if shape in groups else ():
            cut = np.array([c[mode][0] for c in groups[shape]])
            picture = np.median([c[mode][1] for c in groups[shape]])
            print(f"| {shape} | {len(groups[shape])} | {mode} | {np.median(cut):.3f} / {np.percentile(cut, 95):.3f} / "
                  f"{cut.max():.3f} | {int((cut > MOTION_CUT).sum())} | {picture:.2f} |")
    barred = np.array([c["bars"] for c in clips if c["bars"] > 0.05])
    print(f"baked-in bars over 5% of a side: {len(barred)} clips" +
          (f", median {np.median(barred):.2f} of the side (both bars together)" if len(barred) else ""))


def synthetic(folder: str) -> None:
    """Videos of the synthetic signer: twice side by side (2:1), in a 4:3 and a square frame, and one letterboxed
    inside a square."""
    clip = render_clip(["hello"], size=32, num_frames=8)  # (T, 32, 32, 3)
    black = np.zeros_like(clip)
    for name, frames in (("wide", np.concatenate([clip, clip], axis=2)),  # 2:1, the crop keeps half of each copy
                         ("four_three", np.concatenate([clip[:, :, :6], clip, clip[:, :, -6:]], axis=2)),
                         ("square", clip),
                         ("letterboxed", np.concatenate([black[:, :8], clip[:, 8:24], black[:, :8]], axis=1))):
        write_video(os.path.join(folder, f"{name}.mp4"), frames, fps=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=None, metavar="DIR", help="a folder of real clips (read for measurement only)")
    p.add_argument("--smoke", action="store_true", help="synthetic videos: checks the script runs, measures nothing")
    args = p.parse_args()
    if not args.real and not args.smoke:
        p.error("give --real DIR or --smoke")
    folder = args.real or tempfile.mkdtemp(prefix="t2s_framing_")
    if args.smoke:
        synthetic(folder)
    clips = []
    for name in sorted(os.listdir(folder)):
        if is_video(name):
            frames, _ = read_video(os.path.join(folder, name), lambda d: sample_frame_indices(d, SCAN_FRAMES))
            clips.append(measure(frames))
    print(f"{len(clips)} clips of {folder}" + (" (read for measurement only)" if args.real else " (synthetic)"))
    report(clips)


if __name__ == "__main__":
    main()
