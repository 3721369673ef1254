"""Learning-rate schedules: a multiplier of the peak rate per optimizer step (the trainer's and the evaluator's)."""
from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "constant")  # both after a linear warmup


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Linear warmup to 1 over `warmup` steps, then constant or cosine decay to 0 at `total` optimizer steps."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {list(LR_SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
