"""End-to-end: the real CLI in a temp dir (synth-data -> train -> resume -> sample) and its exit codes."""
import os

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import in_process, run, sets, tiny_overrides
from utils.atomic import TEMP_SUFFIX

def test_synth_train_resume_sample(tmp_path, tiny_encoder):
    data = tmp_path / "data"
    r = in_process("synth-data", "--out", str(data), "--num", "10", "--seed", "1", "--size", "32", "--frames", "8")
    assert r.returncode == 0, r.stderr
    assert len(list(data.glob("*.gif"))) == 10 and len(list(data.glob("synth_*.txt"))) == 10

    overrides = tiny_overrides(tmp_path, str(data), tiny_encoder, **{"train.max_steps": 4,
                                                                     "train.checkpoint_every": 2})
    r = run("train", *sets(overrides), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    exp = tmp_path / "checkpoints" / "tiny"
    assert sorted(os.listdir(exp)) == ["final.pt", "latest.pt", "step_0000002.pt"]
    samples = sorted(os.listdir(tmp_path / "samples" / "tiny"))
    assert samples == ["hello_step0000004.gif", "thank_you_step0000004.gif"]

    # Resume past the end with a raised step budget continues from step 4, in the same log run folder.
    r = run("train", "--resume", *sets(overrides + ["train.max_steps=6"]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "step 4" in r.stderr
    assert len(os.listdir(tmp_path / "logs" / "tiny")) == 1

    # A run SIGKILLed at its end leaves its lock file (and maybe a save's temp file); resuming the finished run
    # clears both and trains nothing.
    (exp / ".lock").write_text("pid 999999999 on a-dead-host since 2026-01-01 00:00:00")
    (exp / f".final.pt.x{TEMP_SUFFIX}").write_bytes(b"half a checkpoint")
    r = run("train", "--resume", *sets(overrides + ["train.max_steps=6"]), cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do: step 6" in r.stderr, r.stderr
    assert not [n for n in os.listdir(exp) if n.startswith(".")]

    out = tmp_path / "out"
    r = run("sample", "--checkpoint", str(exp / "latest.pt"), "--text", "../../etc/hello?*", "--num_samples", "2",
            "--steps", "3", "--output_dir", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert [os.path.basename(p) for p in paths] == ["etc_hello_seed0.gif", "etc_hello_seed0_1.gif"]
    frames = iio.imread(paths[0], index=None)
    assert frames.shape[1:] == (16, 16, 3) and 1 <= frames.shape[0] <= 4
    assert "never in the training captions" in r.stderr and "'etc'" in r.stderr

    # The same caption gets the same clip whatever it is sampled beside; --steps 0 no longer means "default".
    r = in_process("sample", "--checkpoint", str(exp / "latest.pt"), "--text", "zebra hello", "--text",
                   "../../etc/hello?*", "--steps", "3", "--output_dir", str(out / "pair"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(iio.imread(r.stdout.split()[1], index=None), frames)
    assert r.stderr.count("warning: never in the training captions") == 1 and "'zebra'" in r.stderr
    r = in_process("sample", "--checkpoint", str(exp / "latest.pt"), "--text", "hi", "--steps", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --steps must be in [1, 50] (the model's diffusion.timesteps), got 0"


@pytest.mark.parametrize("args, needle", [
    (["config", "--set", "train.nope=1"], "train.nope"),
    (["config", "--set", "train.lr=abc"], "train.lr"),
    (["train", "--set", "data.data_dir=/nonexistent/folder", "--set", "data.synth_if_missing=false"], "synth-data"),
    (["sample", "--checkpoint", "/nonexistent.pt", "--text", "hi"], "checkpoint not found"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, needle):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_config_prints_resolved_values(tmp_path):
    r = run("config", "--preset", "tinyfusion", "--set", "train.lr=0.5", cwd=tmp_path)
    assert r.returncode == 0
    assert "lr = 0.5" in r.stdout and "arch = 'TinyDiT-D14/2'" in r.stdout


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run("sample", "--checkpoint", str(bad), "--text", "hi", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read checkpoint" in r.stderr
