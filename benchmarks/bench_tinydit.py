"""Full-size TinyDiT-D14/2 video model: peak memory, time per training step, FLOPs and MFU.

    python benchmarks/bench_tinydit.py [--steps 1] [--warmup 0] [--device cpu|cuda] [--dtype fp32|bf16]
        [--no-checkpointing] [--frames 16] [--size 64] [--batch 1] [--chunk 4] [--pretrained PATH]
        [--no-optimizer] [--peak-tflops X] [--smoke]

--smoke: the DiT-Test/4 size at 4 x 16 x 16 in fp32, one step: checks the script in seconds, measures nothing.

One training step = forward, MSE loss against the noise, backward and (unless --no-optimizer) an AdamW step, on
random clips and random caption embeddings (768-dim, 32 tokens, like DistilBERT). The trainer's EMA copy is not
kept here: it adds 4 bytes per parameter.

FLOPs are counted from the shapes each layer sees in one forward pass of a meta-device copy (no memory): 2 per
multiply-add for every Linear / Conv2d, plus 4*N*M*D for each attention's two matmuls (N queries, M keys, width D),
grouped into spatial blocks, temporal attention, cross-attention and embedders + final layer. A training step is
counted as 3 forward passes (backward = 2x forward); activation checkpointing recomputes the blocks' forward once
more, which costs time but is not counted as useful work. MFU = (3 x forward FLOPs / seconds per step) / peak; the
default peaks are measured dense matmul rates: H100 bf16 798 TFLOP/s (H200 790), this CPU 501 GFLOP/s bf16 and
175 GFLOP/s fp32 (see the project's performance facts); fp32 on CUDA is also rated against the bf16 peak unless
--peak-tflops is given. Peak memory: torch.cuda.max_memory_allocated on CUDA,
the process's peak resident set (ru_maxrss) on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models import build_model  # noqa: E402
from models.blocks import Attention, CrossAttention, TemporalAttention, TextCrossAttention  # noqa: E402
from methods.training.train_stats import peak_rss_mb, rss_mb  # noqa: E402

PEAK_FLOPS = {("cpu", "fp32"): 175e9, ("cpu", "bf16"): 501e9, ("cuda", "bf16"): 798e12, ("cuda", "fp32"): 798e12}


def _group(name: str) -> str:
    if ".temporal_attn" in name:
        return "temporal attention"
    if ".cross_attn" in name:
        return "cross-attention"
    if name.startswith("blocks."):
        return "spatial blocks (attention, MLP, adaLN)"
    return "embedders + final layer"


def forward_flops(arch: str, batch: int, frames: int, size: int, text_len: int = 32, text_dim: int = 768,
                  **model_kwargs) -> dict[str, float]:
    """FLOPs of one forward pass by layer group, from the shapes each layer sees (meta device: no memory)."""
    with torch.device("meta"):
        model = build_model(arch, size, text_dim, **model_kwargs)
        x = torch.empty(batch, 3, frames, size, size)
        t = torch.zeros(batch)
        tokens, pooled = torch.empty(batch, text_len, text_dim), torch.empty(batch, text_dim)
        mask = torch.ones(batch, text_len, dtype=torch.bool)
    counts: dict[str, float] = defaultdict(float)

    def hook(name):
        def count(module, inputs, output):
            if isinstance(module, nn.Linear):
                counts[_group(name)] += 2 * output.numel() * module.in_features
            elif isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                counts[_group(name)] += 2 * output.numel() * module.in_channels * k
            elif isinstance(module, TextCrossAttention):
                b, tt, n, d = inputs[0].shape
                counts[_group(name)] += 4 * b * tt * n * inputs[2].shape[1] * d  # q k^T and attn v
            elif isinstance(module, CrossAttention):
                b, n, d = inputs[0].shape
                counts[_group(name)] += 4 * b * n * inputs[1].shape[1] * d
            elif isinstance(module, TemporalAttention):
                b, tt, n, d = inputs[0].shape
                counts[_group(name)] += 4 * b * n * tt * tt * d  # each position attends over the frames
            elif isinstance(module, Attention):
                b, n, d = inputs[0].shape
                counts[_group(name)] += 4 * b * n * n * d
        return count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, Attention, CrossAttention)):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(x, t, tokens, mask, pooled)
    return dict(counts)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mb() / 1024


def current_memory_gb(device: torch.device) -> float:
    """Memory in use now: allocated CUDA memory, or the resident set of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    return rss_mb() / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="TinyDiT-D14/2")
    p.add_argument("--steps", type=int, default=1, help="timed training steps")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (use 2+ on GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="bf16 = autocast; weights stay fp32")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=4, help="frames per spatial chunk (model.frame_chunk_size)")
    p.add_argument("--pretrained", default="", help="TinyDiT file to load (default: random init)")
    p.add_argument("--no-optimizer", dest="optimizer", action="store_false", help="time forward+backward only")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: measured peaks)")
    p.add_argument("--smoke", action="store_true", help="a test-size model, one step: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.arch, args.frames, args.size, args.chunk, args.dtype, args.steps, args.warmup = (
            "DiT-Test/4", 4, 16, 2, "fp32", 1, 0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    kwargs = dict(frame_chunk_size=args.chunk, grad_checkpointing=args.checkpointing)
    flops = forward_flops(args.arch, args.batch, args.frames, args.size, **kwargs)
    fwd = sum(flops.values())
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads") + f", {args.dtype}, checkpointing {args.checkpointing}, "
          f"chunk {args.chunk}, batch {args.batch} x {args.frames} x {args.size} x {args.size}")
    for group, n in flops.items():
        print(f"  forward {group:40s} {n / 1e12:8.3f} TFLOP")
    print(f"  forward total {fwd / 1e12:.3f} TFLOP; training step (3x forward) {3 * fwd / 1e12:.3f} TFLOP")

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(args.arch, args.size, 768, **kwargs)
    if args.pretrained:
        from models.pretrained import load_pretrained

        print(load_pretrained(model, args.pretrained))
    model.to(device).train()
    n_params = sum(q.numel() for q in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.optimizer else None
    print(f"model {args.arch}: {n_params:,} parameters, built in {time.perf_counter() - t0:.1f} s; "
          f"memory after build {peak_memory_gb(device):.2f} GB")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=g).to(device)
    noise = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).float().to(device)
    tokens = torch.randn(args.batch, 32, 768, generator=g).to(device)
    pooled = tokens.mean(1)
    mask = torch.ones(args.batch, 32, dtype=torch.bool, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, fwd_s = [], []
    for i in range(args.warmup + args.steps):
        sync(device)
        before = current_memory_gb(device)
        t0 = time.perf_counter()
        with amp:
            pred = model(x, t, tokens, mask, pooled)
        loss = (pred.float() - noise).pow(2).mean()
        sync(device)
        t1 = time.perf_counter()
        after_fwd = current_memory_gb(device)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        print(f"  step {i + 1}{' (warmup)' if i < args.warmup else ''}: forward {t1 - t0:.2f} s, backward"
              f"{' + AdamW' if optimizer else ''} {t2 - t1:.2f} s, loss {loss.item():.4f}; memory before step "
              f"{before:.2f} GB, after forward {after_fwd:.2f} GB (saved activations {after_fwd - before:.2f} GB), "
              f"peak so far {peak_memory_gb(device):.2f} GB", flush=True)
        if i >= args.warmup:
            step_s.append(t2 - t0)
            fwd_s.append(t1 - t0)
    sec = sum(step_s) / len(step_s)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else PEAK_FLOPS[(device.type, args.dtype)]
    if args.peak_tflops is None and device.type == "cuda" and "H200" in torch.cuda.get_device_name(device):
        peak = 790e12
    achieved = 3 * fwd / sec
    print(f"seconds per step {sec:.2f} ({1 / sec:.4f} steps/s; forward {sum(fwd_s) / len(fwd_s):.2f} s)")
    print(f"achieved {achieved / 1e12:.3f} TFLOP/s of model FLOPs; MFU {100 * achieved / peak:.1f}% of "
          f"{peak / 1e12:g} TFLOP/s peak")
    print(f"peak memory {peak_memory_gb(device):.2f} GB "
          f"({'max_memory_allocated' if device.type == 'cuda' else 'peak RSS of the process'})")


if __name__ == "__main__":
    main()
