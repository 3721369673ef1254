"""Latent diffusion on real sign footage, end to end: pick clips, train the autoencoder, train the latent model, train
the evaluator on the real clips, evaluate on decoded pixels, draw a frame strip.

    python benchmarks/latent_realdev.py --subset thai64 --steps 3000 [--autoencoder DIR] [--ae-steps 500]
        [--evaluator PATH] [--draws 3] [--guidance G ...] [--size 64] [--down 4] [--set FIELD=VALUE ...]
        [--ae-set FIELD=VALUE ...] [--work DIR] [--pixels] [--sample-steps N] [--clips DIR] [--smoke]

Reads the clips from ../shared/realdev/clips (453 real Thai and British Sign Language clips, 128 px, with captions):
development and measurement only, never copied into the project or its tests (--clips DIR reads them from another
place, e.g. a copy on a GPU machine outside this checkout's parent). The chosen clips are copied into --work
(default: a temp folder outside the project). Subsets: thai64 (the 64 Thai words of THAI64, one clip each), thai (all
344 Thai clips), all (all 453). Each stage is the real CLI (`train-autoencoder`, `train`, `train-evaluator`,
`evaluate --split train`), timed; the R@1 of generated clips is scored by an evaluator trained on the real clips'
pixels, and SSIM / PSNR / frame change compare decoded generated clips with the real clip of their caption; the same
R@1 and SSIM of the real clips encoded and decoded by the autoencoder are the latent space's ceiling. --guidance G1 G2
scores the same trained model at each classifier-free guidance scale (default: the preset's). --autoencoder reuses a
trained one (its folder) instead of training. --pixels trains the same recipe on pixels (`autoencoder.kind=none`, no
autoencoder stage, no ceiling): the other side of the latent-against-pixel race. --sample-steps N scores with N
sampler steps instead of the checkpoint's own (10 for `real`). --smoke: a tiny synthetic folder, a few steps of each
stage, so the script is checked in seconds; it measures nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import real  # noqa: E402  (the preset the benchmark measures)
REALDEV = os.path.join(ROOT, "..", "shared", "realdev", "clips")
# 64 Thai dictionary words with one clip each, evenly spaced through the alphabetical list of such captions
THAI64 = [
    "activity", "already", "approve", "backhome", "bend", "bone", "can", "cheat", "compensation", "contractor", "coup",
    "deaf", "defendant", "discount", "doctor", "duty", "employment contract", "england first position", "face mask",
    "fine", "freedom", "go", "group of persons", "hat yai district", "hod district", "i", "inhaler",
    "intellectual property", "juristic person", "koh samui", "latvia", "legal act", "lessor lease", "loan",
    "mam jokmok", "mediation", "minor offense", "nasal spray", "no", "opposite", "patent", "personal property",
    "please", "politician", "price", "prosecutor", "regulation", "romania", "see", "sereepisuth temeeyaves",
    "slovakia", "sore", "straight", "sukhumvit", "tajikistan", "tham jao ram tham phra ram cave", "tired", "turkey",
    "void transaction", "wait", "wave hello", "what", "wife", "withholding tax"]


def pick_clips(subset: str, src: str, dest: str) -> int:
    """Copy the subset's clip + caption pairs from src into dest; returns how many."""
    os.makedirs(dest, exist_ok=True)
    wanted = set(THAI64)
    n = 0
    for name in sorted(os.listdir(src)):
        stem, ext = os.path.splitext(name)
        if ext != ".txt" or (subset != "all" and not stem.startswith("thai_")):
            continue
        with open(os.path.join(src, name), encoding="utf-8") as f:
            caption = f.read().strip()
        if subset == "thai64" and caption not in wanted:
            continue
        wanted.discard(caption)  # one clip per word
        for part in (name, stem + ".mp4"):
            shutil.copy(os.path.join(src, part), os.path.join(dest, part))
        n += 1
    return n


