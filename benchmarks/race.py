"""The architecture race: each run trains on the demo data for the same wall-clock budget, one at a time, then is
evaluated with the README's protocol, as one table.

    python main.py train-evaluator --set train.exp_name=race        # once: checkpoints/race/evaluator.pt
    python benchmarks/race.py --run dit model.arch=DiT-Demo/4 --run unet model.arch=UNet3D-Demo \
        [--budget 600] [--guidance 5] [--seeds 0 1 2] [--num_samples 4] [--out_dir generated_samples/race] [--smoke]

For each --run NAME FIELD=VALUE... (demo preset + those overrides, experiment race_NAME):
1. probe: a separate process times 20 training steps after 3 warm-up steps (steps/s of the real trainer);
2. train: `main.py train` with train.max_steps = steps/s x (budget - the probe's start-up time) x 0.88, so the
   cosine schedule ends inside the budget; still running at the budget it gets Ctrl-C and is marked "stopped";
3. evaluate: `evaluate` of final.pt on seen captions (--split train, 32 captions) and the held-out combinations, N
   samples per caption, for each caption draw (--seeds), at one guidance scale; draw by draw over the runs.
results.json keeps every number, so the phases can run separately (--phase train / eval / table) and a stopped
race continues where it was: runs already trained and draws already evaluated are not redone.
Prints one row per run: parameters, steps, steps/s, training minutes, peak resident memory of the training process,
and the means over the caption draws of R@1 (ratio to real), R@5, Frechet, SSIM, PSNR and frame change. The JSONs,
GIF grids and logs go to --out_dir; results.json holds every number. Checkpoints go where each run's config puts
them (checkpoints/race_NAME unless a FIELD=VALUE moves train.checkpoint_dir).
--smoke: checks the script in seconds, measures nothing: a probe of 1 + 2 steps, at most 2 training steps, one draw of
3 captions x 1 sample at 2 sampler steps, out_dir a temp folder; give tiny FIELD=VALUEs and --evaluator too
(tests/test_benchmarks.py does).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROBE = """
import json, sys, time
sys.path.insert(0, {root!r})
from methods.run_config import load_config
from methods.training.trainer import Trainer
cfg = load_config("demo", {overrides!r})
trainer = Trainer(cfg, quiet=True)
start = time.perf_counter() - {t0!r}
trainer.train(stop_at={warmup})
t0 = time.perf_counter()
trainer.train(stop_at={stop})
rate = {timed} / (time.perf_counter() - t0)
print(json.dumps(dict(rate=rate, startup=start, params=sum(p.numel() for p in trainer.model.parameters()))))
"""


def overrides_for(name: str, fields: list[str]) -> list[str]:
    return [f"train.exp_name=race_{name}", "train.tensorboard=true", *fields]


def run_child(cmd: list[str], log_path: str, deadline: float | None = None) -> tuple[int, float, float]:
    """(exit code, seconds, peak resident MB) of a child process; Ctrl-C at deadline seconds."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    stopped = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024
        if deadline and not stopped and time.perf_counter() - t0 > deadline:
            proc.send_signal(signal.SIGINT)  # the trainer saves latest.pt at the next step boundary
            stopped = True
        time.sleep(0.5)


def probe(name: str, fields: list[str], out_dir: str, warmup: int = 3, timed: int = 20) -> dict:
    tmp = os.path.join(out_dir, f"{name}_probe")
    fields = overrides_for(name, fields) + [
        f"train.checkpoint_dir={tmp}/ck", f"train.log_dir={tmp}/logs", f"train.sample_dir={tmp}/s",
        "train.sample_every=0", "train.tensorboard=false", "train.max_steps=100000"]
    code = PROBE.format(root=ROOT, overrides=fields, t0=time.perf_counter(), warmup=warmup, timed=timed,
                       stop=warmup + timed)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name}: probe failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def evaluate_seed(ckpt: str, args, name: str, seed: int) -> dict:
    """One caption draw: evaluate's groups (train = seen captions, heldout = unseen combinations), trimmed."""
    from methods.evaluation.evaluate import evaluate

    report = evaluate(ckpt, split="train", num_captions=args.num_captions, sampling={"guidance": args.guidance,
                                                                      "steps": args.sample_steps},
                      evaluator=args.evaluator, seed=seed, num_samples=args.num_samples, progress=False,
                      out=os.path.join(args.out_dir, name, f"seed{seed}_{protocol(args)}_train.json"))
    return {group: {k: g[k] for k in METRICS} for group, g in report["groups"].items()}


METRICS = ("generated_r1", "generated_r1_se", "real_r1", "generated_r5", "frechet_distance", "ssim", "psnr",
           "temporal_change_generated", "temporal_change_real")


def protocol(args) -> str:
    """The sampling protocol an evaluation used: draws are averaged only within one protocol."""
    return f"g{args.guidance:g}_s{args.sample_steps or 'cfg'}_n{args.num_samples}"


def means(r: dict, group: str, proto: str) -> dict | None:
    draws = [e[group] for key, e in r.get("evals", {}).items() if key.split("@")[1] == proto and group in e]
    if not draws:
        return None
    out = {k: sum(d[k] for d in draws) / len(draws) for k in METRICS}
    out["draws"] = len(draws)
    return out


