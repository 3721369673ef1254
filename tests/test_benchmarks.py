"""Every script under benchmarks/ runs at HEAD: each starts as its own process with its smallest setting (--smoke, plus
what it needs: tiny --set overrides and a local text encoder, or a checkpoint and evaluator from a 4-step tiny run)
and must exit 0 having printed its figures. The glob picks up a new script by itself: it must accept --smoke.

The scripts run two at a time in background threads (each process single-threaded), started when the module's
first test asks; each test waits for its own script. The scripts that need neither a checkpoint nor a text encoder
start at once; meanwhile a 4-step tiny run and its evaluator are made in this process, which also fills the clip
store and caption-embedding cache the other scripts' trainers then share (no encoder load: that import is the
largest part of a tiny script's time). Measured: about 145 s of CPU in all (19 child processes, each paying torch's
~2.5 s import on this machine, and the tiny run here), so about 75 s on 2 idle cores; 250 s while a full suite and
other jobs kept the same 2 cores at load 4-6.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from conftest import ROOT, in_process, sets, tiny_overrides

SCRIPTS = sorted(p.name for p in pathlib.Path(ROOT, "benchmarks").glob("*.py") if not p.name.startswith("_"))
NEEDS_CHECKPOINT = {"eval_demo.py", "evaluator_blur.py", "frame_strip.py", "serve_screenshot.py", "race.py",
                    "scale_demo.py"}
START_AT_ONCE = ["bench_gpu.py", "bench_data.py", "bench_tinydit.py", "rest_threshold.py", "bench_autoencoder.py",
                 "framing.py"]
SLOWEST_FIRST = ["race.py", "scale_demo.py", "bench_demo.py", "bench_logging.py"]  # of the others

NUMBER = r"-?\d+(\.\d+)?"
# what each script prints with --smoke: its figures (a new script must at least print a number)
FIGURES = {
    "bench_autoencoder.py": [rf"steps: \d+ in {NUMBER} s", rf"check \(saved folder, metrics.py\): PSNR {NUMBER} dB"],
    "bench_data.py": [rf"\| 16 \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \|"],
    "bench_demo.py": [rf"data: first load {NUMBER} clips/s", rf"train step .*: {NUMBER} ms = {NUMBER} steps/s",
                      rf"bare forward\+backward, same batch: {NUMBER} ms", rf"trainer overhead: [+-]{NUMBER}%"],
    # no GPU here: the script's CPU path, which is what --smoke runs everywhere
    "bench_gpu.py": [rf"CPU, 1 threads: measured float32 matmul peak {NUMBER} TFLOP/s",
                     rf"\| smoke \| preset \| 1 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|",
                     rf"\| smoke \| grad_checkpointing=true \| 1 \| {NUMBER} \|",
                     rf"\| smoke \| sampling: 2 DDIM steps, guidance 5, one clip \| 1 \| \| \| {NUMBER} s",
                     rf"\| smoke-latent \| preset \| 1 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|",  # the latent grid
                     rf"\| smoke-latent \| sampling: 2 DDIM steps, guidance 5, one clip \| 1 \| \| \| {NUMBER} s"],
    "bench_logging.py": [rf"step time with logging off: {NUMBER} ms",
                         rf"logging overhead at default intervals: {NUMBER}% of step time"],
    "bench_tinydit.py": [r"model DiT-Test/4: [\d,]+ parameters", rf"seconds per step {NUMBER}",
                         rf"MFU {NUMBER}%"],
    "eval_demo.py": [rf"\| final.pt \| 4 \| {NUMBER} \| {NUMBER} \| train \| 3 x 1 \| {NUMBER} ± {NUMBER} / {NUMBER}"],
    "evaluator_blur.py": [rf"\| 0 \| {NUMBER} \({NUMBER}\) / {NUMBER} \| 1.000 \| 100.00 \| 1.000 \|",
                          rf"\| 1 \| {NUMBER} \({NUMBER}\) / {NUMBER} \| 0\.\d+ \| {NUMBER} \| {NUMBER} \|",
                          # the checkpoint's clips, plain then sharpened
                          rf"unsharp mask of sigma 1 px\n.*\n.*\n\| 0 \| {NUMBER} \({NUMBER}\) / {NUMBER} \| "
                          rf"{NUMBER} \| {NUMBER} \| {NUMBER} \|\n\| 1 \| {NUMBER} \({NUMBER}\)"],
    # the 2:1 video (the signer twice side by side): pad cuts nothing, crop about half its motion; the letterboxed
    # square video's black bands are found (16 of its 32 rows)
    "framing.py": [r"4 clips of .* \(synthetic\)",
                   r"\| 16:9 and wider \| 1 \| pad \| 0.000 / 0.000 / 0.000 \| 0 \| 0.50 \|",
                   r"\| 16:9 and wider \| 1 \| crop \| 0\.[45]\d\d / ",
                   r"\| square \| 2 \| fit \| 0.000 / 0.000 / 0.000 \| 0 \| 1.00 \|",
                   r"baked-in bars over 5% of a side: 1 clips, median 0.50 of the side"],
    "frame_strip.py": [r"'yes no please': real clip .*, 1 generated \(guidance", r"strip.png: per caption"],
    "race.py": [r"tiny: 2 steps in", rf"\| tiny \| DiT-Test/4 \| {NUMBER}M \| 2 \| {NUMBER} \| {NUMBER} \|"],
    "rest_threshold.py": [rf"still signer 32px, camera noise sigma 2, H.264 crf 23: change mean {NUMBER}",
                          rf"synthetic 'yes no please' 32px, 8 frames: change min {NUMBER}"],
    "scale_demo.py": [r"\| tiny \| train.max_steps=2 .* \| done \| 2 \|", rf"\| tiny \| final.pt \| 2 \| {NUMBER} \|"],
    # without chromium the page is checked through its API and the screenshot is skipped, saying so
    "serve_screenshot.py": [r"API: 4 frames of 'yes no please' in [\d.]+ s: /outputs/yes_no_please_seed0.gif",
                            r"no chromium: screenshot skipped|serve.png$"],
}


class Tiny:
    """The tiny inputs: synthetic clips, the local encoder, and (once trained) a checkpoint, its evaluator and the
    warm cache (clip store + caption embeddings) of its data."""

    def __init__(self, data: str, encoder: str):
        self.data, self.encoder, self.ckpt, self.evaluator, self.cache = data, encoder, None, None, None

    def fields(self, tmp: pathlib.Path, outputs: bool = False) -> list[str]:
        """FIELD=VALUE strings for a seconds-long run on the demo preset: test-size model and clips, the local
        encoder, the warm cache; with outputs, every checkpoint, log and sample inside tmp (scripts that launch
        `main.py train`)."""
        fields = ["data.image_size=16", "data.num_frames=4", "data.val_fraction=0.1", "data.synth_if_missing=false",
                  f"data.cache_dir={self.cache}", f"text.encoder={self.encoder}", "text.max_length=8",
                  "model.arch=DiT-Test/4", "model.frame_chunk_size=2", "train.batch_size=4"]
        if outputs:
            fields += [f"data.data_dir={self.data}", "train.sample_every=0", "train.tensorboard=false",
                       f"train.checkpoint_dir={tmp / 'checkpoints'}", f"train.log_dir={tmp / 'logs'}",
                       f"train.sample_dir={tmp / 'samples'}"]
        return fields

    def arguments(self, script: str, tmp: pathlib.Path) -> list[str]:
        """--smoke and what the script needs besides (nothing, for a script that makes its own tiny inputs)."""
        extra = {
            "bench_autoencoder.py": ["--data", self.data, "--budget", "3", "--size", "16", "--frames", "4",
                                     "--threads", "1", "--cache", str(tmp / "cache"), "--out", str(tmp / "out")],
            "bench_demo.py": ["--data", self.data, *sets(self.fields(tmp))],
            "bench_logging.py": ["--data", self.data, *sets(self.fields(tmp))],
            "eval_demo.py": ["--checkpoints", self.ckpt],
            "evaluator_blur.py": ["--evaluator", self.evaluator, "--preset", "demo",
                                  *sets(self.fields(tmp, outputs=True)), "--checkpoint", self.ckpt],
            "frame_strip.py": ["--checkpoint", self.ckpt],
            "serve_screenshot.py": ["--checkpoint", self.ckpt],
            "race.py": ["--evaluator", self.evaluator, "--run", "tiny", *self.fields(tmp, outputs=True)],
            "scale_demo.py": ["--evaluator", self.evaluator, "--run", "tiny", *self.fields(tmp, outputs=True)],
        }.get(script, [])
        return ["--smoke", *extra]


def launch(script: str, args: list[str], tmp: pathlib.Path) -> subprocess.CompletedProcess:
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmp"),
           "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, synth_dir, tiny_encoder):
    """script -> Future of its CompletedProcess, for the scripts whose tests were selected."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {}
    tiny = Tiny(synth_dir, tiny_encoder)

    def start(script: str) -> None:
        tmp = tmp_path_factory.mktemp(script.removesuffix(".py"))
        futures[script] = pool.submit(launch, script, tiny.arguments(script, tmp), tmp)

    for script in START_AT_ONCE:
        if script in selected:
            start(script)
    if not selected - set(futures):
        yield futures
        pool.shutdown(wait=True)
        return
    trained = tmp_path_factory.mktemp("smoke_checkpoint")
    overrides = sets(tiny_overrides(trained, synth_dir, tiny_encoder, **{
        "train.max_steps": 4, "train.checkpoint_every": 4, "train.tensorboard": False}))
    for command in (["train"], ["train-evaluator", "--set", "eval.evaluator_steps=5", "--set",
                                "eval.evaluator_dim=16"]):
        done = in_process(*command, *overrides)
        assert done.returncode == 0, done.stderr[-2000:]
    tiny.ckpt, tiny.cache = str(trained / "checkpoints" / "tiny" / "final.pt"), str(trained / "cache")
    tiny.evaluator = os.path.join(os.path.dirname(tiny.ckpt), "evaluator.pt")
    assert os.path.isfile(tiny.ckpt) and os.path.isfile(tiny.evaluator)
    for script in sorted(selected - set(futures), key=lambda s: (s not in SLOWEST_FIRST, s)):
        start(script)
    yield futures
    for future in futures.values():
        future.cancel()  # after a failure under -x: do not start the scripts still waiting
    pool.shutdown(wait=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_runs_with_its_smallest_setting(runs, script):
    done = runs[script].result()
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    figures = FIGURES.get(script, [rf"{NUMBER}"])
    missing = [f for f in figures if not re.search(f, done.stdout, re.MULTILINE)]
    assert not missing, f"{script} did not print {missing}:\n{done.stdout[-3000:]}"
