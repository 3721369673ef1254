"""Text2Sign command line: train, sample, train-evaluator, evaluate, config, synth-data.

Exit codes: 0 success, 2 usage / config / data errors (one line on stderr), 1 unexpected failure (traceback).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from config import PRESETS, Config, apply_overrides, build_config, format_config
from utils.errors import UserError

DEFAULT_PRESET = "demo"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"named configuration (default: {DEFAULT_PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 (repeatable)")


def ensure_data(cfg: Config) -> None:
    """The demo preset writes the built-in synthetic set when its folder has no GIFs yet."""
    dc = cfg.data
    if dc.synth_if_missing and not glob.glob(os.path.join(dc.data_dir, "*.gif")):
        from utils.synth import write_dataset

        print(f"no GIFs in {dc.data_dir}: writing the built-in synthetic sign set ({dc.synth_num} clips, "
              f"seed {dc.synth_seed})", file=sys.stderr)
        write_dataset(dc.data_dir, dc.synth_num, seed=dc.synth_seed, holdout=dc.synth_holdout,
                      command="python main.py train (demo preset)")


def cmd_train(args) -> int:
    from methods.checkpoint import load_checkpoint
    from methods.trainer import Trainer

    cfg = build_config(args.preset, args.overrides)
    state = None
    if args.resume is not None:
        path = args.resume or os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name, "latest.pt")
        state = load_checkpoint(path)
        # The run continues with the configuration it was started with; --set may still change fields.
        cfg = apply_overrides(Config.from_dict(state["config"]), args.overrides)
        cfg.validate()
        print(f"resuming {path} at step {state['step']} (epoch {state['epoch']})", file=sys.stderr)
    ensure_data(cfg)
    trainer = Trainer(cfg, resume=state)
    if trainer.step >= trainer.total_steps:
        print(f"nothing to do: step {trainer.step} already reached the {trainer.total_steps} steps configured "
              f"(raise train.max_steps or train.epochs with --set)", file=sys.stderr)
        return 0
    trainer.train()
    if trainer.interrupted:
        print(f"stopped at step {trainer.step}: {trainer.exp_dir}/latest.pt saved; continue with "
              f"`python main.py train --resume`", file=sys.stderr)
        return 130
    print(f"checkpoints: {trainer.exp_dir}\nsamples: {trainer.sample_dir}\nlogs: {trainer.run_dir}")
    return 0


def cmd_sample(args) -> int:
    from methods.sampling import generate, load_ema_model, sampling_settings, save_gifs
    from models.text_encoder import FrozenTextEncoder
    from utils.device import select_device

    device = select_device(args.device)
    cfg, model, diffusion, _ = load_ema_model(args.checkpoint, device)
    dc = cfg.diffusion
    steps, guidance = sampling_settings(dc, args.steps, args.guidance)
    if args.num_samples < 1:
        raise UserError("--num_samples must be >= 1")
    texts = [t for t in args.text for _ in range(args.num_samples)]
    text = FrozenTextEncoder(cfg.text.encoder, cfg.text.max_length, device).encode(texts)
    clips = generate(model, diffusion, text, cfg.data.num_frames, cfg.data.image_size, steps, args.sampler or
                     dc.sampler, dc.eta if args.eta is None else args.eta, guidance, seed=args.seed, device=device,
                     progress=True)
    out_dir = args.output_dir or os.path.join(cfg.train.sample_dir, cfg.train.exp_name)
    for path in save_gifs(clips, texts, out_dir, suffix=f"_seed{args.seed}"):
        print(path)
    return 0


def cmd_train_evaluator(args) -> int:
    from methods.evaluate import train_evaluator

    cfg = build_config(args.preset, args.overrides + ([f"data.data_dir={args.data}"] if args.data else []))
    ensure_data(cfg)
    info = train_evaluator(cfg)
    for name, c in info["checks"].items():
        if c:
            print(f"{name}: real R@1 {c['r1']:.3f} among {c['num_captions']} captions (chance {c['chance_r1']:.3f}); "
                  f"R@1 reversed {c['reversed_r1']:.3f}, shuffled {c['shuffled_r1']:.3f}; true order closer to "
                  f"the caption than reversed {c['reversed_order_acc']:.0%}, than shuffled "
                  f"{c['shuffled_order_acc']:.0%}", file=sys.stderr)
    print(info["path"])
    return 0


def cmd_evaluate(args) -> int:
    from methods.evaluate import evaluate

    report = evaluate(args.checkpoint, data_dir=args.data, split=args.split, num_captions=args.num_captions,
                      steps=args.steps, guidance=args.guidance, out=args.out, evaluator=args.evaluator,
                      seed=args.seed, device=args.device, batch_size=args.batch_size, samples=args.samples)
    for name, g in report["groups"].items():
        print(f"{name}: R@1 generated {g['generated_r1']:.3f} ± {g['generated_r1_se']:.3f} / real "
              f"{g['real_r1']:.3f} / chance {g['chance_r1']:.3f} ({g['num_captions']} captions x "
              f"{g['samples_per_caption']} samples); Frechet {g['frechet_distance']:.3f}; SSIM {g['ssim']:.3f}; "
              f"PSNR {g['psnr']:.2f} dB; frame change {g['temporal_change_generated']:.2f} vs real "
              f"{g['temporal_change_real']:.2f}", file=sys.stderr)
        for part, b in g["by_training"].items():
            print(f"  {part} in training: R@1 generated {b['generated_r1']:.3f} / real {b['real_r1']:.3f} "
                  f"({b['num_captions']} captions)", file=sys.stderr)
    print(report["json"])
    return 0


def cmd_config(args) -> int:
    print(format_config(build_config(args.preset, args.overrides)))
    return 0


def cmd_synth_data(args) -> int:
    from utils.synth import describe_vocab, write_dataset

    if args.list_words:
        print(describe_vocab())
        return 0
    if args.num < 1:
        raise UserError("--num must be >= 1")
    info = write_dataset(args.out, args.num, seed=args.seed, size=args.size, num_frames=args.frames,
                         holdout=args.holdout, command="python main.py " + " ".join(sys.argv[1:]))
    print(f"wrote {info['clips']} clips to {args.out}" + (f" (+{info['heldout']} held-out in "
                                                           f"{os.path.join(args.out, 'heldout')})"
                                                           if info.get("heldout") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Text2Sign: text-to-sign-video diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (the demo preset makes its own synthetic data)")
    add_config_args(p)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from PATH (default: checkpoints/<exp>/latest.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate GIFs for a caption from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", required=True, action="append", help="caption (repeat for several)")
    p.add_argument("--num_samples", type=int, default=1, help="clips per caption")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: diffusion.sample_steps)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
    p.add_argument("--eta", type=float, default=None, help="DDIM eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--output_dir", default=None, help="default: generated_samples/<exp>")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-evaluator", help="train the text<->video matching model that `evaluate` scores with")
    add_config_args(p)
    p.add_argument("--data", default=None, metavar="DIR", help="GIF + txt folder (default: data.data_dir)")
    p.set_defaults(func=cmd_train_evaluator)

    p = sub.add_parser("evaluate", help="does a checkpoint follow the text? retrieval, Frechet, SSIM/PSNR")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, metavar="DIR", help="default: the checkpoint's data.data_dir")
    p.add_argument("--split", default="val", help="val or train: the real clips and captions to use")
    p.add_argument("--num_captions", type=int, default=32, help="captions K (retrieval ranks among K)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: diffusion.sample_steps)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="default: generated_samples/<exp>/eval_step<N>_<split>.json")
    p.add_argument("--evaluator", default=None, metavar="PATH", help="default: evaluator.pt next to the checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=16,
                   help="clips sampled at once; speed only, each clip has its own seed")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="clips per caption: R@k averages over them and its standard error shrinks")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("config", help="print the resolved configuration")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("synth-data", help="write the built-in synthetic sign dataset (GIF + .txt)")
    p.add_argument("--out", default="training_data/synthetic")
    p.add_argument("--num", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="frame size in pixels")
    p.add_argument("--frames", type=int, default=24, help="frames per clip")
    p.add_argument("--holdout", type=int, default=0, help="word combinations kept out of training")
    p.add_argument("--list-words", action="store_true", help="print the vocabulary and its motions")
    p.set_defaults(func=cmd_synth_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
