"""TensorBoard logging overhead at the default intervals, as a share of the demo preset's training step time.

    python benchmarks/bench_logging.py [--steps 10] [--rounds 3] [--clips 48] [--data DIR] [--set field=value ...]
        [--smoke]

--smoke: seconds, not minutes (blocks of 2 steps, one round, 8 clips, 1-step warm-ups), to check the script runs;
give tiny --set overrides too (tests/test_benchmarks.py passes a tiny model and a local text encoder).

One trainer (demo preset, a small synthetic data set in a temp folder; checkpoint writes skipped) alternates
blocks of `--steps` optimizer steps with logging off (train.tensorboard=false) and on at the default intervals.
Two figures:
  direct  the wall time spent inside the logger (its own clock, TBLogger.spent_total) per step, over the step time
          with logging off (the fastest off block: the least disturbed by other processes). Rare events (per-module stats every stats_every, histograms every hist_every, sample
          GIFs + noise visualization every sample_every) do not fire in a few dozen steps, so each is timed in
          blocks where it fires every step (samples: the logger's calls timed directly) and amortized over its
          interval. This is the reported figure: it is robust to other processes sharing the CPU.
  A/B     best-of-N wall time per step, on vs off (also counts the event writer's background thread); noisy on a
          shared CPU, where other processes can slow any block by more than logging costs.
The logger's once-per-run work (opening the writer, 06/08/14/15 at start, closing) is timed once and left out of
the per-step figures (every block is a train() call; a real run does it once).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from methods.run_config import load_config  # noqa: E402
from methods.training.trainer import Trainer  # noqa: E402
from data.synth import write_dataset  # noqa: E402
from methods.training.tb_logger import TBLogger  # noqa: E402


def block(trainer: Trainer, steps: int, **train_fields) -> dict[str, float]:
    """Per-step wall seconds and seconds inside the logger over `steps` optimizer steps, with the given train.*
    fields set for this block only."""
    saved = {k: getattr(trainer.cfg.train, k) for k in train_fields}
    for k, v in train_fields.items():
        setattr(trainer.cfg.train, k, v)
    wall = time.perf_counter()
    trainer.train(stop_at=trainer.step + steps)
    wall = time.perf_counter() - wall
    for k, v in saved.items():
        setattr(trainer.cfg.train, k, v)
    return {"wall": wall / steps, "logger": trainer.logger.spent_total / steps}


def open_logger(trainer: Trainer, run_dir: str) -> TBLogger:
    logger = TBLogger(run_dir, trainer.cfg.train, trainer.total_steps)
    logger.start(trainer.step, trainer.epoch, trainer.cfg.to_dict(), trainer.model, trainer.diffusion,
                 trainer.device)
    return logger


def time_start_close(trainer: Trainer, run_dir: str, repeats: int = 3) -> float:
    """Seconds of the logger's once-per-train() work: opening the writer, what start() writes, closing."""
    times = []
    for _ in range(repeats):
        logger = open_logger(trainer, run_dir)
        logger.close()
        times.append(logger.spent_total)
    return statistics.median(times)


