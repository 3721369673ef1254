"""Reliability round 3: a command writes only into a folder it owns (new, empty, or marked by its own earlier run),
checks its output folder before any work, survives a full disk at a save, and refuses inputs that would allocate
without bound (an export declaring a huge clip or text width, absurd config values)."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os

import pytest
import torch

import methods.checkpoint
from conftest import in_process
from methods.run_config import load_config
from utils.errors import UserError
from utils.folders import OWNER_FILE, claim_output_folder, read_owner


def tree_hash(folder) -> str:
    """Names and bytes of every file below folder."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def a_users_model_folder(folder):
    """What a Hugging Face model folder (or any project) looks like: config.json, README.md, samples/."""
    (folder / "samples").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 64}))
    (folder / "README.md").write_text("# my model\n")
    (folder / "samples" / "a.gif").write_bytes(b"GIF89a mine")
    return tree_hash(folder)


# ----- claim_output_folder: the rule every writing command follows -----
def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    claim_output_folder(str(tmp_path / "new"), "export", "python main.py export --out new")
    (tmp_path / "empty").mkdir()
    claim_output_folder(str(tmp_path / "empty"), "synth-data", "cmd")
    assert read_owner(str(tmp_path / "new")) == {"tool": "text2sign", "kind": "export",
                                                 "command": "python main.py export --out new"}
    assert read_owner(str(tmp_path / "empty"))["kind"] == "synth-data"
    claim_output_folder(str(tmp_path / "new"), "export", "again")  # its own output: resumed or refreshed
    assert read_owner(str(tmp_path / "new"))["command"] == "python main.py export --out new"


def test_a_folder_holding_anything_else_is_refused_untouched(tmp_path):
    before = a_users_model_folder(tmp_path / "hf")
    with pytest.raises(UserError, match=r"^--out .*hf is not empty and was not made by `python main.py export`: name "
                                        r"a new or empty folder, so no file of yours is replaced$"):
        claim_output_folder(str(tmp_path / "hf"), "export", "cmd")
    assert tree_hash(tmp_path / "hf") == before and not (tmp_path / "hf" / OWNER_FILE).exists()


def test_another_commands_folder_is_refused_naming_that_command(tmp_path):
    claim_output_folder(str(tmp_path / "data"), "synth-data", "cmd")
    (tmp_path / "data" / "synth_00000.gif").write_bytes(b"x")
    with pytest.raises(UserError, match=r"\(it holds the output of `synth-data`\)"):
        claim_output_folder(str(tmp_path / "data"), "prepare-data", "cmd")


def test_a_file_or_a_forged_mark_is_not_a_folder_we_own(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"^--out .*f is a file, not a folder"):
        claim_output_folder(str(tmp_path / "f"), "export", "cmd")
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / OWNER_FILE).write_text("[" * 100_000)  # not our mark: unreadable, and nothing follows from it
    (forged / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="is not empty"):
        claim_output_folder(str(forged), "export", "cmd")


def test_a_legacy_output_is_recognised_and_marked(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "README.txt").write_text("Text2Sign synthetic sign-language clips (procedural)\n")
    from data.synth import is_synthetic_set

    claim_output_folder(str(tmp_path / "old"), "synth-data", "cmd", legacy=is_synthetic_set)
    assert read_owner(str(tmp_path / "old"))["kind"] == "synth-data"


