"""torchrun training on CPU with the gloo backend: 2 processes x batch B train as 1 process x batch 2B, a SIGTERM to
one rank stops both at a step boundary with one save, and the resumed run ends where an uninterrupted one does."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea_mod

from conftest import ROOT, in_process, run, sets, tiny_overrides
from methods.training.trainer import row_noise
from utils.distributed import World

# Float tolerance of 2 processes against 1: the same rows, timesteps and noise, so the only difference is the order
# of float32 sums (DDP averages two half-batch gradients where one process differentiates the whole batch's mean).
# That is ~1e-7 relative per step; AdamW divides by sqrt(v), so a gradient near zero can carry it up to ~lr x 1e-3
# into a weight over a few steps. Measured (2-core CPU, gloo): losses agree to 1.1e-7 relative and weights to
# 6.3e-8 absolute after 6 steps; the bounds leave ~100x room for other CPUs' kernels.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def test_shards_cover_every_row_of_a_global_batch_exactly_once():
    for n in range(0, 11):
        for size in (1, 2, 3, 4):
            rows = [r for rank in range(size) for r in range(*World(rank, size).shard(n))]
            assert rows == list(range(n))
    assert [World(r, 4).shard(10) for r in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [World(r, 4).shard(3) for r in range(4)] == [(0, 0), (0, 1), (1, 2), (2, 3)]  # rank 0 gets none


def test_noise_of_a_row_does_not_depend_on_which_rows_are_drawn_with_it():
    whole = row_noise(7, range(0, 4), (2, 3), torch.device("cpu"))
    halves = torch.cat([row_noise(7, range(0, 2), (2, 3), torch.device("cpu")),
                        row_noise(7, range(2, 4), (2, 3), torch.device("cpu"))])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole[0], whole[1])
    assert torch.equal(whole[1], torch.randn((2, 3), generator=torch.Generator().manual_seed(8)))


def torchrun(args, nproc=2, timeout=300, wait=True):
    """main.py under torchrun --standalone with nproc CPU processes (gloo)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "main.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def scalars(log_root, tag="01_Training/loss"):
    (run_dir,) = glob.glob(os.path.join(log_root, "*", "run-*"))
    acc = ea_mod.EventAccumulator(run_dir, size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_run(a_path, b_path):
    a, b = weights(a_path), weights(b_path)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=WEIGHT_ATOL, rtol=0, msg=key)


def make_overrides(synth_dir, tiny_encoder):
    def make(folder, **extra):
        os.makedirs(folder, exist_ok=True)
        # 13 training clips in micro-batches of 2 x 2, two per step: every 4th micro-batch holds one clip, so rank 0
        # trains on no rows of it (weight 0), and epochs end between the micro-batches of a step
        values = {"train.batch_size": 2, "train.grad_accum": 2, "train.max_steps": 6, "train.warmup_steps": 0,
                  "train.lr_schedule": "constant", "train.checkpoint_every": 2, "train.stats_every": 0,
                  "train.hist_every": 0, **extra}
        return sets(tiny_overrides(folder, synth_dir, tiny_encoder, **values))
    return make


@pytest.fixture
def overrides(synth_dir, tiny_encoder):
    return make_overrides(synth_dir, tiny_encoder)


# The reference every test compares with: one uninterrupted 2-process run with a checkpoint after each step. The
# learning rate is constant, so its step-N checkpoint is what a run of max_steps=N ends with.
STEPS = 16


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synth_dir, tiny_encoder):
    folder = tmp_path_factory.mktemp("two")
    extra = {"train.max_steps": STEPS, "train.checkpoint_every": 1}
    job = torchrun(["train", *make_overrides(synth_dir, tiny_encoder)(folder, **extra)])
    assert job.returncode == 0, job.stderr[-3000:]
    return folder, job


def reference_checkpoint(reference, step):
    return reference[0] / "checkpoints" / "tiny" / (f"step_{step:07d}.pt" if step < STEPS else "final.pt")


def test_two_processes_of_batch_b_train_as_one_process_of_batch_2b(tmp_path, overrides, reference):
    two_dir, two = reference
    one = run("train", *overrides(tmp_path / "one", **{"train.batch_size": 4}))
    assert one.returncode == 0, one.stderr[-3000:]
    loss_two, loss_one = scalars(two_dir / "logs")[:6], scalars(tmp_path / "one" / "logs")
    assert [s for s, _ in loss_two] == [s for s, _ in loss_one] == list(range(1, 7))
    torch.testing.assert_close([v for _, v in loss_two], [v for _, v in loss_one], rtol=LOSS_RTOL, atol=0)
    assert_same_run(reference_checkpoint(reference, 6), tmp_path / "one" / "checkpoints" / "tiny" / "final.pt")
    # rank 0 alone wrote: one run folder of logs, one set of checkpoints, one "checkpoints:" report
    assert sorted(os.listdir(two_dir / "checkpoints" / "tiny")) == sorted(
        ["final.pt", "latest.pt"] + [f"step_{s:07d}.pt" for s in range(1, STEPS)])  # step STEPS is final.pt
    assert len(glob.glob(str(two_dir / "logs" / "*" / "run-*"))) == 1
    assert two.stdout.count("checkpoints:") == 1
    state = torch.load(reference_checkpoint(reference, STEPS), weights_only=True)
    assert (state["world_size"], state["micro_batch"], len(state["rank_rngs"])) == (2, 4, 1)


