"""Hostile settings, bad output places, failing saves and samplers, two runs into one experiment: nothing is lost,
one clear line, exit 2 for the user's mistakes."""
import errno
import os

import pytest
import torch

import main
import methods.pipeline
import methods.training.trainer as trainer_module
from conftest import sets, tiny_overrides
from methods.checkpoint import load_checkpoint, save_checkpoint
from methods.run_config import load_config
from methods.training.experiment import ExperimentLock
from methods.training.trainer import Trainer
from utils.errors import UserError
from utils.gif import safe_filename


@pytest.mark.parametrize("override, needle", [
    ("train.lr=inf", "train.lr=inf must be a finite number"),
    ("train.lr=nan", "train.lr=nan must be a finite number"),
    ("train.weight_decay=inf", "train.weight_decay=inf must be a finite number"),
    ("train.lr=5", "train.lr=5.0 must be in (0, 1]"),
    ("train.weight_decay=2000", "train.lr * train.weight_decay < 1"),
    ("diffusion.guidance_scale=nan", "diffusion.guidance_scale=nan must be a finite number"),
    ("data.num_frames=100000", "data.num_frames=100000 must be in [1, 512]"),
    ("data.image_size=4096", "data.image_size=4096 must be in [8, 1024]"),
    ("data.image_size=1000000", "data.image_size=1000000 must be in [8, 1024]"),
    ("data.image_size=30", "data.image_size=30 must be a multiple of 4 for model.arch=UNet3D-S3"),  # the model's, first
    ("diffusion.timesteps=1001", "diffusion.timesteps=1001 must be <= 1000"),
    ("train.seed=18446744073709551616", "train.seed=18446744073709551616 must be below 2**63"),
    ("data.data_dir=", "data.data_dir='' must name a folder"),
    ("train.sample_prompts=hello,  ,bye", None),  # empty items are dropped by the parser, so this is fine
])
def test_absurd_settings_are_refused_at_validation(override, needle):
    if needle is None:
        assert load_config("demo", [override]).train.sample_prompts == ("hello", "bye")
        return
    with pytest.raises(UserError) as err:
        load_config("demo", [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_empty_prompt_in_a_stored_config_is_refused(tiny_config):
    cfg = tiny_config()
    cfg.train.sample_prompts = ("hello", "   ")
    with pytest.raises(UserError, match="train.sample_prompts"):
        cfg.validate()


def test_a_non_finite_gradient_skips_the_step(tiny_config):
    trainer = Trainer(tiny_config(**{"train.max_steps": 2, "train.tensorboard": False}), quiet=True)
    param = trainer.params[0]
    calls = []

    def poison(grad):  # a finite loss whose gradient overflows: the loss check alone would apply it
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    param.register_hook(poison)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(stop_at=None)
    assert trainer.nonfinite_skips == 1 and trainer.step == 2 and len(calls) == 3
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in trainer.ema.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_non_finite_weights_are_never_saved(tiny_config):
    trainer = Trainer(tiny_config(**{"train.max_steps": 2, "train.tensorboard": False}), quiet=True)
    trainer.train(stop_at=1)
    with torch.no_grad():
        trainer.ema.final_layer.linear.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"refusing to save non-finite weights at step 1 \(ema.final_layer.linear.weight\)"
                                        r"; the last checkpoint written is .*latest.pt"):
        trainer.save("latest.pt")
    assert load_checkpoint(os.path.join(trainer.exp_dir, "latest.pt"))["step"] == 1  # the good one is untouched


def test_sample_refuses_a_non_finite_checkpoint(tiny_config, tmp_path, capsys):
    trainer = Trainer(tiny_config(**{"train.max_steps": 1, "train.tensorboard": False, "train.sample_prompts": ""}),
                      quiet=True)
    trainer.train()
    state = load_checkpoint(os.path.join(trainer.exp_dir, "final.pt"))
    state["ema"]["final_layer.linear.bias"][0] = float("inf")
    bad = str(tmp_path / "diverged.pt")
    save_checkpoint(bad, {k: v for k, v in state.items() if k != "format_version"})
    assert main.main(["sample", "--checkpoint", bad, "--text", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {bad} holds non-finite EMA weights (final_layer.linear.bias): the run diverged before it "
                   f"was saved; sample an earlier checkpoint")
    for text in ("", "   "):
        assert main.main(["sample", "--checkpoint", os.path.join(trainer.exp_dir, "final.pt"), "--text", text]) == 2
        assert capsys.readouterr().err.strip() == "error: --text must not be empty or only spaces"


def test_weights_of_another_architecture_version_are_a_one_line_error(tiny_config, tmp_path, capsys):
    """UNet3D's up-path conv once kept the coarse level's width: such a checkpoint names the tensor that differs."""
    cfg = tiny_config(**{"train.max_steps": 1, "train.tensorboard": False, "train.sample_prompts": "",
                         "model.arch": "UNet3D-Test"})
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    state = load_checkpoint(os.path.join(trainer.exp_dir, "final.pt"))
    for weights in (state["model"], state["ema"]):
        assert weights["up.1.weight"].shape == (16, 32, 3, 3)
        weights["up.1.weight"] = torch.zeros(32, 32, 3, 3)  # the old layout
    old = str(tmp_path / "old.pt")
    save_checkpoint(old, {k: v for k, v in state.items() if k != "format_version"})
    assert main.main(["sample", "--checkpoint", old, "--text", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {old} does not fit the UNet3D its config builds (1 tensor(s) differ, first "
                          f"up.1.weight: (32, 32, 3, 3) in the file, (16, 32, 3, 3) in the model)") and "\n" not in err
    del state["ema"]["conv_out.bias"]
    save_checkpoint(old, {k: v for k, v in state.items() if k != "format_version"})
    assert main.main(["train", "--resume", old]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the "resuming ..." and data lines
    assert last.startswith("error: checkpoint does not fit the UNet3D its config builds (1 tensor(s) differ, first "
                           "up.1.weight: (32, 32, 3, 3) in the file")
    assert main.main(["sample", "--checkpoint", old, "--text", "hello"]) == 2
    assert "(2 tensor(s) differ" in capsys.readouterr().err
    out = tmp_path / "export"
    assert main.main(["export", "--checkpoint", old, "--out", str(out)]) == 2  # refused before anything is written
    assert "(2 tensor(s) differ" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("field", ["train.checkpoint_dir", "train.sample_dir", "train.log_dir", "data.cache_dir"])
def test_a_bad_output_place_fails_before_step_1(tmp_path, synth_dir, tiny_encoder, capsys, field):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    overrides = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{field: blocker})
    assert main.main(["train", *sets(overrides)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {field}: cannot write in {blocker}"), err
    assert "NotADirectoryError" in err[-1] or "FileExistsError" in err[-1], err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*.pt"))


def test_a_failed_save_warns_keeps_training_and_retries(tiny_config, monkeypatch, capsys):
    real, attempts = trainer_module.save_checkpoint, []

    def flaky(path, state):
        attempts.append(os.path.basename(path))
        if len(attempts) == 1:  # the disk is full at the first checkpoint, freed by the second
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", flaky)
    trainer = Trainer(tiny_config(**{"train.max_steps": 6, "train.checkpoint_every": 2, "train.tensorboard": False}),
                      quiet=True)
    trainer.train()
    assert attempts == ["step_0000002.pt", "step_0000004.pt", "latest.pt", "final.pt", "latest.pt"]
    assert "warning: could not save" in capsys.readouterr().err
    assert sorted(os.listdir(trainer.exp_dir)) == ["final.pt", "latest.pt", "step_0000004.pt"]
    assert load_checkpoint(os.path.join(trainer.exp_dir, "final.pt"))["step"] == 6


def test_stale_temp_files_of_killed_saves_are_removed_at_start(tiny_config, capsys):
    cfg = tiny_config(**{"train.max_steps": 1, "train.tensorboard": False})
    exp = os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name)
    os.makedirs(exp)
    for name in (".latest.pt.k2j4x9.tmp", "latest.pt.tmp4242", "keep.txt"):
        with open(os.path.join(exp, name), "wb") as f:
            f.write(b"x" * 100)
    Trainer(cfg, quiet=True).train()
    assert sorted(os.listdir(exp)) == ["final.pt", "keep.txt", "latest.pt"]
    assert "removed 2 temp file(s)" in capsys.readouterr().err


def test_a_failure_while_sampling_costs_nothing(tiny_config, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(methods.pipeline, "generate", broken)
    trainer = Trainer(tiny_config(**{"train.max_steps": 4, "train.sample_every": 2, "train.checkpoint_every": 100,
                                     "train.tensorboard": False}), quiet=True)
    trainer.train()
    assert trainer.step == 4 and load_checkpoint(os.path.join(trainer.exp_dir, "final.pt"))["step"] == 4
    err = capsys.readouterr().err
    assert err.count("warning: sampling at step") == 2 and "RuntimeError: CUDA out of memory (pretend)" in err


def test_one_run_per_experiment_folder(tmp_path, synth_dir, tiny_encoder, capsys):
    folder = tmp_path / "checkpoints" / "tiny"
    with ExperimentLock(str(folder)):
        with pytest.raises(UserError, match=rf"experiment folder {folder} is in use by another run \(pid {os.getpid()}"):
            with ExperimentLock(str(folder)):
                pass
        assert main.main(["train", *sets(tiny_overrides(tmp_path, synth_dir, tiny_encoder))]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: experiment folder {folder} is in use by another run (pid {os.getpid()}")
        assert not (folder / "latest.pt").exists()
    assert not (folder / ".lock").exists()  # a clean exit removes it
    (folder / ".lock").write_text("pid 999999999 on elsewhere since 2026-01-01")  # left by a killed run
    with ExperimentLock(str(folder)):
        pass


def test_lock_without_flock_detects_dead_holders(tmp_path, monkeypatch):
    import methods.training.experiment as experiment

    monkeypatch.setattr(experiment, "fcntl", None)
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / ".lock").write_text("pid 999999999 on host since then")  # no such process
    with ExperimentLock(str(folder)):
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} "):
            with ExperimentLock(str(folder)):
                pass
    assert not (folder / ".lock").exists()


def test_an_empty_checkpoint_file_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "latest.pt"
    empty.write_bytes(b"")
    assert main.main(["train", "--resume", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read checkpoint {empty}: ") and "\n" not in err


def test_non_latin_captions_get_distinct_readable_names():
    assert safe_filename("hello") == "hello" and safe_filename("../../etc/x?*") == "etc_x"
    assert safe_filename("café au lait").startswith("cafe_au_lait_")
    names = {safe_filename(t) for t in ("你好", "谢谢", "привет", "مرحبا")}
    assert len(names) == 4 and all(n.startswith("u") and len(n) == 9 for n in names)
    # pinned (sha1 of the UTF-8 bytes, computed once with hashlib): a caption's name comes from its text alone, the
    # same in every process and on every machine (a Python hash() would agree within one process only)
    assert (safe_filename("你好"), safe_filename("谢谢")) == ("u440ee085", "u3d43bc74")
    assert len(safe_filename("ü" * 200)) <= 60


def test_a_step_that_cannot_fit_is_refused_before_allocating(tiny_config, monkeypatch):
    import methods.training.experiment as experiment

    monkeypatch.setattr(experiment, "available_memory", lambda device: 2_000_000)  # 2 MB free
    with pytest.raises(UserError, match=r"a training step needs ~\d+ MB \(estimate\) but cpu has 2 MB free: try "
                                        r"--set model.grad_checkpointing=true, a smaller train.batch_size"):
        Trainer(tiny_config(**{"train.batch_size": 12, "data.num_frames": 4}), quiet=True)
    trainer = Trainer(tiny_config(**{"train.memory_check": False}), quiet=True)  # the escape hatch
    assert trainer.step == 0


def test_a_fresh_run_never_replaces_another_runs_checkpoints(tiny_config):
    cfg = tiny_config(**{"train.max_steps": 2, "train.tensorboard": False})
    first = Trainer(cfg, quiet=True)
    first.train()
    before = (os.path.join(first.exp_dir, "final.pt"), os.path.getmtime(os.path.join(first.exp_dir, "final.pt")))
    with pytest.raises(UserError, match=r"already holds a run \(latest.pt\): continue it with `python main.py train "
                                        r"--resume`, or start a new one under another --set train.exp_name=NAME"):
        Trainer(cfg, quiet=True).train()
    assert os.path.getmtime(before[0]) == before[1]
    resumed = Trainer(cfg, resume=load_checkpoint(os.path.join(first.exp_dir, "latest.pt")), quiet=True)
    assert resumed.step == 2  # --resume is the way on


def test_the_cli_refuses_a_second_fresh_run_before_decoding_anything(tmp_path, synth_dir, tiny_encoder, capsys,
                                                                        monkeypatch):
    overrides = tiny_overrides(tmp_path, synth_dir, tiny_encoder, **{"train.max_steps": 1})
    assert main.main(["train", *sets(overrides)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(trainer_module, "SignDataset", lambda *a, **k: pytest.fail("decoded data before refusing"))
    assert main.main(["train", *sets(overrides)]) == 2
    exp = tmp_path / "checkpoints" / "tiny"
    assert capsys.readouterr().err.strip() == (
        f"error: {exp} already holds a run (latest.pt): continue it with `python main.py train --resume`, or start a "
        f"new one under another --set train.exp_name=NAME")
