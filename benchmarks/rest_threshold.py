"""The figures behind data.trim_still's default (config.REST_THRESHOLD): how much a resting signer's frames change
after H.264 encoding, against how much the slowest synthetic signs change.

    python benchmarks/rest_threshold.py [--smoke]
    python benchmarks/rest_threshold.py --real DIR [--thresholds 0.3,1,2,3,5]   # a folder of real clips

--real: what each threshold does to real footage (e.g. ../shared/realdev/clips, read for measurement only): the
share of frames trimmed, clips left whole, and how much the first and last kept frames still change (a rest pose
left in changes little), how many of the frames the `real` preset samples still look like the rest pose, and how
many trimmed frames look like signing (what a too-high threshold would cut).

--smoke: 32 px and 8 frames only (the figures need 128 and 256 px): checks the script runs in seconds.

Change = mean absolute difference of consecutive frames in grey levels (0-255), the measure data.trim_still uses.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data.synth import render_clip  # noqa: E402
from utils.video import read_video, write_video  # noqa: E402


REST_LIKE = 3.0  # grey levels (0-255) from a clip's first or last frame: H.264 noise and breathing, not a sign
SIGNING_LIKE = 6.0  # ... from both: an arm away from rest (a clip's middle frame: a median 14 away, 7 at the 10th pct)


def change(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float32).mean(axis=3)  # (T, H, W)
    return np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (T-1,)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny size: checks the script runs, measures nothing")
    p.add_argument("--real", default=None, metavar="DIR", help="measure the thresholds on this folder's clips instead")
    p.add_argument("--thresholds", default="0.3,1,2,3,5", help="with --real: comma-separated thresholds")
    args = p.parse_args()
    if args.real:
        real_footage(args.real, [float(t) for t in args.thresholds.split(",")])
        return
    sizes, frames, sigmas = ((32,), 8, (0, 2)) if args.smoke else ((128, 256), 24, (0, 2, 4))
    rng, tmp = np.random.default_rng(0), tempfile.mkdtemp(prefix="t2s_rest_")
    for size in sizes:
        clip = render_clip(["hello"], size=size, num_frames=frames)
        still = np.repeat(clip[:1], 16, axis=0).astype(np.float32)
        for sigma in sigmas:
            noisy = np.clip(still + rng.normal(0, sigma, still.shape), 0, 255).astype(np.uint8)
            path = os.path.join(tmp, f"still_{size}_{sigma}.mp4")
            write_video(path, noisy, fps=25, crf=23)
            c = change(read_video(path)[0])
            print(f"still signer {size}px, camera noise sigma {sigma}, H.264 crf 23: change mean {c.mean():.2f}, "
                  f"max {c.max():.2f}; before encoding {change(noisy).mean():.2f}")
        for words in (["hello"], ["thank", "you"], ["yes", "no", "please"]):
            c = change(render_clip(words, size=size, num_frames=frames))
            print(f"synthetic '{' '.join(words)}' {size}px, {frames} frames: change min {c.min():.2f}, "
                  f"median {np.median(c):.2f}, max {c.max():.2f}")


def real_footage(folder: str, thresholds: list[float]) -> None:
    from config import PRESETS
    from dataset import SCAN_FRAMES, moving_span, sample_frame_indices, scan_indices, scan_slices
    from utils.video import is_video

    num_frames = PRESETS["real"]().data.num_frames  # the frames `real` trains on
    clips = []  # (judged frames in grey, their change to the next frame, each one's time share, distance from ends)
    for name in sorted(os.listdir(folder)):
        if is_video(name):
            frames, durations = read_video(os.path.join(folder, name), scan_indices)
            grey = frames.astype(np.float32).mean(axis=3)  # (K, H, W)
            from_ends = np.minimum(np.abs(grey - grey[0]).mean(axis=(1, 2)), np.abs(grey - grey[-1]).mean(axis=(1, 2)))
            clips.append((grey, change(frames), scan_slices(durations), from_ends))
    print(f"{len(clips)} clips of {folder} (read for measurement only), {SCAN_FRAMES} frames judged at most; "
          f"rest-like = within {REST_LIKE} grey levels of the clip's first or last frame, signing-like = "
          f"{SIGNING_LIKE} or more from both")
    for threshold in thresholds:
        trimmed, whole, ends, rest_share, signing_cut = [], 0, [], [], 0
        for grey, c, slices, from_ends in clips:
            lo, hi = moving_span(grey[..., None], threshold)
            whole += (lo, hi) == (0, len(grey) - 1)
            trimmed.append(1 - (hi - lo + 1) / len(grey))
            ends += [c[lo], c[hi - 1]] if hi > lo else []
            kept = [lo + i for i in sample_frame_indices(slices[lo:hi + 1], num_frames)]
            rest_share.append(float((from_ends[kept] < REST_LIKE).mean()))
            signing_cut += int((np.delete(from_ends, np.arange(lo, hi + 1)) >= SIGNING_LIKE).sum())
        print(f"trim_still {threshold:g}: frames trimmed median {100 * np.median(trimmed):.0f}% (mean "
              f"{100 * np.mean(trimmed):.0f}%), clips untrimmed {whole}, change at the kept ends median "
              f"{np.median(ends):.2f}; of {num_frames} sampled frames rest-like {np.mean(rest_share):.2f}; trimmed "
              f"frames signing-like {signing_cut}")


if __name__ == "__main__":
    main()
