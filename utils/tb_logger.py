"""TensorBoard writer for training runs; the training loop only hands it dicts."""
from __future__ import annotations

import math
import os
import time


def new_run_dir(root: str) -> str:
    """A fresh, never-reused run folder (earlier runs' logs are never deleted)."""
    base = os.path.join(root, time.strftime("run-%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        path, n = f"{base}-{n}", n + 1
    return path


class TBLogger:
    """Writes scalars and text under a run folder; flushes every `flush_secs` and on close."""

    def __init__(self, run_dir: str, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when logging

        os.makedirs(run_dir, exist_ok=True)
        self.run_dir = run_dir
        self.writer = SummaryWriter(run_dir, flush_secs=flush_secs)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
