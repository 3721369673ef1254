"""Text2Sign command line: train, train-autoencoder, sample, train-evaluator, evaluate, export, serve, config,
data-stats, prepare-data, synth-data.

Exit codes: 0 success, 2 usage / config / data errors (one line on stderr), 1 unexpected failure (traceback),
130 / 143 training stopped by SIGINT (Ctrl-C) / SIGTERM after saving latest.pt (or aborted by a second signal).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

from config import add_config_args, format_config
from utils.errors import UserError

PEER_EXIT_DELAY_S = 5.0  # seconds a rank stopped by another rank's failure waits to exit (torchrun ends it sooner)


def cmd_train(args) -> int:
    from data.synth import ensure_data
    from methods.checkpoint import load_checkpoint
    from methods.run_config import config_from_checkpoint, load_config
    from methods.training.experiment import refuse_to_overwrite
    from methods.training.trainer import Trainer
    from utils.device import select_device
    from utils.distributed import PeerFailed, close_world, init_world, launcher_world, main_first

    cfg = load_config(args.preset, args.overrides)
    state = None
    if args.resume is not None:
        path = args.resume or os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name, "latest.pt")
        state = load_checkpoint(path)
        # The run continues with the configuration it was started with; --set may still change fields.
        cfg = config_from_checkpoint(state, args.overrides)
        if launcher_world().is_main:
            print(f"resuming {path} at step {state['step']} (epoch {state['epoch']})", file=sys.stderr)
    else:  # said at once, before minutes of data decoding; the trainer checks again under the experiment's lock
        refuse_to_overwrite(os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name))
    world = init_world(select_device(cfg.train.device, launcher_world().local_rank))  # under torchrun: join the job
    try:
        with main_first(world):  # one process writes the demo data
            ensure_data(cfg.data)
        return train(Trainer(cfg, resume=state, world=world))
    except PeerFailed:  # the failing rank said why: it closes the group and exits first, so torchrun names it the
        time.sleep(PEER_EXIT_DELAY_S)  # root cause (closing both ends of gloo at once once aborted it, SIGABRT)
        raise
    finally:
        close_world()


def cmd_train_autoencoder(args) -> int:
    from data.synth import ensure_data
    from methods.run_config import config_from_checkpoint, load_config
    from methods.training.autoencoder import SUFFIX, load_run_state, train_autoencoder

    cfg = load_config(args.preset, args.overrides)
    state = None
    if args.resume is not None:
        path = args.resume or os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name + SUFFIX, "latest.pt")
        state = load_run_state(path)
        cfg = config_from_checkpoint(state, args.overrides)  # the run's own configuration; --set may change fields
        print(f"resuming {path} at step {state['step']}", file=sys.stderr)
    ensure_data(cfg.data)
    info = train_autoencoder(cfg, resume=state)
    if info["stopped"]:
        print(f"stopped by {signal.Signals(info['stopped_by']).name} at step {info['step']}: {info['exp_dir']}/"
              f"latest.pt saved; continue with `python main.py train-autoencoder --resume`", file=sys.stderr)
        return 128 + info["stopped_by"]
    print(f"{info['scored_on']} frames ({info['frames']}): PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}; "
          f"latents mean {info['latent_mean']:.3f}, std {info['latent_std']:.3f}, roughness "
          f"{info['latent_roughness']:.2f}; strip: {info['strip']}\n"
          f"use it with: --set autoencoder.kind=own --set autoencoder.path={info['path']}", file=sys.stderr)
    print(info["path"])
    return 0


def train(trainer) -> int:
    """Run a built trainer and report how it ended (rank 0 reports; every rank returns the same exit code)."""
    say = trainer.world.is_main
    if trainer.step >= trainer.total_steps:
        trainer.train()  # trains nothing: takes the folder's lock and clears what a run killed at its end left
        if say:
            print(f"nothing to do: step {trainer.step} already reached the {trainer.total_steps} steps configured "
                  f"(raise train.max_steps or train.epochs with --set)", file=sys.stderr)
        return 0
    trainer.train()
    if trainer.interrupted:
        name = signal.Signals(trainer.stop_signal or signal.SIGINT).name
        if say and trainer.stop_saved:
            print(f"stopped by {name} at step {trainer.step}: {trainer.exp_dir}/latest.pt saved; continue with "
                  f"`python main.py train --resume`", file=sys.stderr)
        elif say:
            print(f"stopped by {name} at step {trainer.step}, but latest.pt could not be saved (see the warning "
                  f"above); {trainer.last_checkpoint_text()}", file=sys.stderr)
        return 128 + (trainer.stop_signal or signal.SIGINT)
    if say:
        print(f"checkpoints: {trainer.exp_dir}\nsamples: {trainer.sample_dir}\nlogs: {trainer.run_dir}")
    return 0


def sampling_flags(args) -> dict:
    """The sampling flags `sample` and `evaluate` share, for SamplingSettings.resolve."""
    return dict(steps=args.steps, guidance=args.guidance, sampler=args.sampler, eta=args.eta,
                noise_correlation=args.noise_correlation)


def cmd_sample(args) -> int:
    from methods.pipeline import SignPipeline
    from methods.sampling import sample_seed
    from utils.device import select_device
    from utils.folders import check_output_dirs

    if args.num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if not all(t.strip() for t in args.text):
        raise UserError("--text must not be empty or only spaces")
    pipe = SignPipeline.from_pretrained(args.checkpoint or args.model, select_device(args.device),
                                        autoencoder=args.autoencoder)
    settings = pipe.settings(**sampling_flags(args))
    pipe.warn_unknown_words(args.text)
    out_dir = args.output_dir or os.path.join(pipe.cfg.train.sample_dir, pipe.cfg.train.exp_name)
    check_output_dirs({"--output_dir": out_dir})  # before minutes of sampling
    jobs = [(text, j) for text in args.text for j in range(args.num_samples)]
    texts = [text for text, _ in jobs]
    clips = pipe(texts, seeds=[sample_seed(args.seed, t, j) for t, j in jobs], settings=settings,
                 batch_size=args.batch_size, progress=True)
    for path in pipe.save(clips, texts, out_dir, suffix=f"_seed{args.seed}"):
        print(path)
    return 0


def cmd_train_evaluator(args) -> int:
    from data.synth import ensure_data
    from methods.run_config import load_config
    from methods.evaluation.training import train_evaluator

    overrides = args.overrides + ([f"data.data_dir={args.data}"] if args.data else [])
    if args.checkpoint:  # the data settings (folder, frames, size, preprocessing) the model was trained with
        from methods.checkpoint import load_checkpoint
        from methods.run_config import config_from_checkpoint

        cfg = config_from_checkpoint(load_checkpoint(args.checkpoint), overrides)
    else:
        cfg = load_config(args.preset, overrides)
    ensure_data(cfg.data)
    info = train_evaluator(cfg)
    if os.path.realpath(info["trained_on"]) != os.path.realpath(info["data_dir"]):
        print(f"trained on an independent render ({info['trained_on']}): it never saw the clips of "
              f"{info['data_dir']} it will score", file=sys.stderr)
    moved = (("reversed", "reversed"), ("shuffled", "shuffled"), ("shape", "handshapes swapped"),
             ("path", "paths swapped"))
    for name, c in info["checks"].items():
        if c:
            shown = [(k, label) for k, label in moved if f"{k}_r1" in c]
            print(f"{name}: real R@1 {c['r1']:.3f} among {c['num_captions']} captions (chance {c['chance_r1']:.3f}); "
                  "R@1 " + ", ".join(f"{label} {c[k + '_r1']:.3f}" for k, label in shown) + "; the true clip closer "
                  "to its caption than " + ", ".join(f"{label} {c[k + '_order_acc']:.0%}" for k, label in shown),
                  file=sys.stderr)
    print(info["path"])
    return 0


def cmd_evaluate(args) -> int:
    from methods.evaluation.evaluate import evaluate
    from methods.ground_truth import HEADLINE as GROUND_TRUTH_PRINTED

    report = evaluate(args.checkpoint or args.model, data_dir=args.data, split=args.split,
                      num_captions=args.num_captions,
                      sampling=sampling_flags(args), num_samples=args.num_samples, seed=args.seed, out=args.out,
                      evaluator=args.evaluator, device=args.device, batch_size=args.batch_size,
                      autoencoder=args.autoencoder)
    for name, g in report["groups"].items():
        print(f"{name}: R@1 generated {g['generated_r1']:.3f} ± {g['generated_r1_se']:.3f} / real "
              f"{g['real_r1']:.3f} / chance {g['chance_r1']:.3f} ({g['num_captions']} captions x "
              f"{g['samples_per_caption']} samples); Frechet {g['frechet_distance']:.3f}; SSIM {g['ssim']:.3f}; "
              f"PSNR {g['psnr']:.2f} dB; frame change {g['temporal_change_generated']:.2f} vs real "
              f"{g['temporal_change_real']:.2f}", file=sys.stderr)
        for part, b in g["by_training"].items():
            print(f"  {part} in training: R@1 generated {b['generated_r1']:.3f} / real {b['real_r1']:.3f} "
                  f"({b['num_captions']} captions)", file=sys.stderr)
        nn_real = (f"{g['nn_real_r1']:.3f} ({g['nn_real_captions']} captions with a second real clip)"
                   if g["nn_real_r1"] is not None else "n/a (no caption has a second real clip)")
        print(f"  training-free (nearest real clip in fixed pixel features): R@1 generated {g['nn_generated_r1']:.3f} "
              f"/ real {nn_real}; KID {g['kid']:.4f} (evaluator space), {g['kid_fixed']:.4f} (pixel features)",
              file=sys.stderr)
        if g["reconstructed_r1"] is not None:
            print(f"  real clips through the autoencoder (the latent space's ceiling): R@1 "
                  f"{g['reconstructed_r1']:.3f}; SSIM {g['reconstructed_ssim']:.3f}; PSNR "
                  f"{g['reconstructed_psnr']:.2f} dB", file=sys.stderr)
        gt = g.get("ground_truth")
        if gt and gt.get("captions"):
            print("  ground truth (" + str(gt["captions"]) + " captions; generated / real): " + "; ".join(
                f"{k} {gt['generated'][k]:.2f} / {gt['real'][k]:.2f}" for k in GROUND_TRUTH_PRINTED), file=sys.stderr)
    if report["evaluator_saw_scored_clips"]:
        print(f"note: the evaluator trained on these real clips ({report['split']} split of {report['data_dir']}): "
              f"its real R@1 is memorised. Score --split val (on a synthetic set, `train-evaluator` with "
              f"eval.evaluator_render=true, the default, trains on a render of its own)", file=sys.stderr)
    print(report["json"])
    return 0


def cmd_export(args) -> int:
    from methods.sharing.export import export

    info = export(args.checkpoint, args.out, evaluation=args.evaluation, captions=args.text, samples=args.samples,
                  device=args.device, command=args.command_line)
    for name in info["files"]:
        print(os.path.join(info["out_dir"], name))
    return 0


def cmd_serve(args) -> int:
    from methods.sharing.serve import serve
    from utils.device import select_device

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535] (0: any free port), got {args.port}")
    out_dir = args.output_dir or os.path.join("generated_samples", "serve")
    try:
        serve(args.checkpoint or args.model, args.host, args.port, out_dir, select_device(args.device))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def cmd_config(args) -> int:
    from methods.run_config import load_config

    print(format_config(load_config(args.preset, args.overrides)))
    return 0


def cmd_data_stats(args) -> int:
    from methods.run_config import load_config
    from methods.data_prep.data_stats import data_stats, format_report
    from utils.folders import check_output_dirs

    if args.sheet_clips < 1:
        raise UserError("--sheet-clips must be >= 1")
    cfg = load_config(args.preset, args.overrides)
    sheet = args.sheet or os.path.join(cfg.train.sample_dir, cfg.train.exp_name, "contact_sheet.png")
    check_output_dirs({"--sheet": os.path.dirname(os.path.abspath(sheet))})
    print(format_report(data_stats(cfg, sheet, args.sheet_clips, args.seed)))
    return 0


def cmd_prepare_data(args) -> int:
    from methods.data_prep.prepare_data import prepare_data

    options = dict(video_col=args.video_col, caption_col=args.caption_col, start_col=args.start_col,
                   end_col=args.end_col, delimiter=args.delimiter, caption_field=args.caption_field, crop=args.crop,
                   caption_from_stem=args.caption_from_stem)
    s = prepare_data(args.fmt, args.manifest, args.videos, args.out, args.workers, args.max_size,
                     args.normalize_captions, options)
    reasons = "".join(f"\n  {n} x {why}" for why, n in s["skipped_by_reason"].items())
    print(f"{s['out_dir']}: {s['converted']} clips converted, {s['already_done']} already there, {s['skipped']} "
          f"skipped{':' if reasons else ''}{reasons}")
    if s["skipped_files"]:
        print("skipped: " + "; ".join(f"{name} ({why})" for name, why in s["skipped_files"][:20])
              + (f"; and {len(s['skipped_files']) - 20} more" if len(s["skipped_files"]) > 20 else ""))
    if s["sheet"]:
        print(f"contact sheet: {s['sheet']}\nnext: python main.py data-stats --preset real --set data.data_dir="
              f"{s['out_dir']}")
    return 0


def cmd_synth_data(args) -> int:
    from data.synth import describe_vocab, usable_cpus, write_dataset
    from data.folder import HELDOUT_DIR

    if args.list_words:
        print(describe_vocab())
        return 0
    if args.num < 1:
        raise UserError("--num must be >= 1")
    info = write_dataset(args.out, args.num, seed=args.seed, size=args.size, num_frames=args.frames,
                         holdout=args.holdout, command=args.command_line,
                         workers=usable_cpus())
    print(f"wrote {info['clips']} clips to {args.out}" + (f" (+{info['heldout']} held-out in "
                                                           f"{os.path.join(args.out, HELDOUT_DIR)})"
                                                           if info.get("heldout") else ""))
    return 0


def add_model_source(p: argparse.ArgumentParser) -> None:
    """--checkpoint (a training checkpoint) or --model (a folder `export` wrote): one of them."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="a training checkpoint (checkpoints/<exp>/latest.pt)")
    source.add_argument("--model", metavar="DIR", help="an exported model folder (python main.py export)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The flags of every command that generates clips (`sample`, `evaluate`), with the same names and meaning."""
    p.add_argument("--num_samples", type=int, default=1, help="clips per caption")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: diffusion.sample_steps)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: diffusion.guidance_scale)")
    p.add_argument("--sampler", default=None, help="ddim, dpm++2m or ddpm (default: diffusion.sampler)")
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (default: diffusion.eta)")
    p.add_argument("--noise_correlation", type=float, default=None,
                   help="share of the noise a clip's frames have in common, in [0, 1); higher flickers less "
                        "(default: diffusion.sample_noise_correlation)")
    p.add_argument("--seed", type=int, default=0, help="clip j of caption c draws its noise from (seed, c, j)")
    p.add_argument("--autoencoder", default=None, metavar="DIR",
                   help="a latent model: decode with this autoencoder folder instead of the one it names; another "
                        "decoder of the same encoder (said if the encoder differs), see docs/latent.md")
    p.add_argument("--batch_size", type=int, default=16,
                   help="clips sampled at once (bounds memory); each clip has its own seed, so the clips do not change")
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Text2Sign: text-to-sign-video diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (the demo preset makes its own synthetic data)")
    add_config_args(p)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from PATH (default: checkpoints/<exp>/latest.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-autoencoder", help="train the own frame autoencoder (latent diffusion) on the data's "
                                                 "frames; prints its folder for autoencoder.path")
    add_config_args(p)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from PATH (default: checkpoints/<exp>-autoencoder/latest.pt)")
    p.set_defaults(func=cmd_train_autoencoder)

    p = sub.add_parser("sample", help="generate GIFs for a caption from a checkpoint or an exported model")
    add_model_source(p)
    p.add_argument("--text", required=True, action="append", help="caption (repeat for several)")
    add_sampling_args(p)
    p.add_argument("--output_dir", default=None, help="default: generated_samples/<exp>")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-evaluator", help="train the text<->video matching model that `evaluate` scores with")
    add_config_args(p)
    p.add_argument("--data", default=None, metavar="DIR", help="clip + txt folder (default: data.data_dir)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="take the data settings and experiment from this training checkpoint instead of --preset")
    p.set_defaults(func=cmd_train_evaluator)

    p = sub.add_parser("evaluate", help="does a checkpoint follow the text? retrieval, Frechet, SSIM/PSNR")
    add_model_source(p)
    p.add_argument("--data", default=None, metavar="DIR", help="default: the checkpoint's data.data_dir")
    p.add_argument("--split", default="val", help="val or train: the real clips and captions to use")
    p.add_argument("--num_captions", type=int, default=32, help="captions K (retrieval ranks among K)")
    add_sampling_args(p)
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="default: generated_samples/<exp>/eval_step<N>_<split>.json")
    p.add_argument("--evaluator", default=None, metavar="PATH",
                   help="default: evaluator.pt next to the checkpoint (in the --model folder)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="a checkpoint -> a folder to share: safetensors weights, config.json, model card")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder (or an earlier export)")
    p.add_argument("--evaluation", default=None, metavar="FILE.json", help="an `evaluate` report for the card")
    p.add_argument("--text", action="append", default=None,
                   help="a caption for the card's sample GIFs (repeat; default: the run's sample prompts)")
    p.add_argument("--no-samples", dest="samples", action="store_false", help="no sample GIFs (no text encoder)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a local web page that signs what you type")
    add_model_source(p)
    p.add_argument("--port", type=int, default=7860, help="0: any free port (printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on: loopback unless you name another (0.0.0.0: every interface)")
    p.add_argument("--output_dir", default=None, help="where the clips go (default: generated_samples/serve)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="print the resolved configuration")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data-stats", help="what a data folder holds (counts, captions, durations, sizes, skips) and "
                                          "a contact sheet of clips as the model sees them")
    add_config_args(p)
    p.add_argument("--sheet", default=None, metavar="FILE.png",
                   help="default: <sample_dir>/<exp>/contact_sheet.png")
    p.add_argument("--sheet-clips", dest="sheet_clips", type=int, default=16, help="clips on the contact sheet")
    p.add_argument("--seed", type=int, default=0, help="which clips the contact sheet shows")
    p.set_defaults(func=cmd_data_stats)

    from data.manifests import FORMATS

    p = sub.add_parser("prepare-data", help="videos + a manifest (How2Sign, ASL Citizen, WLASL, PHOENIX-2014-T, "
                                            "a CSV / JSON, or a folder) into the clip + caption folder `train` reads")
    p.add_argument("--from", dest="fmt", required=True, choices=FORMATS)
    p.add_argument("--manifest", default=None, metavar="PATH", help="the data set's CSV / TSV / JSON (not for folder)")
    p.add_argument("--videos", required=True, metavar="DIR",
                   help="the videos (PHOENIX: the split's frame folder, e.g. features/fullFrame-210x260px/train)")
    p.add_argument("--out", required=True, metavar="DIR", help="the caption folder to write (resumable)")
    p.add_argument("--workers", type=int, default=1, help="processes converting clips in parallel")
    p.add_argument("--max-size", dest="max_size", type=int, default=256, help="longer side of the written clips")
    p.add_argument("--normalize-captions", dest="normalize_captions", action="store_true",
                   help="lower case, punctuation out (as data.caption_normalize)")
    p.add_argument("--video-col", dest="video_col", default=None, help="csv / json: the video file column (video)")
    p.add_argument("--caption-col", dest="caption_col", default=None, help="csv / json: the caption column (caption)")
    p.add_argument("--start-col", dest="start_col", default=None, help="csv: start time column (seconds)")
    p.add_argument("--end-col", dest="end_col", default=None, help="csv: end time column (seconds)")
    p.add_argument("--delimiter", default=None, help="csv: the separator (default: sniffed from the header)")
    p.add_argument("--caption-field", dest="caption_field", default="translation", choices=("translation", "orth"),
                   help="phoenix: the German sentence (translation) or the glosses (orth)")
    p.add_argument("--crop", action="store_true", help="wlasl: crop each clip to its signer bounding box")
    p.add_argument("--caption-from-stem", dest="caption_from_stem", action="store_true",
                   help="folder: a video without a .txt takes its file name as caption")
    p.set_defaults(func=cmd_prepare_data)

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
    from utils.distributed import PeerFailed, rank_prefix, reports_errors

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.command_line = "python main.py " + shlex.join(argv)  # what a folder's owner mark says made it
    try:
        return args.func(args)
    except UserError as err:
        if reports_errors():
            print(f"{rank_prefix()}error: {err}", file=sys.stderr)
        return 2
    except PeerFailed:  # another rank failed and said why (cmd_train let it exit first)
        return 2
    except KeyboardInterrupt as err:  # a second stop signal during training, or Ctrl-C anywhere else
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name}): nothing saved", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    from utils.distributed import exit_process

    exit_process(main())