def time_sample_logging(trainer: Trainer, run_dir: str, repeats: int = 3) -> float:
    """Seconds the logger spends at one sample step: GIFs + strips + captions, and the noise visualization."""
    tc, dc = trainer.cfg.train, trainer.cfg.data
    logger = open_logger(trainer, run_dir)
    # Random pixels: the worst case for GIF size and encoding time (real samples compress better).
    clips = np.random.default_rng(0).integers(0, 256, (len(tc.sample_prompts), dc.num_frames, dc.image_size,
                                                      dc.image_size, 3), dtype=np.uint8)
    videos, ids = trainer.data.get_batch(torch.arange(1))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logger.samples(trainer.step, clips, list(tc.sample_prompts))
        logger.denoising(trainer.step, trainer.model, videos, trainer.text.select(ids))
        times.append(time.perf_counter() - t0)
    logger.close()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="rounds of off/on/stats/hist blocks (medians reported)")
    p.add_argument("--clips", type=int, default=48, help="synthetic clips in the temp data set")
    p.add_argument("--data", default=None, help="clip folder (default: a fresh synthetic set of --clips clips)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--smoke", action="store_true", help="the smallest run: checks the script, not the overhead")
    args = p.parse_args()
    warmup = 1 if args.smoke else 3
    if args.smoke:
        args.steps, args.rounds, args.clips = 2, 1, 8
    tmp = tempfile.mkdtemp(prefix="t2s_benchlog_")
    data = args.data or os.path.join(tmp, "data")
    if not args.data:
        write_dataset(data, args.clips, seed=0, size=32, num_frames=16)
    cfg = load_config("demo", [f"data.data_dir={data}", f"data.cache_dir={tmp}/cache",
                                f"train.checkpoint_dir={tmp}/ck", f"train.log_dir={tmp}/logs",
                                f"train.sample_dir={tmp}/s", "train.max_steps=100000", *args.overrides])
    tc = cfg.train
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, arch {cfg.model.arch}, batch "
          f"{tc.batch_size}, clip {cfg.data.num_frames}x{cfg.data.image_size}x{cfg.data.image_size}, intervals: "
          f"log_every {tc.log_every}, stats_every {tc.stats_every}, hist_every {tc.hist_every}, "
          f"sample_every {tc.sample_every}")
    trainer = Trainer(cfg, quiet=True)
    trainer.save = lambda *names: None  # checkpoint writes are not logging: keep them out of every block
    trainer.write_samples = lambda: []  # sample generation is not logging; the logger's part is timed below
    block(trainer, warmup, tensorboard=False)  # warm-up: allocator, first-call overheads, tensorboard import
    block(trainer, warmup)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": [], "stats": [], "hist": []}
    for _ in range(args.rounds):
        runs["off"].append(block(trainer, args.steps, tensorboard=False))
        runs["on"].append(block(trainer, args.steps))
        runs["stats"].append(block(trainer, args.steps, stats_every=1))
        runs["hist"].append(block(trainer, args.steps, hist_every=1))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "logger")}
           for name, rs in runs.items()}
    once = time_start_close(trainer, os.path.join(tmp, "logs", "once"))
    sample_event = time_sample_logging(trainer, os.path.join(tmp, "logs", "samples"))
    stats_event = max(0.0, med["stats"]["logger"] - med["on"]["logger"])
    hist_event = max(0.0, med["hist"]["logger"] - med["on"]["logger"])

    step_s = min(r["wall"] for r in runs["off"])
    parts = {f"scalars, noise stats, timing (every step / every {tc.log_every})":
             med["on"]["logger"] - once / args.steps,
             f"per-module stats, {stats_event * 1000:.1f} ms every {tc.stats_every} steps":
             stats_event / tc.stats_every if tc.stats_every else 0.0,
             f"histograms + loss-vs-t plot, {hist_event * 1000:.1f} ms every {tc.hist_every} steps":
             hist_event / tc.hist_every if tc.hist_every else 0.0,
             f"sample GIFs + noise visualization, {sample_event * 1000:.1f} ms every {tc.sample_every} steps":
             sample_event / tc.sample_every if tc.sample_every else 0.0}
    blocks = ", ".join(f"{r['wall'] * 1000:.0f}" for r in runs["off"])
    print(f"step time with logging off: {step_s * 1000:.1f} ms wall (fastest of blocks {blocks}); logger "
          f"start+close once per run: {once * 1000:.1f} ms")
    for name, seconds in parts.items():
        print(f"  {name}: {seconds * 1000:.3f} ms/step = {100 * seconds / step_s:.3f}%")
    direct = 100 * sum(parts.values()) / step_s
    rare = sum(list(parts.values())[1:])
    on_s = min(r["wall"] for r in runs["on"]) - once / args.steps
    ab = 100 * (on_s + rare - step_s) / step_s
    print(f"A/B check, best-of-{args.rounds} wall time per step: off {step_s * 1000:.1f} ms, on {on_s * 1000:.1f} ms "
          f"-> {ab:+.2f}% with the rare events amortized (noisy when other processes share the CPU)")
    print(f"logging overhead at default intervals: {direct:.2f}% of step time (target <= 5%)")


if __name__ == "__main__":
    main()
