"""TensorBoard logging: read a real (tiny, CPU) run's event files back and check what a user would see.

Covers the 15 categories with finite values, the real sampled timesteps, animated GIF samples, intervals, run
folders (new run = new folder, --resume appends without duplicate steps), that logging never changes training,
./start_tensorboard.sh's errors, and (when a chromium binary exists) TensorBoard serving the run to a headless
browser on a loopback port.
"""
import collections
import glob
import io
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea_mod

from methods.checkpoint import load_checkpoint
from methods.training.trainer import Trainer
from utils.gif import safe_filename
from methods.training.tb_logger import CATEGORIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "start_tensorboard.sh")
EXPECTED_CATEGORIES = ["01_Training", "02_Loss_Components", "03_Epoch_Summary", "04_Learning_Rate",
                       "05_Performance", "06_Diffusion", "07_Noise_Analysis", "08_Model_Architecture",
                       "09_Parameter_Stats", "10_Parameter_Histograms", "11_Gradient_Stats",
                       "12_Generated_Samples", "13_Noise_Visualization", "14_System", "15_Configuration"]


def read_run(run_dir):
    acc = ea_mod.EventAccumulator(run_dir, size_guidance={ea_mod.SCALARS: 0, ea_mod.IMAGES: 0,
                                                          ea_mod.HISTOGRAMS: 0, ea_mod.TENSORS: 0})
    acc.Reload()
    return acc


def decode(image_event):
    img = Image.open(io.BytesIO(image_event.encoded_image_string))
    img.load()
    return img


def hist_counts(histo) -> collections.Counter:
    """Per-timestep counts from a histogram written with one bin per integer t (right edges t + 0.5)."""
    return collections.Counter({round(limit - 0.5): int(n) for limit, n in zip(histo.bucket_limit, histo.bucket)
                                if n})


def record_timesteps(monkeypatch):
    """Wrap Trainer.micro_step to record the timesteps training really sampled, one list per micro-step."""
    sampled, original = [], Trainer.micro_step

    def recording(self, *batch):
        out = original(self, *batch)
        sampled.append(out["t"].tolist())
        return out

    monkeypatch.setattr(Trainer, "micro_step", recording)
    return sampled