# ----- the commands -----
def test_export_into_a_users_model_folder_is_refused_and_nothing_changes(tiny_checkpoint):
    tmp, ckpt = tiny_checkpoint
    before = a_users_model_folder(tmp / "someones_model")
    done = in_process("export", "--checkpoint", ckpt, "--out", str(tmp / "someones_model"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "was not made by `python main.py export`" in done.stderr
    assert tree_hash(tmp / "someones_model") == before


def test_export_refreshes_its_own_earlier_export_marked_or_not(tiny_checkpoint):
    tmp, ckpt = tiny_checkpoint
    out = tmp / "refresh"
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples").returncode == 0
    assert read_owner(str(out))["command"].startswith("python main.py export --checkpoint")
    os.remove(out / OWNER_FILE)  # an export written before folders were marked
    again = in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples")
    assert again.returncode == 0, again.stderr
    assert read_owner(str(out))["kind"] == "export"


def test_synth_data_never_writes_into_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.txt").write_text("my notes\n")
    done = in_process("synth-data", "--out", str(tmp_path / "mine"), "--num", "2", "--size", "16", "--frames", "2")
    assert done.returncode == 2 and "was not made by `python main.py synth-data`" in done.stderr
    assert os.listdir(tmp_path / "mine") == ["README.txt"]
    assert (tmp_path / "mine" / "README.txt").read_text() == "my notes\n"
    for _ in range(2):  # its own folder: written again
        done = in_process("synth-data", "--out", str(tmp_path / "own"), "--num", "2", "--size", "16", "--frames", "2")
        assert done.returncode == 0, done.stderr


def test_sample_checks_its_output_folder_before_sampling(tiny_checkpoint, monkeypatch):
    import methods.pipeline

    tmp, ckpt = tiny_checkpoint
    (tmp / "a_file").write_text("x")
    monkeypatch.setattr(methods.pipeline, "generate", lambda *a, **k: pytest.fail("sampled before the check"))
    done = in_process("sample", "--checkpoint", ckpt, "--text", "hello", "--output_dir", str(tmp / "a_file"))
    assert done.returncode == 2 and "--output_dir: cannot write in" in done.stderr and done.stderr.count("\n") == 1


# ----- bounded memory for every input -----
def damaged_export(tiny_checkpoint, name, change):
    tmp, ckpt = tiny_checkpoint
    out = tmp / name
    assert in_process("export", "--checkpoint", ckpt, "--out", str(out), "--no-samples").returncode == 0
    meta = json.loads((out / "config.json").read_text())
    change(meta)
    (out / "config.json").write_text(json.dumps(meta))
    return out


def test_an_export_declaring_a_huge_clip_is_refused_before_anything_is_allocated(tiny_checkpoint, monkeypatch):
    def huge(meta):
        meta["config"]["data"]["num_frames"], meta["config"]["data"]["image_size"] = 512, 1024

    out = damaged_export(tiny_checkpoint, "huge_clip", huge)
    import methods.pipeline

    monkeypatch.setattr(methods.pipeline, "generate", lambda *a, **k: pytest.fail("sampled a huge clip"))
    monkeypatch.setattr(methods.pipeline, "available_memory", lambda device: 8 << 30)  # any machine: 8 GB free
    done = in_process("sample", "--model", str(out), "--text", "hello", "--output_dir", str(out / "s"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "sampling 1 clip(s) of 512x1024x1024, 1 at once, needs more than 78.9 GB but cpu has 8.6 GB" in done.stderr


def test_sampling_more_than_memory_holds_is_refused_before_sampling(monkeypatch):
    """A model whose weights do not depend on the clip size (a U-Net) passes the fit check: the memory check stops it."""
    import methods.pipeline
    from config import Config
    from diffusion import GaussianDiffusion
    from methods.pipeline import SignPipeline

    cfg = Config()
    cfg.data.num_frames, cfg.data.image_size = 512, 1024
    model = torch.nn.Conv3d(3, 3, 1)
    model.in_channels = 3
    pipe = SignPipeline(cfg, model, GaussianDiffusion("cosine", 10, "eps"))
    monkeypatch.setattr(methods.pipeline, "available_memory", lambda device: 8 << 30)  # any machine: 8 GB free
    monkeypatch.setattr(methods.pipeline, "generate", lambda *a, **k: pytest.fail("sampled a huge clip"))
    with pytest.raises(UserError, match=r"^sampling 3 clip\(s\) of 512x1024x1024, 1 at once, needs more than 82.1 GB "
                                        r"but cpu has 8.6 GB free: lower --batch_size or --num_samples$"):
        pipe(["a", "b", "c"], text=object(), batch_size=1)


def test_an_export_declaring_a_huge_text_width_is_a_one_line_error(tiny_checkpoint):
    out = damaged_export(tiny_checkpoint, "huge_text", lambda meta: meta.update(text_dim=10**9))
    done = in_process("sample", "--model", str(out), "--text", "hello")
    assert done.returncode == 2 and "text_dim 1000000000 is not in [1, 65536]" in done.stderr


def test_an_export_whose_weights_do_not_fit_its_config_allocates_nothing(tiny_checkpoint, monkeypatch):
    out = damaged_export(tiny_checkpoint, "wide", lambda meta: meta.update(text_dim=4096))
    import methods.pipeline

    real = methods.pipeline.build_video_model
    built = []
    monkeypatch.setattr(methods.pipeline, "build_video_model",
                        lambda *a, **k: built.append(torch.empty(0).device.type) or real(*a, **k))
    done = in_process("sample", "--model", str(out), "--text", "hello")
    assert done.returncode == 2 and "does not fit" in done.stderr and built == ["meta"]


@pytest.mark.parametrize("setting, message", [
    ("train.batch_size=100000000000000000000", "train.batch_size=100000000000000000000 must be below 2**31"),
    ("train.device=quantum", "train.device='quantum' must be auto, cpu, cuda, cuda:N or mps"),
    ("train.device=cuda:x", "train.device='cuda:x' must be auto"),
])
def test_absurd_config_values_are_one_line_errors(setting, message):
    with pytest.raises(UserError, match=r"^" + message.replace("*", r"\*").replace("(", r"\(")):
        load_config("demo", [setting])


# ----- a full disk at a save -----
class FullDisk(io.RawIOBase):
    """A file on a disk with room for 1 kB."""

    def __init__(self):
        self.written = 0

    def writable(self):
        return True

    def write(self, data):
        self.written += len(data)
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_a_full_disk_during_a_save_is_the_oserror_not_torchs_runtimeerror(monkeypatch, tmp_path):
    import contextlib

    monkeypatch.setattr(methods.checkpoint, "atomic_write", lambda path: contextlib.nullcontext(FullDisk()))
    with pytest.raises(OSError) as err:
        methods.checkpoint.save_checkpoint(str(tmp_path / "x.pt"), {"w": torch.zeros(10_000)})
    assert err.value.errno == errno.ENOSPC


def test_training_goes_on_through_a_full_disk_with_one_warning(tiny_config, monkeypatch, capsys):
    import contextlib

    from methods.training.trainer import Trainer
    from utils.atomic import atomic_write

    calls = []

    def full_once(path, *args):
        calls.append(os.path.basename(path))
        return contextlib.nullcontext(FullDisk()) if len(calls) == 1 else atomic_write(path, *args)

    monkeypatch.setattr(methods.checkpoint, "atomic_write", full_once)
    trainer = Trainer(tiny_config(**{"train.max_steps": 6, "train.checkpoint_every": 3, "train.tensorboard": False}),
                      quiet=True)
    trainer.train()
    err = capsys.readouterr().err
    assert trainer.step == 6 and err.count("warning: could not save") == 1, err
    assert "step_0000003.pt at step 3 (OSError: No space left on device); training goes on and the next checkpoint " \
           "retries" in err
    assert methods.checkpoint.load_checkpoint(os.path.join(trainer.exp_dir, "final.pt"))["step"] == 6
