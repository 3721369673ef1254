"""Training throughput and sampling latency of the presets and every architecture's GPU size, against the measured
matmul peak of the device the script runs on.

    python benchmarks/bench_gpu.py [--device cuda] [--configs tinyfusion,demo,...] [--batches 1,2,4,8,16,32]
        [--steps 5] [--warmup 2] [--compile] [--out FILE.json]
    python benchmarks/bench_gpu.py --device cpu --configs demo --batches 1,8 --steps 3   # the CPU figures
    python benchmarks/bench_gpu.py --smoke [--device cuda]   # seconds: a test-size model, checks the script runs

--smoke runs the "smoke" config (the demo preset at UNet3D-Test, 4 x 16 x 16) at batch 1 for one step, with
a short matmul peak: on the CPU by default, so it runs on machines without a GPU; its figures mean nothing.

A training step is the trainer's: bf16 autocast (fp32 on CPU, as train.precision=auto), diffusion.training_losses
with the config's objective and weighting, backward, gradient clipping, AdamW (fused on CUDA) and the EMA update;
inputs are random clips and random caption embeddings of the preset's text encoder width (DistilBERT's 768 where
its files are absent), so no data or text encoder weights are needed. Each config runs with its preset settings
and with activation checkpointing switched (and, for VideoDiT,
with frame chunking off); a batch that runs out of memory ends that variant's batch sweep.

Model FLOPs are counted once per config by torch.utils.flop_counter on a meta-device forward + backward of one
clip without activation checkpointing (recomputation is not useful work), times the batch. MFU = model FLOP/s /
the peak this script measures first: the best dense bf16 matmul rate (fp32 on CPU) over a few square sizes.
Sampling: one clip, the config's sampler with 25 DDIM steps and classifier-free guidance 5 (two passes per step).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only the encoder's width is wanted: never wait on the network

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from methods.run_config import load_config  # noqa: E402
from methods.training.experiment import estimate_memory  # noqa: E402
from diffusion import GaussianDiffusion  # noqa: E402
from methods.sampling import SamplingSettings, sample_clips  # noqa: E402
from models import build_video_model, model_input_shape  # noqa: E402
from models.registry import MODELS  # noqa: E402
from models.text_encoder import TextEmbeddings, encoder_dim  # noqa: E402
from utils.device import autocast, autocast_dtype, available_memory, configure_matmul  # noqa: E402

TEXT_LEN = 32
# name -> (preset, overrides): the presets as users run them, and each family's GPU size at 16 x 64 x 64
CONFIGS = {
    "tinyfusion": ("tinyfusion", []),
    "demo": ("demo", []),
    "real-large": ("real-large", []),
    **{arch: ("tinyfusion", [f"model.arch={arch}", "model.pretrained="])
       for arch in ("UNet3D-B", "ViT3D-B/2x4", "DiT3D-B/2x4", "ViViT-B/16")},
}
# --smoke only: a pixel and a latent config (the real preset's latent grid: 8 channels, 2 frames of 4x4 here)
SMOKE = {"smoke": ("demo", ["model.arch=UNet3D-Test", "data.image_size=16", "data.num_frames=4"]),
         "smoke-latent": ("real", ["model.arch=UNet3D-Test", "data.image_size=16", "data.num_frames=4",
                                   "autoencoder.crop=0"])}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, smoke: bool = False) -> tuple[float, str]:
    """Best dense matmul FLOP/s over a few square sizes: bf16 on CUDA, fp32 on CPU (its bf16 path is slower)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = (4096, 8192, 16384) if device.type == "cuda" else (512, 1024, 2048)
    sizes, seconds = ((256,), 0.0) if smoke else (sizes, 1.0)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while reps < 5 or time.perf_counter() - t0 < seconds:  # at least a second of matmuls: CPU clocks settle
            a @ b
            reps += 1
            if reps % 5 == 0:
                sync(device)
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best, str(dtype).replace("torch.", "")


