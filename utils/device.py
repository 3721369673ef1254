"""Device and precision, decided in one place."""
from __future__ import annotations

import contextlib
import re

import torch

from utils.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 elsewhere
DEVICE_NAME = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")  # what train.device and --device may say


def is_device_name(name: str) -> bool:
    """A device name select_device understands (whether this machine has that device is its own question)."""
    return DEVICE_NAME.fullmatch(name) is not None


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error. Under torchrun, auto and
    cuda mean the local rank's GPU (cuda:LOCAL_RANK), which also becomes the current CUDA device."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): start at "
                            f"most that many processes per node (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if name == "auto":
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"train.device={name!r} but no such CUDA device is available here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"train.device={name!r} but MPS is not available here")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can take now: CUDA's free memory, or Linux's MemAvailable (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def configure_matmul(tf32: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere+ GPUs (train.tf32): ~2x faster fp32, 10-bit mantissa."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 elsewhere unless asked (bf16 slows small matmuls on CPU)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
