"""The figures behind data.trim_still's default (config.REST_THRESHOLD): how much a resting signer's frames change
after H.264 encoding, against how much the slowest synthetic signs change.

    python benchmarks/rest_threshold.py [--smoke]
    python benchmarks/rest_threshold.py --real DIR [--thresholds 0.3,0.5,1,2]   # a folder of real clips

--real: what each threshold does to real footage (e.g. ../shared/realdev/clips, read for measurement only): the
share of frames trimmed, clips left whole, and how much the first and last kept frames still change (a rest pose
left in changes little).

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


def change(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float32).mean(axis=3)  # (T, H, W)
    return np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (T-1,)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny size: checks the script runs, measures nothing")
    p.add_argument("--real", default=None, metavar="DIR", help="measure the thresholds on this folder's clips instead")
    p.add_argument("--thresholds", default="0.3,0.5,1,1.5,2", help="with --real: comma-separated thresholds")
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
    from dataset import SCAN_FRAMES, moving_span, scan_indices
    from utils.video import is_video

    clips = []  # (the judged frames, their change to the next frame)
    for name in sorted(os.listdir(folder)):
        if is_video(name):
            frames = read_video(os.path.join(folder, name), scan_indices)[0]
            clips.append((frames, change(frames)))
    print(f"{len(clips)} clips of {folder} (read for measurement only), {SCAN_FRAMES} frames judged at most")
    for threshold in thresholds:
        trimmed, whole, ends = [], 0, []
        for frames, c in clips:
            lo, hi = moving_span(frames, threshold)
            whole += (lo, hi) == (0, len(frames) - 1)
            trimmed.append(1 - (hi - lo + 1) / len(frames))
            ends += [c[lo], c[hi - 1]] if hi > lo else []
        print(f"trim_still {threshold:g}: frames trimmed median {100 * np.median(trimmed):.0f}% (mean "
              f"{100 * np.mean(trimmed):.0f}%), clips untrimmed {whole}, change at the kept ends median "
              f"{np.median(ends):.2f}")


if __name__ == "__main__":
    main()