def config_for(name: str, variant: dict, batch: int, compile_: bool):
    preset, overrides = {**CONFIGS, **SMOKE}[name]
    cfg = load_config(preset, overrides + [f"{k}={v}" for k, v in variant.items()])
    cfg.train.batch_size, cfg.train.compile = batch, compile_
    return cfg


@functools.lru_cache
def encoder_width(name: str) -> int:
    try:
        return encoder_dim(name)
    except Exception:
        return 768


def text_dim(cfg) -> int:
    """The width of the preset's text encoder (384 for the packaged MiniLM), or DistilBERT's 768 where its files are
    not here (a GPU machine without the Hugging Face cache)."""
    return encoder_width(cfg.text.encoder)


def inputs(cfg, batch: int, device):
    g, dim = torch.Generator().manual_seed(0), text_dim(cfg)
    C, F, S = model_input_shape(cfg)  # pixels, or a latent preset's latent grid
    clips = torch.rand(batch, C, F, S, S, generator=g) * 2 - 1
    text = TextEmbeddings(torch.randn(batch, TEXT_LEN, dim, generator=g),
                          torch.ones(batch, TEXT_LEN, dtype=torch.bool), torch.randn(batch, dim, generator=g))
    return clips.to(device), text.to(device)


def model_flops(cfg) -> float:
    """Forward + backward FLOPs of one clip without activation checkpointing (meta device: shapes only)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.grad_checkpointing = False
    with torch.device("meta"):
        model = build_video_model(cfg, text_dim(cfg))
        clips, text = inputs_meta(cfg)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        with FlopCounterMode(display=False) as counter:
            out = diffusion.training_losses(model, clips, torch.zeros(1, dtype=torch.long), torch.empty_like(clips),
                                            text_tokens=text.tokens, text_mask=text.mask, pooled=text.pooled,
                                            drop=torch.zeros(1, dtype=torch.bool))
            out["loss"].backward()
    return float(counter.get_total_flops())


def inputs_meta(cfg):
    (C, F, S), dim = model_input_shape(cfg), text_dim(cfg)
    return (torch.empty(1, C, F, S, S),
            TextEmbeddings(torch.empty(1, TEXT_LEN, dim), torch.ones(1, TEXT_LEN, dtype=torch.bool),
                           torch.empty(1, dim)))


def step_memory(cfg) -> int:
    """The trainer's estimate of a training step's bytes (methods.training.experiment), from a meta-device model."""
    with torch.device("meta"):
        model = build_video_model(cfg, text_dim(cfg))
    return estimate_memory(cfg, model)


def time_training(cfg, batch: int, device, steps: int, warmup: int) -> dict:
    """Seconds per training step and peak memory of cfg at `batch` clips (the trainer's step, minus data loading)."""
    torch.manual_seed(0)
    model = build_video_model(cfg, text_dim(cfg)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = torch.compile(model) if cfg.train.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cfg.train.fused_adamw and device.type == "cuda" or None)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    amp = autocast_dtype(device, cfg.train.precision)
    clips, text = inputs(cfg, batch, device)
    gen = torch.Generator(device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device, generator=gen)
        noise = torch.randn(clips.shape, device=device, generator=gen)
        with autocast(device, amp):
            loss = diffusion.training_losses(net, clips, t, noise, text_tokens=text.tokens, text_mask=text.mask,
                                             pooled=text.pooled, drop=torch.zeros(batch, dtype=torch.bool,
                                                                                  device=device))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1e-3)
    sync(device)
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"s_per_step": seconds, "peak_gb": peak, "params_m": sum(p.numel() for p in params) / 1e6}


