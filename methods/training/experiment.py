"""An experiment before step 1: every output place checked writable, the memory a step needs estimated against what
is free, one run at a time (a lock), and the temp files a killed save left behind removed."""
from __future__ import annotations

import contextlib
import copy
import os
import socket
import sys
import time

import torch
import torch.nn as nn

from config import Config
from models.registry import model_input_shape
from utils.atomic import is_temp_file
from utils.device import available_memory, format_bytes
from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
BYTES_PER_PARAM_TRAINING = 20  # fp32 weights + EMA + two AdamW moments + gradients


def saved_activation_values(model, batch: int, frames: int, image_size: int, text_len: int, text_dim: int) -> int:
    """Values autograd keeps from one training forward pass, counted on the meta device (shapes only: no memory, no
    arithmetic), so it holds for every architecture and honours its activation checkpointing. For TinyDiT-D14/2 at
    16x64x64 this counts 44.8 values per token x hidden x block against the 38.7 measured as resident memory
    (benchmarks/bench_tinydit.py): a slight overestimate."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    meta = copy.deepcopy(model, memo).train()  # the weights are never copied: a 340M model costs nothing here
    weights = {id(p) for p in meta.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        base = t if t._base is None else t._base
        if id(base) not in weights and id(base) not in seen:
            seen.add(id(base))
            total += base.numel()
        return t

    with torch.device("meta"):
        args = (torch.empty(batch, model.in_channels, frames, image_size, image_size), torch.zeros(batch),
                torch.empty(batch, text_len, text_dim), torch.ones(batch, text_len, dtype=torch.bool),
                torch.empty(batch, text_dim))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        type(meta).forward(meta, *args)  # the class's forward: a copied instance attribute would call the original
    return total


def estimate_memory(cfg: Config, model) -> int:
    """Bytes for one training step: parameters, grads, AdamW, EMA (fp32) plus the activations a step keeps."""
    n_params = sum(p.numel() for p in model.parameters())
    text_dim = model.text_embedder.null_pooled.shape[0]
    _, frames, grid = model_input_shape(cfg)
    activations = saved_activation_values(model, cfg.train.batch_size, frames, grid, cfg.text.max_length, text_dim)
    return n_params * BYTES_PER_PARAM_TRAINING + 4 * activations


def check_memory(cfg: Config, model, device) -> None:
    """Refuse a run whose estimated step memory exceeds what the device has free (train.memory_check=false: try)."""
    need, free = estimate_memory(cfg, model), available_memory(device)
    if cfg.train.memory_check and free is not None and need > free:
        hint = "" if cfg.model.grad_checkpointing else "--set model.grad_checkpointing=true, "
        raise UserError(f"a training step needs ~{format_bytes(need)} (estimate) but {device} has {format_bytes(free)} "
                        f"free: try {hint}a smaller train.batch_size or data.num_frames (or "
                        f"train.memory_check=false to try anyway)")


def output_dirs(cfg: Config, exp_dir: str, sample_dir: str) -> dict[str, str]:
    """Where a training run writes, by the config field that decides it."""
    tc = cfg.train
    places = {"train.checkpoint_dir": exp_dir, "train.sample_dir": sample_dir, "data.cache_dir": cfg.data.cache_dir}
    if tc.tensorboard:
        places["train.log_dir"] = os.path.join(tc.log_dir, tc.exp_name)
    return places


def refuse_to_overwrite(exp_dir: str) -> None:
    """A fresh run never replaces another run's checkpoints: it continues them (--resume) or uses another name."""
    held = [name for name in ("latest.pt", "final.pt") if os.path.exists(os.path.join(exp_dir, name))]
    if held:
        raise UserError(f"{exp_dir} already holds a run ({held[0]}): continue it with `python main.py train --resume`,"
                        f" or start a new one under another --set train.exp_name=NAME")


def remove_stale_temp_files(folder: str) -> list[str]:
    """Temp files of saves that never finished (the process was killed); only safe while the lock is held."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if is_temp_file(name) and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(name)
    if removed:
        print(f"removed {len(removed)} temp file(s) an interrupted save left in {folder}: {', '.join(removed)}",
              file=sys.stderr)
    return removed


class ExperimentLock:
    """An exclusive lock on an experiment folder for as long as a run writes into it.

    flock() locks belong to the open file, so the kernel drops them when the holding process exits, however it
    exits: a lock file left by a dead run never blocks (it only still names that run). A clean exit removes the
    file while still holding the lock, and a taker checks that the file it locked is still the one at the path, so
    two runs never both hold it. Where flock is missing (Windows), an O_EXCL lock file is taken and a holder whose
    PID no longer runs counts as dead.
    """

    def __init__(self, folder: str):
        self.folder, self.path, self.fd = folder, os.path.join(folder, LOCK_FILE), None

    def __enter__(self) -> "ExperimentLock":
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:
            self._exclusive_file()
        else:
            self._flock_file()
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        return self

    def _flock_file(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                os.close(fd)
                raise self._busy(holder) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed that file as we locked it: take the new one

    def _exclusive_file(self) -> None:
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                return
            except FileExistsError:
                holder = self._holder()
                if _pid_alive(holder):
                    raise self._busy(holder) from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)  # its run died without removing it
        raise self._busy(self._holder())

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read().strip() or "unknown process"
        except OSError:
            return "unknown process"

    def _busy(self, holder: str) -> UserError:
        return UserError(f"experiment folder {self.folder} is in use by another run ({holder}): wait for it to "
                         f"finish, stop it, or choose another train.exp_name")

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # while still locked: see the class docstring
            os.close(self.fd)  # releases the flock
            self.fd = None
        return False


def _pid_alive(holder: str) -> bool:
    parts = holder.split()
    if len(parts) < 2 or parts[0] != "pid" or not parts[1].isdigit():
        return True  # unreadable: assume alive rather than steal a live run's folder
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
