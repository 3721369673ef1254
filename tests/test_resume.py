"""Exact resume: N steps + resume N equals 2N uninterrupted steps (losses and final weights), on CPU."""
import os

import pytest
import torch

from methods.checkpoint import load_checkpoint
from methods.training.trainer import Trainer
from utils.errors import UserError


def train_through(cfg, stop_at=None, resume=None):
    trainer = Trainer(cfg, resume=resume, quiet=True)
    losses = trainer.train(stop_at=stop_at)
    return trainer, losses


@pytest.mark.parametrize("extra", [dict(), {"train.grad_accum": 2, "diffusion.prediction": "v"}])
def test_stop_and_resume_is_bit_exact(tiny_config, extra):
    # 12 train clips / batch 4 = 3 batches per epoch: stopping at step 4 resumes mid-epoch.
    cfg = tiny_config(**{"train.max_steps": 8, **extra})
    full, full_losses = train_through(cfg)
    full_state = load_checkpoint(os.path.join(full.exp_dir, "final.pt"))

    cfg2 = tiny_config(**{"train.max_steps": 8, "train.exp_name": "tiny2", **extra})
    first, first_losses = train_through(cfg2, stop_at=4)
    assert first.interrupted and first.step == 4
    state = load_checkpoint(os.path.join(first.exp_dir, "latest.pt"))
    second, second_losses = train_through(cfg2, resume=state)
    assert second.step == 8

    assert first_losses + second_losses == full_losses  # exact float equality, step by step
    resumed = load_checkpoint(os.path.join(second.exp_dir, "final.pt"))
    for key in ("model", "ema"):
        for name, tensor in full_state[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name}"
    assert resumed["epoch"] == full_state["epoch"] and resumed["batch_in_epoch"] == full_state["batch_in_epoch"]
    assert resumed["scheduler"]["last_epoch"] == 8
    assert resumed["run_dir"] == state["run_dir"]  # --resume appends to its own log folder


def test_checkpoint_is_weights_only_and_has_no_text_encoder(tiny_config):
    trainer, _ = train_through(tiny_config(**{"train.max_steps": 3}))
    path = os.path.join(trainer.exp_dir, "latest.pt")
    state = torch.load(path, weights_only=True)
    assert state["step"] == 3 and state["config"]["train"]["exp_name"] == "tiny"
    assert not any(k.startswith(("text_encoder", "encoder.")) for k in state["model"])
    assert sorted(os.listdir(trainer.exp_dir)) == ["final.pt", "latest.pt"]  # no temp files left behind
    # Everything trainable is saved, nothing else: the saved keys are exactly the model's.
    assert set(state["model"]) == set(trainer.model.state_dict())


def test_stop_request_on_the_last_step_is_a_normal_finish(tiny_config):
    trainer, losses = train_through(tiny_config(**{"train.max_steps": 3}), stop_at=3)
    assert trainer.step == 3 and len(losses) == 3 and not trainer.interrupted


def test_a_trainer_continues_its_own_run(tiny_config):
    """Stopping and calling train() again (benchmarks do) continues the same run; only a fresh trainer is refused."""
    trainer, first = train_through(tiny_config(**{"train.max_steps": 4}), stop_at=2)
    first = list(first)  # train() returns the run's loss list, which the second call extends
    assert trainer.step == 2 and len(first) == 2
    second = trainer.train(stop_at=4)
    assert trainer.step == 4 and len(second) == 4 and second[:2] == first  # the losses of the whole run
    with pytest.raises(UserError, match=r"already holds a run \(latest.pt\): continue it with "
                                        r"`python main.py train --resume`"):
        Trainer(tiny_config(**{"train.max_steps": 4}), quiet=True).train()