def row(name: str, r: dict, proto: str) -> str:
    seen, held = means(r, "train", proto), means(r, "heldout", proto)

    def cell(g):
        if g is None:
            return "- | - | -"
        return (f"{g['generated_r1']:.2f} ({g['generated_r1'] / g['real_r1']:.2f}) | {g['generated_r5']:.2f} | "
                f"{g['frechet_distance']:.2f}")
    quality = (f"{seen['ssim']:.2f} | {seen['psnr']:.1f} | {seen['temporal_change_generated']:.1f} / "
               f"{seen['temporal_change_real']:.1f} | {seen['draws']}") if seen else "- | - | - | 0"
    peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] else "-"  # not measured for runs recorded from their logs
    return (f"| {name} | {r['arch']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['rate']:.2f} | "
            f"{r['train_s'] / 60:.1f}{' (stopped)' if r['stopped'] else ''} | {peak} | {cell(seen)} | "
            f"{cell(held)} | {quality} |")


HEADER = ("| run | arch | params | steps | probe steps/s | train min | peak MB | seen R@1 (ratio) | seen R@5 | "
          "seen Frechet | held-out R@1 (ratio) | held-out R@5 | held-out Frechet | SSIM | PSNR | "
          "frame change gen / real | caption draws |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def experiment_dir(name: str, fields: list[str]) -> str:
    """Where the run's trainer writes its checkpoints: its config's train.checkpoint_dir / train.exp_name."""
    from methods.run_config import load_config

    cfg = load_config("demo", overrides_for(name, fields))
    return os.path.join(ROOT, cfg.train.checkpoint_dir, cfg.train.exp_name)  # the trainer runs in ROOT


def train_run(name: str, fields: list[str], args) -> dict | None:
    pr = probe(name, fields, args.out_dir, *((1, 2) if args.smoke else (3, 20)))
    # 12% of the training time is left for the trainer's sample GIFs, checkpoints and a rate that drifts below the
    # probe's (measured: DiT-Demo/4 probed 1.6 steps/s and averaged 1.42 over its run)
    steps = int(pr["rate"] * (args.budget - pr["startup"]) * 0.88)
    steps = max(1, min(steps, 2)) if args.smoke else steps
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "train", "--preset", "demo"]
    for o in overrides_for(name, fields) + [f"train.max_steps={steps}"]:
        cmd += ["--set", o]
    rc, seconds, peak = run_child(cmd, os.path.join(args.out_dir, f"{name}.log"), deadline=args.budget)
    ckpt = os.path.join(experiment_dir(name, fields), "final.pt" if rc == 0 else "latest.pt")
    if not os.path.isfile(ckpt):
        print(f"{name}: training failed (exit {rc}), see {args.out_dir}/{name}.log", file=sys.stderr)
        return None
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    step, arch = state["step"], state["config"]["model"]["arch"]
    return dict(fields=fields, arch=arch, params=pr["params"], rate=pr["rate"], steps=step, train_s=seconds,
                stopped=rc != 0, peak_mb=peak, checkpoint=ckpt, evals={})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs="+", action="append", default=[], metavar=("NAME", "FIELD=VALUE"))
    p.add_argument("--phase", choices=("all", "train", "eval", "table"), default="all",
                   help="train: probe + train each --run not yet in results.json; eval: the missing caption draws "
                        "of each trained run (of --run, or all); table: print results.json")
    p.add_argument("--budget", type=float, default=600, help="wall-clock seconds of each training process")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="caption draws (evaluate --seed)")
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--sample_steps", type=int, default=None, help="DDIM steps (default: the checkpoint's, 50)")
    p.add_argument("--evaluator", default=os.path.join(ROOT, "checkpoints", "race", "evaluator.pt"))
    p.add_argument("--out_dir", default=None, help="default: generated_samples/race (a temp folder with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny probe, <= 2 steps, 3 captions: checks the script runs")
    args = p.parse_args()
    args.num_captions = 32
    if args.smoke:
        args.seeds, args.num_samples, args.num_captions = [0], 1, 3
        args.sample_steps = args.sample_steps or 2
    args.out_dir = args.out_dir or (tempfile.mkdtemp(prefix="t2s_race_") if args.smoke
                                    else os.path.join(ROOT, "generated_samples", "race"))
    os.makedirs(args.out_dir, exist_ok=True)
    results_path = os.path.join(args.out_dir, "results.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}

    def save():
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(results_path + ".tmp", results_path)

    if args.phase in ("all", "train"):
        for name, *fields in args.run:
            if name not in results:
                r = train_run(name, fields, args)
                if r:
                    results[name] = r
                    save()
                    print(f"{name}: {r['steps']} steps in {r['train_s'] / 60:.1f} min", flush=True)
    if args.phase in ("all", "eval"):
        if not os.path.isfile(args.evaluator):
            print(f"error: no evaluator at {args.evaluator}: run python main.py train-evaluator "
                  f"--set train.exp_name=race first", file=sys.stderr)
            return 2
        names = [run[0] for run in args.run] or list(results)
        for seed in args.seeds:  # draw by draw, so every run has its first draw before any has its third
            for name in names:
                key = f"{seed}@{protocol(args)}"
                if name in results and key not in results[name]["evals"]:
                    results[name]["evals"][key] = evaluate_seed(results[name]["checkpoint"], args, name, seed)
                    save()
                    print(row(name, results[name], protocol(args)), flush=True)
    print(f"\nprotocol {protocol(args)} (guidance, DDIM steps, samples per caption)\n" + HEADER)
    for name, r in results.items():
        print(row(name, r, protocol(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
