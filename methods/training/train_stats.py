"""Numbers about a training run for the TensorBoard logger: per-module norms, noise statistics, timestep buckets,
step timing, memory and device.

Nothing here draws from any random stream except `denoise_panels`, which uses its own torch.Generator, so
computing statistics never changes what training does (resume stays bit-exact).
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from utils.pixels import to_uint8


class StepClock:
    """Wall time of one optimizer step split into named phases: mark(name) adds the time since the last mark."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


# ----- per-module statistics -----

def module_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters by top-level module; numbered children of a ModuleList count separately (blocks.0, blocks.1)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        groups.setdefault(key, []).append(p)
    return groups


def param_counts(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, dict[str, int]]:
    """{module: {total, trainable, frozen}} plus the whole model under "all"."""
    counts = {}
    for key, params in groups.items():
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        counts[key] = {"total": total, "trainable": trainable, "frozen": total - trainable}
    counts["all"] = {k: sum(c[k] for c in counts.values()) for k in ("total", "trainable", "frozen")}
    return counts


def group_norms(tensors: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """L2 norm over all tensors of each group, in one fused pass and one device->host copy."""
    keys = [k for k, ts in tensors.items() if ts]
    flat = [t.detach().float() for k in keys for t in tensors[k]]
    if not flat:
        return {}
    squares = torch.stack(torch._foreach_norm(flat)).double().pow(2).cpu()
    sums, i = {}, 0
    for k in keys:
        n = len(tensors[k])
        sums[k] = float(squares[i:i + n].sum().sqrt())
        i += n
    return sums


def grad_tensors(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, list[torch.Tensor]]:
    return {k: [p.grad for p in ps if p.grad is not None] for k, ps in groups.items()}


def snapshot(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, list[torch.Tensor]]:
    """A copy of the trainable weights (for the update/weight ratio): one extra model's worth of memory, briefly."""
    return {k: [p.detach().clone() for p in ps if p.requires_grad] for k, ps in groups.items()}


def update_ratios(groups: dict[str, list[torch.nn.Parameter]], before: dict[str, list[torch.Tensor]]
                  ) -> dict[str, float]:
    """||w_after - w_before|| / ||w_before|| per module (how far one optimizer step moved it)."""
    deltas = {k: torch._foreach_sub([p.detach() for p in ps if p.requires_grad], before[k]) if before[k] else []
              for k, ps in groups.items()}
    num, den = group_norms(deltas), group_norms(before)
    return {k: num[k] / den[k] for k in num if den.get(k, 0.0) > 0}


def histogram_values(params: list[torch.nn.Parameter], max_values: int = 1_000_000) -> np.ndarray:
    """All weights of a module as float32 numpy, strided down to <= max_values (deterministic, no RNG)."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    stride = max(1, -(-flat.numel() // max_values))
    return flat[::stride].float().cpu().numpy()


# ----- loss, timesteps and noise -----

def timestep_buckets(t: np.ndarray, loss: np.ndarray, num_timesteps: int, n: int = 4) -> dict[str, float]:
    """Mean loss of the samples whose t fell in each of n equal ranges of 0..T-1, e.g. {"t000-012": 0.31}."""
    edges = np.linspace(0, num_timesteps, n + 1).round().astype(int)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (t >= lo) & (t < hi) & np.isfinite(loss)
        if sel.any():
            out[f"t{lo:03d}-{hi - 1:03d}"] = float(loss[sel].mean())
    return out


def schedule_snr_db(diffusion) -> np.ndarray:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t) of the training schedule in dB, for t = 0..T-1."""
    ab = diffusion.schedule.alphas_cumprod.double()
    return (10 * torch.log10(ab / (1 - ab))).numpy()


@torch.no_grad()
def noise_stats(diffusion, out: dict) -> dict[str, float]:
    """Predicted vs true noise (eps space, also under v-prediction) and MSE/MAE of the raw output vs its target."""
    pred, target = out["pred"].detach().float(), out["target"].detach().float()
    x_t, t = out["x_t"].detach().float(), out["t"]
    if diffusion.prediction == "eps":
        eps_hat, eps = pred, target
    else:  # eps = sqrt(1 - ᾱ) x_t + sqrt(ᾱ) v holds for the predicted and the true v alike
        eps_hat = diffusion.predict_x0_eps(x_t, t, pred)[1]
        eps = diffusion.predict_x0_eps(x_t, t, target)[1]
    values = {
        "pred_mean": eps_hat.mean(), "pred_std": eps_hat.std(), "true_mean": eps.mean(), "true_std": eps.std(),
        "cosine_similarity": F.cosine_similarity(eps_hat.flatten(1), eps.flatten(1), dim=1).mean(),
        "eps_mse": (eps_hat - eps).pow(2).mean(),
        "mse": (pred - target).pow(2).mean(), "mae": (pred - target).abs().mean(),
    }
    return dict(zip(values, torch.stack(list(values.values())).tolist()))


@torch.no_grad()
def denoise_panels(model, diffusion, x0: torch.Tensor, text, seed: int, n_t: int = 4, decode=None) -> dict:
    """Noise one clip x0 (1, C, T, H, W) to a few t and let the model predict x0 back (eval mode, own RNG).

    Returns {"t": [...], "loss": [...], "x_t", "x0_pred", "x0"}: the images as uint8 (n_t, T, H, W, 3). decode: a
    latent model's latents -> frames (SignPipeline.decode), so the panels show what the clips would look like; its
    x0 estimate is not clamped to the pixels' [-1, 1].
    """
    T = diffusion.num_timesteps
    t = torch.linspace(max(1, T // 8), T - 1, n_t).round().long().unique().to(x0.device)
    n = t.numel()
    x0 = x0[:1].expand(n, *x0.shape[1:])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    was_training = model.training
    model.eval()
    try:
        out = diffusion.training_losses(model, x0, t, noise, text_tokens=text.tokens[:1].expand(n, -1, -1),
                                        text_mask=text.mask[:1].expand(n, -1), pooled=text.pooled[:1].expand(n, -1))
    finally:
        model.train(was_training)
    x0_pred = diffusion.predict_x0_eps(out["x_t"].float(), t, out["pred"].float(), clip_x0=decode is None)[0]
    image = (lambda x: to_uint8(x)) if decode is None else (lambda x: to_uint8(decode(x.float())))
    return {"t": t.tolist(), "loss": out["loss_per_sample"].tolist(), "x_t": image(out["x_t"]),
            "x0_pred": image(x0_pred), "x0": image(x0)}


# ----- system -----

def rss_mb() -> float:
    """Resident memory of this process now (MiB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def memory_stats(device: torch.device) -> dict[str, float]:
    """Current process memory and the accelerator's, in MiB (keys present only where they apply)."""
    out = {"cpu_rss_mb": rss_mb(), "cpu_peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out.update(gpu_allocated_mb=torch.cuda.memory_allocated(device) / 2**20,
                   gpu_reserved_mb=torch.cuda.memory_reserved(device) / 2**20,
                   gpu_peak_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    elif device.type == "mps":
        out.update(mps_allocated_mb=torch.mps.current_allocated_memory() / 2**20,
                   mps_driver_mb=torch.mps.driver_allocated_memory() / 2**20)
    return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the training device: CUDA max allocated, MPS driver memory, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return peak_rss_mb()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    elif device.type == "mps":
        name = f"Apple MPS ({platform.machine()})"
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{device} ({name}); torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}"


def flat_hparams(config: dict) -> dict:
    """{"section.field": value} with only int/float/str/bool values (tuples joined), for the HParams tab."""
    out = {}
    for section, values in config.items():
        for name, value in values.items():
            out[f"{section}.{name}"] = value if isinstance(value, (int, float, str, bool)) else ", ".join(
                map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out