def test_all_15_categories_real_timesteps_and_animated_samples(tiny_config, monkeypatch):
    assert list(CATEGORIES) == EXPECTED_CATEGORIES
    cfg = tiny_config(**{"train.max_steps": 6, "train.seed": 1234, "train.stats_every": 2, "train.hist_every": 3,
                         "train.sample_every": 3})
    sampled = record_timesteps(monkeypatch)
    trainer = Trainer(cfg, quiet=True)
    losses = trainer.train()
    acc = read_run(trainer.run_dir)
    tags = acc.Tags()

    # Every category has at least one tag, and every value read back is finite / decodable / non-empty.
    found = collections.defaultdict(list)
    for tag in tags["scalars"]:
        values = [e.value for e in acc.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag
        found[tag.split("/")[0]].append(tag)
    for tag in tags["histograms"]:
        for e in acc.Histograms(tag):
            h = e.histogram_value
            assert h.num > 0 and all(math.isfinite(v) for v in (h.min, h.max, h.sum, h.sum_squares)), tag
        found[tag.split("/")[0]].append(tag)
    for tag in tags["images"]:
        for e in acc.Images(tag):
            img = decode(e)
            assert img.size == (e.width, e.height) and img.size[0] > 0, tag
        found[tag.split("/")[0]].append(tag)
    for tag in tags["tensors"]:  # text summaries (TB 2.x text plugin stores them as string tensors)
        assert all(e.tensor_proto.string_val[0].strip() for e in acc.Tensors(tag)), tag
        found[tag.split("/")[0]].append(tag)
    assert [c for c in EXPECTED_CATEGORIES if not found[c]] == []
    assert set(found) == set(EXPECTED_CATEGORIES)  # nothing outside the 15 prefixes

    # 01: the logged loss is the trainer's loss, every step (log_every=1).
    logged = acc.Scalars("01_Training/loss")
    assert [e.step for e in logged] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in logged] == pytest.approx(losses, rel=1e-6)

    # 06: the histogram holds exactly the timesteps the trainer sampled at that step, and they come from the seed.
    T, B = cfg.diffusion.timesteps, cfg.train.batch_size
    g = torch.Generator().manual_seed(1234)
    torch.randint(2 ** 62, (1,), generator=g)  # the micro-batch's noise seed is drawn first
    assert sampled[0] == torch.randint(0, T, (B,), generator=g).tolist()
    hists = {e.step: e.histogram_value for e in acc.Histograms("06_Diffusion/timesteps")}
    assert sorted(hists) == [1, 2, 3, 4, 5, 6] and len(sampled) == 6
    t_mean = {e.step: e.value for e in acc.Scalars("06_Diffusion/t_mean")}
    for step, ts in enumerate(sampled, start=1):
        assert hist_counts(hists[step]) == collections.Counter(ts), step
        assert (hists[step].num, hists[step].min, hists[step].max, hists[step].sum) == (len(ts), min(ts), max(ts),
                                                                                       sum(ts))
        assert t_mean[step] == pytest.approx(sum(ts) / len(ts))
    assert [e.step for e in acc.Images("06_Diffusion/schedule_snr")] == [0]  # a plot of SNR(t), at start

    # 12: an animated GIF per prompt with the configured number of frames, at the sample steps; caption as text.
    for i, prompt in enumerate(cfg.train.sample_prompts):
        tag = f"12_Generated_Samples/{i}_{safe_filename(prompt, 40)}"
        events = acc.Images(f"{tag}/animated")
        assert [e.step for e in events] == [3, 6]
        gif = decode(events[-1])
        assert gif.format == "GIF" and gif.n_frames == cfg.data.num_frames
        assert decode(acc.Images(f"{tag}/frames")[-1]).format == "PNG"
        caption = acc.Tensors(f"{tag}/caption/text_summary")[-1].tensor_proto.string_val[0].decode()
        assert caption.startswith(prompt)
    # 12, synthetic data: the renderer's ground truth scores the samples at the sample steps, every headline metric
    from methods.ground_truth import METRICS
    for key in METRICS + ("order_ok",):
        assert [e.step for e in acc.Scalars(f"12_Generated_Samples/ground_truth/{key}")] == [3, 6], key
    # 13: x_t | predicted x0 | target, animated over the clip's frames.
    vis = decode(acc.Images("13_Noise_Visualization/xt_pred_x0_target")[-1])
    assert vis.format == "GIF" and vis.n_frames == cfg.data.num_frames
    # 09/11 at the stats steps (and the last), 10 at the histogram steps.
    assert [e.step for e in acc.Scalars("11_Gradient_Stats/grad_norm/blocks.0")] == [2, 4, 6]
    assert all(e.value > 0 for e in acc.Scalars("11_Gradient_Stats/update_ratio/blocks.0"))
    assert [e.step for e in acc.Histograms("10_Parameter_Histograms/blocks.0")] == [3, 6]
    # 08: the per-module counts add up to the model's.
    total = sum(p.numel() for p in trainer.model.parameters())
    assert acc.Scalars("08_Model_Architecture/total_params/all")[0].value == total


