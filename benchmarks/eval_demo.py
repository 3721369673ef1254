"""Text following of demo checkpoints: `main.py evaluate` over checkpoints x guidance scales, as one table.

    python main.py train-evaluator                                   # once: checkpoints/demo/evaluator.pt
    python benchmarks/eval_demo.py --checkpoints checkpoints/demo/step_0000500.pt checkpoints/demo/final.pt \
        [--split train] [--num_captions 32] [--num_samples N] [--guidance 1 3 5] [--steps S] [--noise_correlation R] \
        [--evaluator PATH] [--out_dir DIR] [--smoke]

One markdown row per (checkpoint, guidance, group): generated R@1 ± its standard error over captions / real R@1
(their ratio; the issue's target is >= 0.9 on seen and >= 0.7 on unseen captions) and chance, R@5, Frechet distance
in the evaluator's space, SSIM, PSNR and mean frame-to-frame change generated / real. `--split train` gives seen
captions; the synthetic set's heldout/ folder (when present) gives unseen word combinations; `--split val` gives new
clips whose multi-word captions are mostly unseen combinations too. `--num_samples N` draws N clips per caption (R@k
averages over them). Each evaluation's JSON and GIF grids go to --out_dir. --smoke: 3 captions, 2 sampler steps
(unless --steps is given), out_dir a temp folder: checks the script with any checkpoint + evaluator in seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from methods.evaluation.evaluate import evaluate  # noqa: E402
from utils.errors import UserError  # noqa: E402

HEADER = ("| checkpoint | step | guidance | noise rho | group | K x N | R@1 gen ± se / real (ratio) | chance | "
          "R@5 gen / real | Frechet | SSIM | PSNR dB | change gen / real | s |\n" + "|---" * 14 + "|")


def row(ckpt: str, report: dict, group: str, g: dict, seconds: float) -> str:
    ratio = "-" if g["r1_ratio"] is None else f"{g['r1_ratio']:.2f}"
    return (f"| {os.path.basename(ckpt)} | {report['step']} | {report['guidance']:g} | "
            f"{report['noise_correlation']:g} | {group} | {g['num_captions']} x {g['samples_per_caption']} | "
            f"{g['generated_r1']:.3f} ± {g['generated_r1_se']:.3f} / {g['real_r1']:.3f} ({ratio}) | "
            f"{g['chance_r1']:.3f} | {g['generated_r5']:.3f} / {g['real_r5']:.3f} | {g['frechet_distance']:.3f} | "
            f"{g['ssim']:.3f} | {g['psnr']:.2f} | {g['temporal_change_generated']:.2f} / "
            f"{g['temporal_change_real']:.2f} | {seconds:.0f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--guidance", type=float, nargs="+", default=[None], help="default: each checkpoint's own")
    p.add_argument("--split", default="train")
    p.add_argument("--num_captions", type=int, default=32)
    p.add_argument("--num_samples", type=int, default=1, help="clips per caption")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--noise_correlation", type=float, default=None, help="default: each checkpoint's own")
    p.add_argument("--evaluator", default=None, help="default: evaluator.pt next to each checkpoint")
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", default=None, help="default: generated_samples/eval_demo (a temp folder with --smoke)")
    p.add_argument("--smoke", action="store_true", help="3 captions, 2 sampler steps: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.num_captions, args.steps = 3, args.steps or 2
    args.out_dir = args.out_dir or (tempfile.mkdtemp(prefix="t2s_eval_demo_") if args.smoke
                                    else os.path.join("generated_samples", "eval_demo"))
    print(HEADER)
    try:
        for ckpt in args.checkpoints:
            for guidance in args.guidance:
                stem = f"{os.path.splitext(os.path.basename(ckpt))[0]}_g{guidance if guidance is not None else 'cfg'}"
                t0 = time.perf_counter()
                report = evaluate(ckpt, data_dir=args.data, split=args.split, num_captions=args.num_captions,
                                  sampling={"steps": args.steps, "guidance": guidance,
                                            "noise_correlation": args.noise_correlation}, evaluator=args.evaluator,
                                  seed=args.seed, num_samples=args.num_samples, progress=False,
                                  out=os.path.join(args.out_dir, f"{stem}_{args.split}.json"))
                for group, g in report["groups"].items():
                    print(row(ckpt, report, group, g, time.perf_counter() - t0), flush=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
