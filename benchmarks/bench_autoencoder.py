"""The own frame autoencoder (`python main.py train-autoencoder`) trained for a wall-clock budget: parameters, steps,
s/step, val PSNR / SSIM of the decoded frames, and the latents' mean / std (the scale a diffusion model needs).

By default it reads ../shared/realdev/clips (real sign footage beside the checkout, for development and measurement
only: never copy it into the project, its tests or anything shipped); --data points it at any clip + caption folder.
The clips are decoded with the `real` preset's settings (16 frames per clip, --size pixels) into --cache.

    python benchmarks/bench_autoencoder.py                      # 600 s, 64x64, down 4, on the realdev clips
    python benchmarks/bench_autoencoder.py --down 8 --size 128
    python benchmarks/bench_autoencoder.py --smoke     # seconds on a tiny synthetic folder: checks it runs, measures nothing
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REALDEV = os.path.normpath(os.path.join(ROOT, "..", "shared", "realdev", "clips"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=REALDEV, help=f"clip + caption folder (default: {REALDEV}, dev use only)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds of training (default 600)")
    p.add_argument("--size", type=int, default=64, help="frame size (default 64)")
    p.add_argument("--down", type=int, default=4, choices=(4, 8))
    p.add_argument("--frames", type=int, default=16, help="frames decoded per clip (default 16)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--cache", default=os.path.join(ROOT, "cache"), help="decoded-clip cache (default: cache/)")
    p.add_argument("--out", default=None, help="checkpoints, logs, model folder, strip (default: a temp folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="more config overrides, e.g. --set autoencoder.width=48")
    p.add_argument("--smoke", action="store_true", help="a tiny synthetic folder, 5 s: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        from data.synth import write_dataset

        args.data = os.path.join(tempfile.mkdtemp(prefix="bench_autoencoder_smoke_"), "clips")
        write_dataset(args.data, 6, seed=0, size=32, num_frames=8)
        args.cache = os.path.join(os.path.dirname(args.data), "cache")
        args.budget, args.size, args.frames = 5.0, 16, 4
        args.overrides = ["autoencoder.width=16", "autoencoder.crop=8", *args.overrides]

    import torch

    from methods.evaluation.metrics import psnr, ssim
    from methods.run_config import load_config
    from methods.training.autoencoder import SUFFIX, frames_of, train_autoencoder, uint8_frames
    from dataset import SignDataset
    from models.autoencoder import load_autoencoder

    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench_autoencoder_")
    if os.path.normpath(os.path.abspath(args.data)) == REALDEV:
        print(f"reading {REALDEV}: real clips for development and measurement only (never copied anywhere)")
    overrides = [f"data.data_dir={args.data}", f"data.image_size={args.size}", f"data.num_frames={args.frames}",
                 f"data.cache_dir={args.cache}", f"autoencoder.down={args.down}", "train.exp_name=bench",
                 f"train.checkpoint_dir={out}/checkpoints", f"train.log_dir={out}/logs",
                 "train.checkpoint_every=1000000", "autoencoder.steps=1000000", *args.overrides]
    cfg = load_config("real", overrides)
    ac = cfg.autoencoder
    print(f"autoencoder: down {ac.down}, {ac.latent_channels} latent channels, width {ac.width}, {ac.batch_frames} "
          f"frame groups of {ac.time_down}/step, lr {ac.learning_rate}, kl {ac.kl_weight}, ssim {ac.ssim_weight}; "
          f"{args.size}x{args.size}, {args.budget:.0f} s on {args.threads} threads "
          f"(the decoder-only steps are not run under a time budget)")
    info = train_autoencoder(cfg, budget_s=args.budget, quiet=True)
    print(f"parameters: {info['params'] / 1e6:.2f}M\nsteps: {info['step']} in {info['seconds']:.0f} s "
          f"({info['s_per_step']:.2f} s/step)\n{info['scored_on']} ({info['frames']} frames): PSNR "
          f"{info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}\nlatents: mean {info['latent_mean']:.3f}, std "
          f"{info['latent_std']:.3f} (scaling factor {1 / info['latent_std']:.3f}), roughness "
          f"{info['latent_roughness']:.2f} (neighbours' difference / spread)")

    # an independent check: the saved folder through load_autoencoder, scored by `evaluate`'s metrics
    model = load_autoencoder(type(ac)(kind="own", path=info["path"]))
    val = SignDataset(cfg.data, "val", quiet=True)
    val = val if len(val) else SignDataset(cfg.data, "train", quiet=True)
    g = model.time_down  # frames per group (2: the autoencoder codes frame pairs)
    total = len(val) * val.clips.shape[1] // g
    index = torch.linspace(0, total - 1, min(total, 256 // g)).round().long()
    with torch.no_grad():
        x = frames_of(val, index, g)
        real = uint8_frames(x, g)
        z = model.encode(x)
        fake = uint8_frames(model.decode(z), g)
        # what a sampler's imperfect latents do to the frames: the same latents with noise of 0.2 x their std
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
        noisy = uint8_frames(model.decode(z + 0.2 * z.std() * noise), g)
    print(f"check (saved folder, metrics.py): PSNR {psnr(real, fake):.2f} dB, SSIM {ssim(real, fake).mean():.4f}")
    print(f"robustness (latents + 0.2 std noise, decoded): PSNR {psnr(real, noisy):.2f} dB, SSIM "
          f"{ssim(real, noisy).mean():.4f}")
    print(f"model: {info['path']}\nstrip: {info['strip']}\nlogs: {os.path.join(out, 'logs', 'bench' + SUFFIX)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
