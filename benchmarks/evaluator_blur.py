"""How much of an evaluator's R@1 is sharpness: the real clips, Gaussian-blurred frame by frame, scored as if they were
generated ones. A generated clip of the right sign but blurrier than its real clip loses R@1 the same way, so this
table says what R@1 a generator reaches at a given SSIM with the content exactly right. With --checkpoint, the other
side: the checkpoint's generated clips of the same captions, unsharp-masked, so the table says how much R@1 a sharper
generator (a sharper decoder) would add to the same content.

    python benchmarks/evaluator_blur.py --evaluator checkpoints/<exp>/evaluator.pt [--preset real] [--set F=V ...]
        [--data DIR] [--split train] [--sigmas 0 1 2 3] [--draws 3] [--num_captions 32] [--smoke]
        [--checkpoint checkpoints/<exp>/final.pt [--amounts 0.5 1 2] [--radius 1] [--sample_steps N]]

The clips are read from --data (default: the folder the evaluator trained on) with the --preset / --set data settings,
which must be those the evaluator trained under (checked, as `evaluate` checks them). One row per blur sigma (in
pixels of the clip): R@1 of the blurred real clips against their captions (the mean of --draws caption draws, as
`evaluate --seed 0..N-1` picks them), their SSIM and PSNR against the sharp clip, and the training-free retrieval (the
sharp clip of the caption is the nearest in pixel features). With --checkpoint, the data settings are the checkpoint's
and a second table scores its clips (one per caption, seeded as `evaluate --seed` seeds them) unsharp-masked:
clip + amount x (clip - clip blurred by --radius). --smoke: two sigmas, one draw of 4 captions, and without
--evaluator a tiny synthetic folder and a 5-step evaluator: checks the script in seconds; it measures nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import SignDataset  # noqa: E402
from methods.evaluation.captions import pick_captions  # noqa: E402
from methods.evaluation.evaluate import generate_clips  # noqa: E402
from methods.evaluation.metrics import score_clips  # noqa: E402
from methods.evaluation.store import check_preprocessing, load_evaluator  # noqa: E402
from methods.pipeline import SignPipeline  # noqa: E402
from methods.run_config import load_config  # noqa: E402
from models.text_encoder import embed_captions  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.ssim import gaussian_window, separable_filter  # noqa: E402


def gaussian_blur(clips: np.ndarray, sigma: float) -> np.ndarray:
    """clips (K, T, H, W, 3) uint8, blurred within each frame (the SSIM metric's separable Gaussian, radius 3 sigma,
    edges repeated)."""
    if sigma <= 0:
        return clips
    return to_uint8(_blurred(frames_of(clips), sigma), clips.shape)


def unsharp(clips: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """clips + amount x (clips - gaussian_blur(clips, sigma)), per frame: edges and detail amplified."""
    if amount <= 0:
        return clips
    x = frames_of(clips)
    return to_uint8(x + amount * (x - _blurred(x, sigma)), clips.shape)


def frames_of(clips: np.ndarray) -> torch.Tensor:
    """(K, T, H, W, 3) uint8 -> (K*T, 3, H, W) float."""
    return torch.from_numpy(clips).float().permute(0, 1, 4, 2, 3).flatten(0, 1)


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    return separable_filter(F.pad(x, (r, r, r, r), mode="replicate"), gaussian_window(2 * r + 1, sigma, x))


def to_uint8(x: torch.Tensor, shape: tuple) -> np.ndarray:
    """(K*T, 3, H, W) float -> (K, T, H, W, 3) uint8, rounded and clipped."""
    K, T, H, W, C = shape
    return x.view(K, T, C, H, W).permute(0, 1, 3, 4, 2).round().clamp(0, 255).to(torch.uint8).numpy()


def row(label: str, scores: list[dict]) -> str:
    """One table row: the draws' mean R@1 (and each draw's), SSIM, PSNR and training-free R@1."""
    def mean(key):
        return sum(s[key] for s in scores) / len(scores)
    per_draw = ", ".join(f"{s['generated_r1']:.3f}" for s in scores)
    return (f"| {label} | {mean('generated_r1'):.3f} ({per_draw}) / {mean('real_r1'):.3f} | {mean('ssim'):.3f} | "
            f"{mean('psnr'):.2f} | {mean('nn_generated_r1'):.3f} |")


def smoke_setup(tmp: str) -> tuple[str, list[str]]:
    """A tiny synthetic folder and an evaluator trained on it for 5 steps: (evaluator path, --set overrides)."""
    from data.synth import write_dataset
    from methods.evaluation.training import train_evaluator

    data = os.path.join(tmp, "data")
    write_dataset(data, 6, seed=0, size=16, num_frames=4)
    sets = [f"data.data_dir={data}", "data.image_size=16", "data.num_frames=4", f"data.cache_dir={tmp}/cache",
            "data.val_fraction=0", f"train.checkpoint_dir={tmp}/checkpoints", "text.encoder=all-MiniLM-L6-v2",
            "eval.evaluator_steps=5", "eval.evaluator_render=false", "eval.evaluator_dim=16", "eval.evaluator_depth=1"]
    info = train_evaluator(load_config("demo", sets), quiet=True)
    return info["path"], sets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--evaluator", help="an evaluator file (python main.py train-evaluator)")
    p.add_argument("--preset", default="real")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--data", default=None, help="clip folder (default: the one the evaluator trained on)")
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--sigmas", type=float, nargs="+", default=[0, 1.2, 1.6, 2.0, 2.5, 3.0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--num_captions", type=int, default=32)
    p.add_argument("--checkpoint", default=None, help="also score this model's clips of the same captions, sharpened")
    p.add_argument("--amounts", type=float, nargs="+", default=[0, 0.5, 1, 2], help="unsharp-mask amounts")
    p.add_argument("--radius", type=float, default=1.0, help="the unsharp mask's Gaussian sigma, pixels")
    p.add_argument("--sample_steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data, a 5-step evaluator: checks the script")
    args = p.parse_args()
    preset, overrides, path = args.preset, list(args.overrides), args.evaluator
    if args.smoke:
        args.sigmas, args.draws, args.num_captions, args.amounts = [0, 1.0], 1, 4, [0, 1]
        args.sample_steps = args.sample_steps or 2
        if not path:
            path, sets = smoke_setup(tempfile.mkdtemp(prefix="evaluator_blur_"))
            preset, overrides = "demo", sets + overrides
    torch.set_grad_enabled(False)
    if not path:
        sys.exit("--evaluator is required (a file made by `python main.py train-evaluator`)")
    try:
        ev, meta = load_evaluator(path)
        pipe = SignPipeline.from_pretrained(args.checkpoint, text_encoder=False) if args.checkpoint else None
        cfg = pipe.cfg if pipe else load_config(preset, overrides)
        cfg.data.data_dir = args.data or meta.get("data_dir") or cfg.data.data_dir
        check_preprocessing(meta, cfg.data, path, f"--checkpoint {args.checkpoint}" if pipe else
                            " ".join(["--preset", preset, *(f"--set {o}" for o in overrides)]))
        ds = SignDataset(cfg.data, args.split, quiet=True)
    except UserError as e:
        sys.exit(f"error: {e}")
    draws = []
    for seed in range(args.draws):
        names, idx = pick_captions(ds, args.num_captions, seed)
        text = ev.encode_text(embed_captions(meta["text_encoder"], meta["max_length"], names, cfg.data.cache_dir))
        draws.append((names, ds.clips[idx].numpy(), text))
    print(f"{cfg.data.data_dir}, split {args.split}: {args.draws} draws of {len(draws[0][0])} captions; evaluator "
          f"{path}\n| blur sigma (px) | R@1 blurred real / sharp real (draws) | SSIM | PSNR dB | training-free R@1 |\n"
          "|---|---|---|---|---|")
    for sigma in args.sigmas:
        scores = [score_clips(ev, text, real, gaussian_blur(real, sigma), names) for names, real, text in draws]
        print(row(f"{sigma:g}", scores), flush=True)
    if pipe:
        sharpened(pipe, ev, draws, args, cfg.data.cache_dir)
    return 0


def sharpened(pipe: SignPipeline, ev, draws: list, args, cache_dir: str) -> None:
    """The second table: the checkpoint's clips of each draw's captions, unsharp-masked by each amount."""
    settings = pipe.settings(**({"steps": args.sample_steps} if args.sample_steps else {}))
    generated = []
    for seed, (names, _, _) in enumerate(draws):
        text = embed_captions(pipe.cfg.text.encoder, pipe.cfg.text.max_length, names, cache_dir)
        generated.append(generate_clips(pipe, text, names, settings, 1, seed, 16, False)[0])  # (K, T, H, W, 3)
    print(f"\n{args.checkpoint} ({settings.steps} sampler steps, guidance {settings.guidance:g}), unsharp mask of "
          f"sigma {args.radius:g} px\n| unsharp amount | R@1 generated / real (draws) | SSIM | PSNR dB | "
          "training-free R@1 |\n|---|---|---|---|---|")
    for amount in args.amounts:
        scores = [score_clips(ev, text, real, unsharp(gen, args.radius, amount), names)
                  for (names, real, text), gen in zip(draws, generated)]
        print(row(f"{amount:g}", scores), flush=True)


if __name__ == "__main__":
    sys.exit(main())
