"""A preset's speed (the demo's by default): full training step vs bare forward+backward, data path throughput, peak
memory.

    python benchmarks/bench_demo.py [--preset demo] [--steps 30] [--warmup 3] [--clips 600] [--data DIR] \
        [--set field=value ...] [--smoke]

--smoke: seconds, not minutes (2 timed steps after 1, 16 clips, 64 get_batch draws), to check the script runs; give
tiny --set overrides too (tests/test_benchmarks.py passes a tiny model and a local text encoder).

Writes nothing outside a temp folder (besides the data cache of DIR, if it is new). Prints its figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from methods.run_config import load_config  # noqa: E402
from dataset import SignDataset  # noqa: E402
from methods.training.trainer import Trainer  # noqa: E402
from data.synth import write_dataset  # noqa: E402
from methods.training.train_stats import peak_rss_mb  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="steps run before timing (allocator, first calls)")
    p.add_argument("--clips", type=int, default=600, help="clips of the synthetic set written when --data is not given")
    p.add_argument("--data", default=None, help="clip folder (default: a fresh synthetic set at the preset's size)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--smoke", action="store_true", help="the smallest run: checks the script, not the speed")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.clips = 2, 1, 16
    draws = 64 if args.smoke else 4096
    tmp = tempfile.mkdtemp(prefix="t2s_bench_")
    data = args.data or os.path.join(tmp, "data")
    if not args.data:
        shape = load_config(args.preset, args.overrides).data
        write_dataset(data, args.clips, seed=0, size=max(64, shape.image_size), num_frames=max(24, shape.num_frames))
    overrides = [f"data.data_dir={data}", f"data.cache_dir={os.path.join(tmp, 'cache')}",
                 f"train.checkpoint_dir={tmp}/ck", f"train.log_dir={tmp}/logs", f"train.sample_dir={tmp}/s",
                 "train.sample_every=0", "train.max_steps=100000", "train.checkpoint_every=100000",
                 *args.overrides]
    cfg = load_config(args.preset, overrides)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {cfg.model.arch}, "
          f"batch {cfg.train.batch_size}, clip {cfg.data.num_frames}x{cfg.data.image_size}x{cfg.data.image_size}")

    t0 = time.perf_counter()
    SignDataset(cfg.data, "train", quiet=True)  # first pass: decode + write cache
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = SignDataset(cfg.data, "train", quiet=True)
    cached_s = time.perf_counter() - t0
    idx = torch.randint(0, len(ds), (draws,))
    t0 = time.perf_counter()
    for i in range(0, len(idx), cfg.train.batch_size):
        ds.get_batch(idx[i:i + cfg.train.batch_size])
    batch_s = time.perf_counter() - t0
    print(f"data: first load {len(ds) / decode_s:.0f} clips/s (decode), cached load {len(ds) / cached_s:.0f} "
          f"clips/s, get_batch {len(idx) / batch_s:.0f} clips/s")

    trainer = Trainer(cfg, quiet=True)
    trainer.train(stop_at=args.warmup)  # warm-up (allocator, first-call overheads)
    t0 = time.perf_counter()
    trainer.save("bench.pt")
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train(stop_at=args.warmup + args.steps)
    full_s = (time.perf_counter() - t0 - save_s) / args.steps  # train() ends with one latest.pt write

    videos, text, *_ = trainer.next_batch()  # + this rank's rows, the global batch size, whether they count
    model, diffusion = trainer.model, trainer.diffusion
    t = diffusion.sample_timesteps(videos.shape[0], generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(videos)
    drop = torch.zeros(videos.shape[0], dtype=torch.bool)
    times = []
    for i in range(args.steps + args.warmup):
        t0 = time.perf_counter()
        out = diffusion.training_losses(model, videos, t, noise, text_tokens=text.tokens, text_mask=text.mask,
                                        pooled=text.pooled, drop=drop)
        out["loss"].backward()
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    bare_s = sum(times) / len(times)
    print(f"train step (data + fwd/bwd + clip + AdamW + EMA + logging): {full_s * 1000:.0f} ms = "
          f"{1 / full_s:.2f} steps/s")
    print(f"bare forward+backward, same batch: {bare_s * 1000:.0f} ms = {1 / bare_s:.2f} steps/s")
    print(f"trainer overhead: {100 * (full_s / bare_s - 1):+.1f}% (target <= 10%)")
    print(f"checkpoint write: {save_s * 1000:.0f} ms; peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
