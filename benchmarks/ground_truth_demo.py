"""Ground-truth scores of a checkpoint's clips of the synthetic signer: where its hands are, their shapes and colours,
the words' order and the background's noise, read off the pixels and compared with the renderer's truth (no learned
model: methods/ground_truth.py).

    python benchmarks/ground_truth_demo.py --checkpoint checkpoints/demo/final.pt [--captions 12] [--samples 2]
    python benchmarks/ground_truth_demo.py --real-only [--size 64 --frames 24]   # the ceiling: rendered clips

Every table has a second one beside it: the renderer's own clips of the same captions, scored the same way, which is
the best any generator can reach (a 32 px hand is 2.7 px in radius; a few shapes are ambiguous there).
--smoke: --real-only on 3 captions at 32x32 / 8 frames: checks the script runs in seconds.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.synth import VOCAB, draw_captions, rendered_at  # noqa: E402
from methods.ground_truth import format_table, score_clips  # noqa: E402
from methods.synth_truth import real_clip  # noqa: E402


def parse_source(text: str) -> tuple[int, int] | None:
    """'64x24' -> (64, 24): the size and frames the training clips were rendered at; 'none': rendered as scored."""
    if text == "none":
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise SystemExit(f"--source must be SIZExFRAMES or none, got {text!r}")
    return int(m[1]), int(m[2])


def pick_captions(n: int, seed: int) -> list[tuple[str, ...]]:
    """n captions of 1-3 words: past the single-word head of draw_captions, so most hold several words in order."""
    return draw_captions(len(VOCAB) + n, seed)[len(VOCAB):]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="training checkpoint (.pt) or exported folder")
    p.add_argument("--captions", type=int, default=12, help="captions to score")
    p.add_argument("--samples", type=int, default=1, help="generated clips per caption")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="auto", help="SIZExFRAMES the training clips were rendered at (the loader "
                   "then resampled them), 'none', or 'auto': the checkpoint's data folder's README, else 64x24 (the "
                   "built-in set's)")
    p.add_argument("--real-only", action="store_true", help="score rendered clips only: no checkpoint")
    p.add_argument("--size", type=int, default=32, help="--real-only: frame size")
    p.add_argument("--frames", type=int, default=8, help="--real-only: frames per clip")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the checkpoint's)")
    p.add_argument("--sampler", default=None, help="ddim, dpm++2m or ddpm (default: the checkpoint's)")
    p.add_argument("--noise_correlation", type=float, default=None,
                   help="starting noise shared by the frames (default: the checkpoint's)")
    p.add_argument("--smoke", action="store_true", help="--real-only on 3 captions: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.real_only, args.captions = True, 3
    if not args.real_only and not args.checkpoint:
        raise SystemExit("give --checkpoint, or --real-only to score rendered clips")
    captions = pick_captions(args.captions, args.seed)
    size, frames, pipe = args.size, args.frames, None
    if not args.real_only:
        from methods.pipeline import SignPipeline
        from methods.sampling import sample_seed

        pipe = SignPipeline.from_pretrained(args.checkpoint)
        size, frames = pipe.cfg.data.image_size, pipe.cfg.data.num_frames
    # the built-in set is rendered at 64x64 / 24 frames whatever the model's size (data.synth.ensure_data)
    source = parse_source(args.source) if args.source != "auto" else (
        (rendered_at(pipe.cfg.data.data_dir) if pipe else None) or (64, 24))
    print(f"{len(captions)} captions x {args.samples} sample(s), {frames} frames of {size}x{size}, truth rendered "
          f"{'at that size' if source is None else f'at {source[0]}x{source[0]} / {source[1]} frames, then loaded'}")

    t0 = time.perf_counter()
    reals = [real_clip(c, size, frames, i, source) for i, c in enumerate(captions)]
    real = score_clips(reals, captions, source, real_reference=False)
    print(format_table(real, f"\nreal renders (the ceiling), scored in {time.perf_counter() - t0:.1f} s"))
    if pipe is None:
        return
    texts = [" ".join(c) for c in captions for _ in range(args.samples)]
    seeds = [sample_seed(args.seed, " ".join(c), k) for c in captions for k in range(args.samples)]
    t0 = time.perf_counter()
    settings = pipe.settings(steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                             noise_correlation=args.noise_correlation)
    clips = pipe(texts, seeds=seeds, settings=settings, progress=True)
    print(f"\ngenerated {len(clips)} clips in {time.perf_counter() - t0:.1f} s ({settings})")
    gen = score_clips(clips, [tuple(t.split()) for t in texts], source)
    print(format_table(gen, f"\n{os.path.basename(args.checkpoint)}: generated clips"))
    print("\n| clips | place px | DTW px | shape | colour | PCK | word | order | background |\n" + "|---" * 9 + "|")
    for name, r in (("real", real["overall"]), ("generated", gen["overall"])):
        print(f"| {name} | {r['place_px']:.2f} | {r['dtw_px']:.2f} | {r['shape_acc']:.2f} | {r['colour_acc']:.2f} | "
              f"{r['pck']:.2f} | {r['word_acc']:.2f} | {r['order_ok']:.2f} | {r['background']:.2f} |")


if __name__ == "__main__":
    main()
