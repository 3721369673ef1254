"""What the demo needs to follow the text: several training runs at once, then `evaluate` of each, as one table.

    python main.py train-evaluator --set train.exp_name=scale                 # once: checkpoints/scale/evaluator.pt
    python benchmarks/scale_demo.py --run demo_6k train.max_steps=6000 \
        --run L_6k model.arch=DiT-Demo-L/4 train.max_steps=6000 train.lr=5e-4 \
        [--guidance 1 3 5] [--deadline 480] [--num_captions 32] [--num_samples 4] [--steps S] [--evaluator PATH] \
        [--out_dir DIR] [--smoke]

Each --run NAME FIELD=VALUE... trains `python main.py train --preset demo` with those overrides as experiment
scale_NAME, all runs concurrently (sized for a GPU: on a 2-core CPU give one run at a time). A run still going at
--deadline seconds gets Ctrl-C (the trainer saves latest.pt) and is evaluated where it stopped, marked "stopped".
Then benchmarks/eval_demo.py scores each run's last checkpoint on seen captions (--split train) and on the synthetic
set's held-out word combinations, at each guidance scale. Prints one line per run (steps, steps/s, minutes) and the
eval table; logs and eval JSONs go to --out_dir. Checkpoints go where each run's config puts them
(checkpoints/scale_NAME unless a FIELD=VALUE moves train.checkpoint_dir).
--smoke: checks the script in seconds, measures nothing: each run stops after 2 steps (train.max_steps=2 unless a
FIELD=VALUE sets it), 3 captions x 1 sample at 2 sampler steps, out_dir a temp folder; give tiny FIELD=VALUEs and
--evaluator too (tests/test_benchmarks.py does).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402


def run_overrides(name: str, overrides: list[str]) -> list[str]:
    return [f"train.exp_name=scale_{name}", *overrides]


def launch(name: str, overrides: list[str], out_dir: str, preset: str) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "train", "--preset", preset]
    for o in run_overrides(name, overrides):
        cmd += ["--set", o]
    with open(os.path.join(out_dir, f"{name}.log"), "w") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def last_checkpoint(name: str, overrides: list[str], preset: str) -> str | None:
    """final.pt or latest.pt where the run's config puts its checkpoints (train.checkpoint_dir / train.exp_name)."""
    from methods.run_config import load_config

    cfg = load_config(preset, run_overrides(name, overrides))
    folder = os.path.join(ROOT, cfg.train.checkpoint_dir, cfg.train.exp_name)  # the trainer runs in ROOT
    for f in ("final.pt", "latest.pt"):
        if os.path.isfile(os.path.join(folder, f)):
            return os.path.join(folder, f)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs="+", action="append", required=True, metavar=("NAME", "FIELD=VALUE"))
    p.add_argument("--preset", default="demo")
    p.add_argument("--deadline", type=float, default=480, help="seconds before unfinished runs are stopped")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    p.add_argument("--num_captions", type=int, default=32)
    p.add_argument("--num_samples", type=int, default=4, help="clips per caption (single samples swing by 0.1)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--evaluator", default=os.path.join("checkpoints", "scale", "evaluator.pt"))
    p.add_argument("--out_dir", default=None,
                   help="default: generated_samples/scale_demo (a temp folder with --smoke)")
    p.add_argument("--smoke", action="store_true", help="2 training steps, 3 captions: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.num_captions, args.num_samples, args.steps = 3, 1, args.steps or 2
        args.run = [[run[0], "train.max_steps=2", *run[1:]] for run in args.run]
    args.out_dir = args.out_dir or (tempfile.mkdtemp(prefix="t2s_scale_demo_") if args.smoke
                                    else os.path.join("generated_samples", "scale_demo"))
    args.out_dir, args.evaluator = os.path.abspath(args.out_dir), os.path.abspath(args.evaluator)  # children: in ROOT
    os.makedirs(args.out_dir, exist_ok=True)
    if not os.path.isfile(args.evaluator):
        print(f"error: no evaluator at {args.evaluator}: run python main.py train-evaluator first", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    procs = {run[0]: launch(run[0], run[1:], args.out_dir, args.preset) for run in args.run}
    ended: dict[str, tuple[float, int | None]] = {}
    stopping = False
    while len(ended) < len(procs):
        time.sleep(0.2 if args.smoke else 2)
        now = time.perf_counter() - t0
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = (now, proc.returncode)
        if now > args.deadline and not stopping:
            stopping = True
            for name, proc in procs.items():
                if name not in ended:
                    proc.send_signal(signal.SIGINT)  # the trainer saves latest.pt at the next step boundary

    print("| run | overrides | exit | steps | steps/s | minutes |\n|---|---|---|---|---|---|")
    checkpoints = {}
    for run in args.run:
        name, (seconds, rc) = run[0], ended[run[0]]
        ckpt = last_checkpoint(name, run[1:], args.preset)
        step = torch.load(ckpt, map_location="cpu", weights_only=True)["step"] if ckpt else 0
        status = "done" if rc == 0 else ("stopped" if rc == 130 else f"failed ({rc})")
        print(f"| {name} | {' '.join(run[1:])} | {status} | {step} | {step / seconds:.1f} | {seconds / 60:.1f} |")
        if ckpt:
            checkpoints[name] = ckpt

    evals = {}
    for name, ckpt in checkpoints.items():
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "eval_demo.py"), "--checkpoints", ckpt,
               "--split", "train", "--num_captions", str(args.num_captions), "--num_samples", str(args.num_samples),
               "--evaluator", args.evaluator, "--out_dir", os.path.join(args.out_dir, name),
               "--guidance", *map(str, args.guidance)]
        cmd += ["--steps", str(args.steps)] if args.steps else []
        evals[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    header_done = False
    for name, proc in evals.items():
        out, err = proc.communicate()
        lines = out.splitlines()
        if not header_done and len(lines) >= 2:
            print("\n| run " + lines[0] + "\n|---" + lines[1])
            header_done = True
        for line in lines[2:]:
            print(f"| {name} {line}")
        if proc.returncode:
            print(f"{name}: evaluation failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    print(f"\ntotal {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
