"""Does a demo checkpoint follow the text? Pixel-space caption matching against the synthetic ground truth.

    python benchmarks/demo_text_following.py --checkpoint checkpoints/demo/latest.pt [--captions 24] [--png out.png]
        [--smoke]

For K captions it samples one clip each, renders the same captions with the synthetic signer (the ground truth
motions), and counts how often a generated clip is closest (mean squared pixel distance, per frame) to the render
of its own caption among all K. Chance is 1/K. This only works for models trained on the built-in synthetic set;
the general, learned evaluator is `main.py evaluate` (see README). --smoke: 4 captions, 2 sampler steps (unless
--steps is given): checks the script with any checkpoint in seconds; the figure means nothing.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from dataset import resize_frames, sample_frame_indices  # noqa: E402
from methods.pipeline import SignPipeline  # noqa: E402
from data.synth import VOCAB, render_clip, draw_captions  # noqa: E402


def ground_truth(words, cfg) -> np.ndarray:
    clip = render_clip(words)
    idx = sample_frame_indices([100.0] * len(clip), cfg.data.num_frames)
    return resize_frames(clip[idx], cfg.data.image_size, cfg.data.resize_mode)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--captions", type=int, default=24)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--png", default=None, help="write a real|generated frame grid here")
    p.add_argument("--smoke", action="store_true", help="4 captions, 2 sampler steps: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.captions, args.steps = 4, args.steps or 2
    pipe = SignPipeline.from_pretrained(args.checkpoint)
    cfg = pipe.cfg
    singles = [(w,) for w in VOCAB]
    multi = [c for c in draw_captions(400, args.seed) if len(c) > 1]
    rng = np.random.default_rng(args.seed)
    k1 = args.captions // 2
    captions = [singles[i] for i in rng.choice(len(singles), k1, replace=False)]
    captions += [multi[i] for i in rng.choice(len(multi), args.captions - k1, replace=False)]
    texts = [" ".join(c) for c in captions]
    gen = pipe(texts, seed=args.seed, settings=pipe.settings(steps=args.steps, guidance=args.guidance))
    real = np.stack([ground_truth(c, cfg) for c in captions])
    dist = ((gen[:, None].astype(np.float32) - real[None].astype(np.float32)) ** 2).mean(axis=(2, 3, 4, 5))
    hits = dist.argmin(axis=1) == np.arange(len(captions))
    for n_words in (1, 2, 3):
        sel = [i for i, c in enumerate(captions) if len(c) == n_words]
        if sel:
            print(f"{n_words}-word captions: {hits[sel].mean():.2f} top-1 ({len(sel)} captions)")
    print(f"caption match top-1: {hits.mean():.2f} over {len(captions)} captions (chance {1 / len(captions):.2f})")
    if args.png:
        from PIL import Image

        frames = np.linspace(0, cfg.data.num_frames - 1, 8).round().astype(int)
        rows = [np.concatenate([np.concatenate(list(real[i][frames]), 1), np.concatenate(list(gen[i][frames]), 1)],
                               1) for i in range(min(12, len(captions)))]
        grid = np.concatenate(rows, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.png)
        print("grid (left: ground truth, right: generated):", args.png, "rows:", texts[:12])


if __name__ == "__main__":
    main()