def test_logging_never_changes_training(tiny_config):
    base = {"train.max_steps": 4, "train.sample_every": 2}
    off = Trainer(tiny_config(**base, **{"train.tensorboard": False, "train.exp_name": "off"}), quiet=True)
    off_losses = off.train()
    assert not os.path.exists(os.path.dirname(off.run_dir))  # tensorboard=false: no run folder at all
    everything = {"train.log_every": 1, "train.stats_every": 1, "train.hist_every": 1, "train.exp_name": "on"}
    on = Trainer(tiny_config(**base, **everything), quiet=True)
    assert on.train() == off_losses  # exact: logging draws from no training RNG stream
    for a, b in ((on.model, off.model), (on.ema, off.ema)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


def test_run_folders_resume_appends_without_duplicates_and_intervals(tiny_config):
    cfg = tiny_config(**{"train.max_steps": 6})
    first = Trainer(cfg, quiet=True)
    first.train(stop_at=5)  # logs steps 1..5, but the last kept checkpoint before the "crash" is step 3
    state = load_checkpoint(os.path.join(first.exp_dir, "step_0000003.pt"))
    resumed = Trainer(cfg, resume=state, quiet=True)
    resumed.train()
    assert resumed.run_dir == first.run_dir
    assert len(glob.glob(os.path.join(first.run_dir, "events.out.tfevents.*"))) == 2
    acc = read_run(first.run_dir)
    assert [e.step for e in acc.Scalars("01_Training/loss")] == [1, 2, 3, 4, 5, 6]  # steps 4, 5 not doubled
    assert [e.step for e in acc.Histograms("06_Diffusion/timesteps")] == [1, 2, 3, 4, 5, 6]

    # A run without --resume gets its own new log folder; the earlier one is left as it was. (Its checkpoints go
    # elsewhere: a fresh run never replaces another run's checkpoints.)
    before = sorted(os.listdir(first.run_dir))
    other = Trainer(tiny_config(**{"train.max_steps": 5, "train.log_every": 2, "train.stats_every": 0,
                                   "train.hist_every": 0,
                                   "train.checkpoint_dir": os.path.dirname(first.exp_dir) + "_other"}), quiet=True)
    other.train()
    assert other.run_dir != first.run_dir and os.path.dirname(other.run_dir) == os.path.dirname(first.run_dir)
    assert sorted(os.listdir(first.run_dir)) == before
    acc = read_run(other.run_dir)
    assert [e.step for e in acc.Scalars("01_Training/loss")] == [2, 4, 5]  # every log_every, and the last step
    assert not [t for t in acc.Tags()["scalars"] + acc.Tags()["histograms"] + acc.Tags()["images"]
                if t.startswith(("09_", "10_", "11_", "06_Diffusion/loss_vs_t"))]  # 0 = off


# ----- start_tensorboard.sh -----

def run_script(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env)


def test_start_tensorboard_script_errors_are_one_line(tmp_path):
    assert os.access(SCRIPT, os.X_OK)
    assert run_script("--help").returncode == 0
    for args, words in [((str(tmp_path),), "no TensorBoard runs"), ((str(tmp_path / "missing"),), "no TensorBoard"),
                        ((str(tmp_path), "http"), "PORT must be a number"), (("--bogus",), "unknown option"),
                        (("a", "1", "b"), "too many arguments")]:
        res = run_script(*args)
        assert res.returncode == 2 and res.stdout == "", args
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr
    # A python without TensorBoard first on PATH: the script says so instead of a traceback.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 1\n")
    (fake / "python3").chmod(0o755)
    res = run_script(str(tmp_path), env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert res.returncode == 2 and res.stderr.strip() == "error: TensorBoard is not installed: " \
                                                         "pip install -r requirements.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    import json

    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets LISTENing on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    addr, p = local.split(":")
                    if state == "0A" and int(p, 16) == port:
                        found.add(addr)
    return found


def stop_group(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and all its children, bounded in time."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary for the headless check")
def test_tensorboard_serves_the_run_to_a_headless_browser(tiny_config, tmp_path):
    cfg = tiny_config(**{"train.max_steps": 4})  # one whole epoch: every category has something
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    logdir = cfg.train.log_dir
    run = os.path.relpath(trainer.run_dir, logdir)  # e.g. tiny/run-20250101-120000
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = open(tmp_path / "tb.log", "w+")
    server = subprocess.Popen([SCRIPT, logdir, str(port)], stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline, runs = time.monotonic() + 90, []
        while time.monotonic() < deadline and run not in runs:
            assert server.poll() is None, open(tmp_path / "tb.log").read()
            try:
                runs = get_json(f"{base}/data/runs")
            except OSError:
                pass
            time.sleep(0.5)
        assert run in runs, f"TensorBoard did not list {run} within 90 s: {runs}"
        out.seek(0)
        assert f"TensorBoard: http://localhost:{port}/" in out.read()
        if os.path.exists("/proc/net/tcp"):
            assert listen_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0 or ::

        # The JSON API the browser app uses serves all 15 categories of this run, and the animated GIF itself.
        tags = set(get_json(f"{base}/data/plugin/scalars/tags")[run])
        tags |= set(get_json(f"{base}/data/plugin/histograms/tags")[run])
        tags |= set(get_json(f"{base}/data/plugin/text/tags")[run])
        images = get_json(f"{base}/data/plugin/images/tags")[run]
        assert {t.split("/")[0] for t in tags | set(images)} == set(EXPECTED_CATEGORIES)
        tag = f"12_Generated_Samples/0_{safe_filename(cfg.train.sample_prompts[0], 40)}/animated"
        query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
        meta = get_json(f"{base}/data/plugin/images/images?{query}")
        with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?{meta[-1]['query']}",
                                    timeout=10) as r:
            gif = Image.open(io.BytesIO(r.read()))
        assert gif.format == "GIF" and gif.n_frames == cfg.data.num_frames

        # The web app itself loads in a real browser and renders the run and the categories.
        browser = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000", "--dump-dom",
             f"{base}/"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            dom, _ = browser.communicate(timeout=120)
        finally:
            stop_group(browser)
        assert "<title>TensorBoard" in dom
        assert os.path.basename(run) in dom and "01_Training" in dom and "12_Generated_Samples" in dom
    finally:
        stop_group(server)
        out.close()
    assert server.poll() is not None
