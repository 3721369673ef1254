"""Fault injection: training killed with SIGKILL at random moments (mid-step, mid-save), resumed each time, ends
with weights bit-identical to an uninterrupted run. T2S_FAULT_KILLS=N (default 3) sets the most kills (each at a random later step): the
default keeps the suite fast; `T2S_FAULT_KILLS=30 python -m pytest tests/test_fault_injection.py` is the soak run."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, sets, tiny_overrides
from methods.checkpoint import load_checkpoint

KILLS = int(os.environ.get("T2S_FAULT_KILLS", "3"))


def start(overrides, cwd, resume: bool, log):
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, os.path.join(ROOT, "main.py"), "train", *(["--resume"] if resume else []), *sets(overrides)]
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)


def steps_shown(log_path) -> int:
    """The last step the progress bar showed (0 before training starts)."""
    done = re.findall(r"(\d+)/\d+ \[", open(log_path, errors="replace").read())
    return int(done[-1]) if done else 0


def test_random_kills_then_resume_give_bit_identical_weights(tmp_path, synth_dir, tiny_encoder):
    common = {"train.max_steps": 24, "train.checkpoint_every": 1, "train.tensorboard": False}
    full = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **common, **{"train.exp_name": "full"})
    with open(tmp_path / "full.log", "w") as log:
        assert start(full, tmp_path, False, log).wait(timeout=300) == 0, (tmp_path / "full.log").read_text()

    killed = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **common, **{"train.exp_name": "killed"})
    exp = tmp_path / "checkpoints" / "killed"
    rng, kills = random.Random(1234), 0
    while True:  # every run but the last is killed; the last one (never a second process beside it) runs to the end
        resumed_at = load_checkpoint(str(exp / "latest.pt"))["step"] if (exp / "latest.pt").exists() else 0
        log_path = tmp_path / f"run{kills}.log"
        with open(log_path, "w") as log:
            proc = start(killed, tmp_path, resumed_at > 0, log)
        if kills >= KILLS or resumed_at >= 23:
            break
        target = rng.randint(resumed_at + 1, 23)  # a step of this run, then a random moment inside it or its save
        deadline = time.time() + 120
        while proc.poll() is None and steps_shown(log_path) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, log_path.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
    assert proc.wait(timeout=300) == 0, log_path.read_text()

    want = load_checkpoint(str(tmp_path / "checkpoints" / "full" / "final.pt"))
    got = load_checkpoint(str(exp / "final.pt"))
    assert kills >= min(KILLS, 2), f"only {kills} kill(s) landed before training ended"
    assert got["step"] == want["step"] == 24
    for key in ("model", "ema"):
        for name, tensor in want[key].items():
            assert torch.equal(tensor, got[key][name]), f"{key}.{name} after {kills} kills"
    assert not [n for n in os.listdir(exp) if n.startswith(".")]  # no temp or lock file outlives the runs
