"""The clip store at scale: cold build, warm start-up, peak resident memory over an epoch and clips/s delivered, for
data sets of several sizes (each measured in a fresh process, so start-up and peak memory are that size's alone).

    python benchmarks/bench_data.py [--sizes 10000 100000] [--frames 8] [--size 32] [--batch 8] [--dir DIR] [--smoke]

--smoke: one folder of 16 clips of 4 x 16 x 16 in batches of 4: checks the script in seconds, measures nothing.

The clips are small synthetic GIFs: 64 distinct renders of the synthetic signer, each file made unique by a GIF
comment extension holding its number (different bytes, so every file is hashed, decoded and stored as its own row,
as real clips would be). Folders are built once under --dir (default a temp folder) and reused by later runs.
Targets (issue 12): peak RSS independent of the clip count (within 200 MB from 10k to 100k clips), warm start-up
<= 10 s, delivery >= 10x what the demo trainer consumes (1.95 steps/s x batch 8 = 15.6 clips/s on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEMO_CLIPS_PER_S = 1.95 * 8  # the demo trainer's consumption on 2 CPU cores (README: steps/s x batch)

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
import torch
from config import DataConfig
from dataset import SignDataset
imported = time.perf_counter() - t0
cfg = DataConfig(data_dir={data!r}, cache_dir={cache!r}, num_frames={frames}, image_size={size}, val_fraction=0.0)
t0 = time.perf_counter()
ds = SignDataset(cfg, "train", quiet=True)
start = time.perf_counter() - t0
rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
for i in range(0, len(order), {batch}):
    videos, ids = ds.get_batch(order[i:i + {batch}])
epoch = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(clips=len(ds), start_s=start, import_s=imported, epoch_s=epoch, clips_per_s=len(ds) / epoch,
                      peak_rss_mb=peak, rss_after_start_mb=rss_start)))
"""


def build_folder(folder: str, n: int, frames: int, size: int) -> None:
    """n unique GIF + caption pairs (idempotent: an existing complete folder is kept)."""
    from PIL import Image

    from data.synth import render_clip, draw_captions

    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return
    os.makedirs(folder, exist_ok=True)
    bases = []
    for k, words in enumerate(draw_captions(min(64, n), seed=0)):
        frames_k = render_clip(words, size=size, num_frames=frames, variation_seed=k)
        bases.append((" ".join(words), [Image.fromarray(f) for f in frames_k]))
    encoded = []
    for caption, images in bases:
        buf = io.BytesIO()
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
        encoded.append((caption, buf.getvalue()))
    for i in range(n):
        caption, gif = encoded[i % len(encoded)]
        comment = f"clip {i}".encode()  # a comment extension before the trailer: other bytes, the same frames
        with open(os.path.join(folder, f"c{i:06d}.gif"), "wb") as f:
            f.write(gif[:-1] + b"\x21\xfe" + bytes([len(comment)]) + comment + b"\x00\x3b")
        with open(os.path.join(folder, f"c{i:06d}.txt"), "w", encoding="utf-8") as f:
            f.write(caption)
    open(marker, "w").close()


def measure(data: str, cache: str, args) -> dict:
    code = MEASURE.format(root=ROOT, data=data, cache=cache, frames=args.frames, size=args.size, batch=args.batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dir", default=None, help="where the folders and caches live (default: a temp folder)")
    p.add_argument("--smoke", action="store_true", help="16 tiny clips: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.sizes, args.frames, args.size, args.batch = [16], 4, 16, 4
    root = args.dir or tempfile.mkdtemp(prefix="t2s_bench_data_")
    print(f"clips of {args.frames}x{args.size}x{args.size}, batch {args.batch}, under {root}")
    print("| clips | folder build s | cold start s (decode + store) | warm start s | epoch clips/s | "
          "x demo need | peak RSS MB (warm run) | store MB |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        data, cache = os.path.join(root, f"data_{n}"), os.path.join(root, f"cache_{n}")
        t0 = time.perf_counter()
        build_folder(data, n, args.frames, args.size)
        build_s = time.perf_counter() - t0
        cold = measure(data, cache, args)
        warm = measure(data, cache, args)
        store_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cache) for f in fs) / 2**20
        print(f"| {n} | {build_s:.0f} | {cold['start_s']:.1f} | {warm['start_s']:.2f} | {warm['clips_per_s']:.0f} | "
              f"{warm['clips_per_s'] / DEMO_CLIPS_PER_S:.0f}x | {warm['peak_rss_mb']:.0f} | {store_mb:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