def rank_pid(parent: int, rank: int, timeout=60) -> int:
    """The PID of torchrun's worker with RANK=rank (workers are the launcher's children)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and env.get(b"RANK") == str(rank).encode():
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} worker under {parent}")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker through /proc")
def test_sigterm_to_one_rank_stops_both_with_one_save_and_resume_matches_an_uninterrupted_run(tmp_path, overrides,
                                                                                               reference):
    extra = {"train.max_steps": STEPS, "train.checkpoint_every": 1000}
    args = overrides(tmp_path / "cut", **{**extra, "train.checkpoint_every": 1})
    job = torchrun(["train", *args], wait=False)
    ckpt = tmp_path / "cut" / "checkpoints" / "tiny"
    worker = rank_pid(job.pid, 1)
    while not (ckpt / "step_0000002.pt").exists() and job.poll() is None:
        time.sleep(0.05)
    os.kill(worker, signal.SIGTERM)  # rank 1 alone: rank 0 learns of it in the step's all-reduce
    out, err = job.communicate(timeout=300)
    stopped = torch.load(ckpt / "latest.pt", weights_only=True)["step"]
    assert 2 <= stopped < STEPS and not (ckpt / "final.pt").exists(), err[-2000:]
    assert err.count("latest.pt saved") == 1 and f"stopped by SIGTERM at step {stopped}" in err
    # no traceback through our code (torchrun prints its own on reporting the workers' exit code 143)
    assert 'main.py", line' not in err and job.returncode != 0

    for name in os.listdir(ckpt):  # the resumed run writes only from here on
        if name != "latest.pt":
            os.remove(ckpt / name)
    again = torchrun(["train", "--resume", *overrides(tmp_path / "cut", **extra)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and again.stderr.count("resuming") == 1
    full_w, cut_w = weights(reference_checkpoint(reference, STEPS)), weights(ckpt / "final.pt")
    assert all(torch.equal(full_w[k], cut_w[k]) for k in full_w)  # same ranks, same sums: bit for bit


def test_resume_with_another_process_count_at_the_same_micro_batch_continues(tmp_path, overrides, reference):
    first = torchrun(["train", *overrides(tmp_path / "cut", **{"train.max_steps": 1})])  # 8 clips into epoch 0
    assert first.returncode == 0, first.stderr[-3000:]
    bad = in_process("train", "--resume", *overrides(tmp_path / "cut", **{"train.max_steps": 3, "train.batch_size": 3}))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("error:") == 1, bad.stderr
    assert "stopped 8 clips into epoch 0 (micro-batches of 4 clips), which is not a whole number of this run's " \
           "micro-batches of 3" in bad.stderr
    again = run("train", "--resume", *overrides(tmp_path / "cut", **{"train.max_steps": 3, "train.batch_size": 4}))
    assert again.returncode == 0, again.stderr[-3000:]  # 1 x 4 = 2 x 2 clips per micro-batch: the same rows
    assert_same_run(reference_checkpoint(reference, 3), tmp_path / "cut" / "checkpoints" / "tiny" / "final.pt")


def test_an_error_on_rank_0_alone_ends_the_job_with_its_message(tmp_path, overrides):
    args = overrides(tmp_path)
    lock = tmp_path / "checkpoints" / "tiny"
    lock.mkdir(parents=True)
    import fcntl

    with open(lock / ".lock", "w") as held:  # another run holds the experiment: rank 0's lock check fails
        fcntl.flock(held, fcntl.LOCK_EX)
        job = torchrun(["train", *args], timeout=120)
    assert job.returncode != 0
    errors = [line for line in job.stderr.splitlines() if "error:" in line]
    assert errors == [f"rank 0: error: experiment folder {lock} is in use by another run (unknown process): wait for "
                      f"it to finish, stop it, or choose another train.exp_name"], job.stderr[-3000:]
    root_cause = job.stderr.split("Root Cause")[1]
    assert "rank      : 0 (local_rank: 0)" in root_cause and "exitcode  : 2" in root_cause  # not the quiet rank 1
