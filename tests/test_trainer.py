"""Trainer pieces with exact numbers: learning-rate shape, planned steps, the non-finite-loss guard, precision
selection, and the stop signals (in process and with a real SIGTERM to a real training process)."""
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from config import TrainConfig
from conftest import ROOT, sets, tiny_overrides
from methods.checkpoint import load_checkpoint
from methods.training.stop import Abort, StopRequest
from methods.training.trainer import Trainer, planned_steps
from schedulers import lr_factor
from utils.device import autocast_dtype
from utils.errors import UserError


def test_lr_factor_warms_up_linearly_then_follows_the_schedule():
    assert [lr_factor(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20, "cosine") == 1.0  # first step after warmup: the peak
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(30, 4, 20, "cosine") == pytest.approx(0.0, abs=1e-15)  # stays at 0 past the end
    assert lr_factor(13, 0, 20, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 13 / 20)))
    assert [lr_factor(s, 2, 10, "constant") for s in (0, 1, 2, 9, 50)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(0, 1, 10, "linear")


def test_planned_steps_counts_optimizer_steps_over_epochs_capped_by_max_steps():
    tc = TrainConfig(epochs=3, batch_size=4, grad_accum=1, max_steps=0)
    assert planned_steps(tc, 10) == 9  # 3 batches per epoch (the last one short) x 3 epochs
    tc.grad_accum = 2
    assert planned_steps(tc, 10) == 5  # 9 micro-batches / 2, rounded up
    tc.max_steps = 4
    assert planned_steps(tc, 10) == 4
    tc.max_steps = 100
    assert planned_steps(tc, 10) == 5  # max_steps caps, never extends


def test_precision_is_decided_by_device_and_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(cpu, "fp32") is None


def test_trainer_runs_in_the_selected_precision(tiny_config, monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, **kw):
        seen.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    trainer = Trainer(tiny_config(**{"train.precision": "bf16", "train.max_steps": 1, "train.tensorboard": False}),
                      quiet=True)
    assert trainer.amp_dtype is torch.bfloat16
    trainer.train()
    assert ("cpu", torch.bfloat16) in seen
    seen.clear()
    trainer = Trainer(tiny_config(**{"train.precision": "fp32", "train.max_steps": 1, "train.tensorboard": False,
                                     "train.exp_name": "fp32"}), quiet=True)
    trainer.train()
    assert trainer.amp_dtype is None and seen == []


def patch_losses(trainer, nan_calls):
    """The loss of the n-th micro-step (1-based) is NaN for n in nan_calls; weights are snapshotted at each call."""
    real, snapshots = trainer.diffusion.training_losses, []

    def losses(*args, **kwargs):
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        out = real(*args, **kwargs)
        if len(snapshots) in nan_calls:
            out["loss_per_sample"] = out["loss_per_sample"] * float("nan")  # the trainer sums the rows it holds
        return out

    trainer.diffusion.training_losses = losses
    return snapshots


def test_a_non_finite_loss_skips_the_step_without_touching_the_weights(tiny_config):
    trainer = Trainer(tiny_config(**{"train.max_steps": 2, "train.tensorboard": False}), quiet=True)
    snapshots = patch_losses(trainer, {2})
    trainer.train()
    assert (trainer.nonfinite_skips, trainer.step, len(snapshots)) == (1, 2, 3)
    assert len(trainer.loss_history) == 2 and all(math.isfinite(x) for x in trainer.loss_history)
    # Call 2 (after step 1) produced NaN; call 3 starts from exactly the same weights: nothing was applied.
    assert all(torch.equal(snapshots[1][k], v) for k, v in snapshots[2].items())
    assert any(not torch.equal(snapshots[0][k], v) for k, v in snapshots[1].items())  # step 1 was applied
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())  # NaN grads were dropped
    assert all(torch.isfinite(v).all() for v in trainer.ema.state_dict().values())


def test_cpu_adamw_takes_the_foreach_path_with_the_per_tensor_loops_numbers(tiny_config):
    """torch's CPU default is a Python loop over the tensors; the trainer asks for foreach (a third of the time on
    the demo), which must leave every weight exactly where the loop would."""
    trainer = Trainer(tiny_config(**{"train.max_steps": 1, "train.tensorboard": False}), quiet=True)
    assert trainer.optimizer.defaults["foreach"] is True and not trainer.optimizer.defaults["fused"]
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(p.detach().clone()) for p in trainer.params]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_five_non_finite_losses_stop_the_run_with_one_line(tiny_config):
    trainer = Trainer(tiny_config(**{"train.max_steps": 20, "train.tensorboard": False}), quiet=True)
    snapshots = patch_losses(trainer, set(range(1, 100)))
    with pytest.raises(UserError, match=r"5 non-finite steps \(last: loss at step 0\): lower train.lr or check the "
                       r"data; no checkpoint was written by this run") as err:
        trainer.train()
    assert "\n" not in str(err.value)
    assert (trainer.nonfinite_skips, trainer.step, len(snapshots)) == (5, 0, 5)
    assert all(torch.equal(snapshots[0][k], v) for k, v in trainer.model.state_dict().items())


def test_stop_request_takes_sigint_and_sigterm_and_aborts_on_the_second():
    received = []
    guard = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # never kill pytest
    try:
        with StopRequest() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled in this (main) thread
            assert stop.requested and stop.signum == signal.SIGTERM
            with pytest.raises(Abort) as err:
                os.kill(os.getpid(), signal.SIGINT)
            assert err.value.signum == signal.SIGINT and isinstance(err.value, KeyboardInterrupt)
        assert received == []  # StopRequest, not the previous handler, got the signal
        assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGINT) is not None
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]  # the previous handler is back after the with block
    finally:
        signal.signal(signal.SIGTERM, guard)


def test_sigterm_finishes_the_step_saves_latest_and_exits_143(tmp_path, synth_dir, tiny_encoder):
    overrides = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{
        "train.max_steps": 100000, "train.checkpoint_every": 100000, "train.warmup_steps": 1})
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "train", *sets(overrides)],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # wait for a few optimizer steps on the progress bar
        done = [int(n) for n in re.findall(r"(\d+)/\d+ \[", log.read_text(errors="replace"))]
        if done and max(done) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    message = log.read_text().strip().splitlines()[-1]
    latest = tmp_path / "checkpoints" / "tiny" / "latest.pt"
    state = load_checkpoint(str(latest))
    assert 3 <= state["step"] < 1000  # stopped early: the run was planned for thousands of steps
    assert message == (f"stopped by SIGTERM at step {state['step']}: {tmp_path / 'checkpoints' / 'tiny'}/latest.pt "
                       f"saved; continue with `python main.py train --resume`")
    assert [p.name for p in latest.parent.iterdir()] == ["latest.pt"]  # no temp file left behind