def cli(*args: str, log: str) -> float:
    """Run `python main.py ARGS`, its output appended to log; seconds taken. A failure ends the benchmark."""
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ python main.py " + " ".join(args) + "\n")
        f.flush()
        done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], stdout=f, stderr=f, cwd=ROOT)
    if done.returncode:
        sys.exit(f"`main.py {args[0]}` failed (exit {done.returncode}): see {log}")
    return time.perf_counter() - t0


def last_line(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()][-1]


def ceiling(scores: dict) -> str:
    """The real clips through the autoencoder (the latent space's ceiling); a pixel model has none."""
    if scores["reconstructed_r1"] is None:
        return "; pixel model: no autoencoder ceiling"
    return (f"; real clips through the autoencoder (the ceiling): R@1 {scores['reconstructed_r1']:.3f}, SSIM "
            f"{scores['reconstructed_ssim']:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", default="thai64", choices=("thai64", "thai", "all"))
    p.add_argument("--steps", type=int, default=None, help="latent training steps (default: the real preset's "
                   "train.max_steps)")
    p.add_argument("--autoencoder", default=None, metavar="DIR", help="a trained autoencoder folder to reuse")
    p.add_argument("--ae-steps", dest="ae_steps", type=int, default=None,
                   help="autoencoder training steps (default: the real preset's autoencoder.steps)")
    p.add_argument("--evaluator", default=None, metavar="PATH",
                   help="an evaluator.pt trained on the same subset to reuse (it is trained on the real clips only); "
                        "the model is scored on the clip folder it was trained on")
    p.add_argument("--draws", type=int, default=3, help="caption draws (evaluate --seed 0..N-1), averaged")
    p.add_argument("--guidance", type=float, nargs="+", default=[None],
                   help="guidance scales to score the trained model at, each over every draw (default: the preset's)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--down", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="more overrides for the latent training run")
    p.add_argument("--ae-set", dest="ae_overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="more overrides for the autoencoder's training run")
    p.add_argument("--work", default=None, help="where clips, checkpoints and logs go (default: a temp folder)")
    p.add_argument("--pixels", action="store_true", help="train on pixels (autoencoder.kind=none): no autoencoder")
    p.add_argument("--sample-steps", dest="sample_steps", type=int, default=None,
                   help="sampler steps of evaluate (default: the checkpoint's)")
    p.add_argument("--clips", default=REALDEV, metavar="DIR", help="the realdev clip + caption folder (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data, a few steps: checks the script runs")
    args = p.parse_args()
    if not args.smoke and not os.path.isdir(args.clips):
        sys.exit(f"no realdev clips at {args.clips}: name their folder with --clips DIR")

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="latent_realdev_"))
    data, log = os.path.join(work, "clips"), os.path.join(work, "log.txt")
    os.makedirs(work, exist_ok=True)
    if args.smoke:
        from data.synth import write_dataset

        write_dataset(data, 6, seed=0, size=32, num_frames=8)
        n = 6
        print(f"smoke: 6 synthetic clips in {data}")
    else:
        n = pick_clips(args.subset, args.clips, data)
        print(f"reading {args.clips} (real footage: development and measurement only); {n} clips of subset "
              f"{args.subset} copied to {data}")
    size, frames = (16, 4) if args.smoke else (args.size, 16)
    common = [f"data.data_dir={data}", f"data.image_size={size}", f"data.num_frames={frames}",
              f"data.cache_dir={work}/cache", f"train.checkpoint_dir={work}/checkpoints", f"train.log_dir={work}/logs",
              f"train.sample_dir={work}/samples", "train.exp_name=latent", f"autoencoder.down={args.down}"]
    if args.smoke:
        common += ["text.encoder=all-MiniLM-L6-v2", "autoencoder.width=8", "autoencoder.crop=8",
                   "model.arch=UNet3D-Test"]
    sets = [a for kv in common for a in ("--set", kv)]
    times = {}
    ae = args.autoencoder
    if ae is None and not args.pixels:
        ae_steps = ["--set", "autoencoder.steps=3", "--set", "autoencoder.decoder_steps=2"] if args.smoke else (
            ["--set", f"autoencoder.steps={args.ae_steps}"] if args.ae_steps else [])
        ae_sets = [a for kv in args.ae_overrides for a in ("--set", kv)]
        times["autoencoder"] = cli("train-autoencoder", "--preset", "real", *sets, *ae_steps, *ae_sets, log=log)
        ae = last_line(log)
        print(f"autoencoder: {times['autoencoder']:.0f} s -> {ae}; " + ", ".join(
            line for line in open(log, encoding="utf-8").read().splitlines() if "PSNR" in line)[-200:])
    steps = 4 if args.smoke else args.steps or real().train.max_steps
    space = ["--set", "autoencoder.kind=none"] if args.pixels else [
        "--set", "autoencoder.kind=own", "--set", f"autoencoder.path={ae}"]
    latent = [*space, "--set", f"train.max_steps={steps}", "--set", f"train.sample_every={steps}",
              "--set", f"train.checkpoint_every={steps}"]
    extra = [a for kv in args.overrides for a in ("--set", kv)]
    stage = "pixel training" if args.pixels else "latent training"
    times[stage] = cli("train", "--preset", "real", *sets, *latent, *extra, log=log)
    print(f"{stage}: {steps} steps in {times[stage]:.0f} s ({times[stage] / steps:.2f} s/step including start-up)")
    ckpt = os.path.join(work, "checkpoints", "latent", "final.pt")
    evaluator, same_clips = args.evaluator, []
    if evaluator is not None:  # it was trained on another work folder's copy of the clips: score on that copy
        from methods.evaluation.store import load_evaluator

        same_clips = ["--data", load_evaluator(evaluator)[1].get("data_dir", data)]
    else:
        ev_steps = ["--set", "eval.evaluator_steps=5"] if args.smoke else []
        times["evaluator"] = cli("train-evaluator", "--checkpoint", ckpt, *ev_steps, log=log)
        evaluator = os.path.join(os.path.dirname(ckpt), "evaluator.pt")
    num = ["--num_captions", "4", "--steps", "2"] if args.smoke else ["--num_captions", str(min(n, 32))]
    if args.sample_steps and not args.smoke:
        num += ["--steps", str(args.sample_steps)]
    for guidance in args.guidance:
        draws, tag = [], "" if guidance is None else f"_g{guidance:g}"
        for seed in range(1 if args.smoke else args.draws):
            report = os.path.join(work, f"eval_draw{seed}{tag}.json")
            scale = [] if guidance is None else ["--guidance", str(guidance)]
            times[f"evaluate draw {seed}{tag}"] = cli("evaluate", "--checkpoint", ckpt, "--split", "train", "--seed",
                                                      str(seed), "--evaluator", evaluator, *same_clips, *num, *scale,
                                                      "--out", report, log=log)
            with open(report, encoding="utf-8") as f:
                g = json.load(f)["groups"]["train"]
            draws.append(g)
            print(f"draw {seed}{tag} ({g['num_captions']} train captions): R@1 generated {g['generated_r1']:.3f} / "
                  f"real {g['real_r1']:.3f}; SSIM {g['ssim']:.3f}; PSNR {g['psnr']:.2f} dB; frame change "
                  f"{g['temporal_change_generated']:.2f} vs real {g['temporal_change_real']:.2f}" + ceiling(g))
        mean = {k: sum(g[k] for g in draws) / len(draws) if draws[0][k] is not None else None for k in
                ("generated_r1", "real_r1", "ssim", "psnr", "temporal_change_generated", "temporal_change_real",
                 "reconstructed_r1", "reconstructed_ssim")}
        print(f"mean of {len(draws)} draws{tag}: R@1 generated {mean['generated_r1']:.3f} / real {mean['real_r1']:.3f} "
              f"(ratio {mean['generated_r1'] / max(mean['real_r1'], 1e-9):.2f}); SSIM {mean['ssim']:.3f}; PSNR "
              f"{mean['psnr']:.2f} dB; frame change {mean['temporal_change_generated']:.2f} vs real "
              f"{mean['temporal_change_real']:.2f}" + ceiling(mean))
    print("wall-clock: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"grids (real | generated) in {work}/eval_draw0*_grids; log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