def time_sampling(cfg, device, steps: int = 25, guidance: float = 5.0) -> float:
    """Seconds to sample one clip (guided: two model passes per step), after one untimed run; a latent preset's
    in its latent grid, without decoding (no trained autoencoder here)."""
    torch.manual_seed(0)
    model = build_video_model(cfg, text_dim(cfg)).to(device).eval()
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    settings = SamplingSettings.resolve(cfg.diffusion, steps=steps, guidance=guidance, sampler="ddim")
    _, text = inputs(cfg, 1, device)
    _, frames, size = model_input_shape(cfg)
    run = lambda: sample_clips(model, diffusion, text, settings, [0], num_frames=frames, size=size,  # noqa: E731
                               device=device, clip_x0=cfg.autoencoder.kind == "none")
    run()
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - t0


def variants(name: str) -> list[dict]:
    """The config as its preset has it, activation checkpointing switched, and (VideoDiT) frame chunking off."""
    cfg = config_for(name, {}, 1, False)
    family = MODELS[cfg.model.arch][0]
    out = [{}]
    if "grad_checkpointing" in family.OPTIONS:
        out.append({"model.grad_checkpointing": str(not cfg.model.grad_checkpointing).lower()})
    if "frame_chunk_size" in family.OPTIONS and cfg.model.frame_chunk_size not in (0, cfg.data.num_frames):
        out.append({"model.frame_chunk_size": cfg.data.num_frames})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda where there is one (cpu with --smoke)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--batches", default="1,2,4,8,16,32")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="train.compile=true (the first steps compile)")
    p.add_argument("--no-sampling", dest="sampling", action="store_false")
    p.add_argument("--out", default=None, help="also write the rows as JSON")
    p.add_argument("--smoke", action="store_true", help="the smoke config at batch 1, one step")
    args = p.parse_args()
    if args.smoke:
        args.configs, args.batches, args.steps, args.warmup = ",".join(SMOKE), "1", 1, 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    configure_matmul(True)
    peak, peak_dtype = matmul_peak(device, args.smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}: measured {peak_dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    print("| config | variant | batch | params (M) | clips/s | step (s) | TFLOP/s | MFU | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for cname in args.configs.split(","):
        if cname not in CONFIGS and not (args.smoke and cname in SMOKE):
            raise SystemExit(f"--configs: {cname!r} is not one of {', '.join(CONFIGS)}")
        flops_per_clip = model_flops(config_for(cname, {}, 1, False))
        for variant in variants(cname):
            label = ", ".join(f"{k.split('.')[1]}={v}" for k, v in variant.items()) or "preset"
            for batch in map(int, args.batches.split(",")):
                cfg = config_for(cname, variant, batch, args.compile)
                need, free = step_memory(cfg), available_memory(device)
                if free is not None and need > free:  # a CPU run past RAM is killed, not an OutOfMemoryError
                    print(f"| {cname} | {label} | {batch} | needs ~{need / 2**30:.1f} GB (estimate), "
                          f"{free / 2**30:.1f} GB free |||||||")
                    break
                try:
                    r = time_training(cfg, batch, device, args.steps, args.warmup)
                except torch.OutOfMemoryError:
                    print(f"| {cname} | {label} | {batch} | out of memory |||||||")
                    break
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                tflops = flops_per_clip * batch / r["s_per_step"] / 1e12
                memory = f"{r['peak_gb']:.2f}" if device.type == "cuda" else "-"  # no per-run peak on CPU
                row = {"config": cname, "variant": label, "batch": batch, **r, "clips_per_s": batch / r["s_per_step"],
                       "tflops": tflops, "mfu": tflops * 1e12 / peak}
                rows.append(row)
                print(f"| {cname} | {label} | {batch} | {r['params_m']:.1f} | {row['clips_per_s']:.2f} | "
                      f"{r['s_per_step']:.3f} | {tflops:.3g} | {row['mfu']:.1%} | {memory} |", flush=True)
        if args.sampling:
            steps = 2 if args.smoke else 25
            s = time_sampling(config_for(cname, {}, 1, False), device, steps=steps)
            rows.append({"config": cname, "sampling_s_per_clip": s})
            print(f"| {cname} | sampling: {steps} DDIM steps, guidance 5, one clip | 1 | | | {s:.3f} s | | | |",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "peak_flops": peak, "peak_dtype": peak_dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
