"""`main.py evaluate`: does a checkpoint follow the text?

For K captions of a split (and of the held-out combinations), generates N clips per caption and reports caption
retrieval (R@1 with its standard error, R@5) of generated vs real clips vs chance, the Frechet distance in the
evaluator's embedding space, SSIM / PSNR against the real clip of the same caption and the mean frame-to-frame
change, and for a latent model the same scores of the real clips through its autoencoder (metrics.py); writes a
JSON, TensorBoard scalars and one real | generated GIF grid per caption.
Three steps: `generate_clips` (every clip's noise comes from methods.sampling.sample_seed, so a caption's clips do
not depend on the other captions of the run), `score_groups`, `write_report`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from dataset import SignDataset
from methods import ground_truth
from methods.evaluation.captions import heldout_set, other_clips, pick_captions, training_captions
from methods.evaluation.metrics import score_clips, score_reconstruction, seen_unseen
from methods.evaluation.store import EVALUATOR_FILE, check_preprocessing, load_evaluator
from methods.synth_truth import truth_source
from methods.pipeline import SignPipeline
from methods.sampling import sample_seed
from models.text_encoder import embed_captions
from utils.atomic import atomic_write
from utils.device import select_device
from utils.errors import UserError
from utils.images import clip_grid, upscale
from utils.gif import safe_filename, write_gif

SPLITS = ("val", "train")
GRID_MIN_SIDE = 64  # grid GIF panels are upscaled (nearest) to at least this many pixels: 32px clips are tiny
RECONSTRUCTED = ("reconstructed_r1", "reconstructed_r5", "reconstructed_ssim", "reconstructed_psnr")
SCALARS = ("real_r1", "real_r5", "generated_r1", "generated_r5", "generated_r1_se", "chance_r1", "r1_ratio",
           "real_reversed_r1", "frechet_distance", "kid", "kid_fixed", "nn_generated_r1", "nn_real_r1", "ssim", "psnr",
           "temporal_change_generated", "temporal_change_real", *RECONSTRUCTED)


def evaluate(checkpoint: str, *, data_dir: str | None = None, split: str = "val", num_captions: int = 32,
             sampling: dict | None = None, num_samples: int = 1, seed: int = 0, out: str | None = None,
             evaluator: str | None = None, device: str = "auto", batch_size: int = 16, progress: bool = True,
             autoencoder: str | None = None) -> dict:
    """sampling: the command's --steps / --guidance / --sampler / --eta / --noise_correlation (None = the
    checkpoint's settings); autoencoder: --autoencoder, another decoder to decode (and reconstruct) with."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num_captions < 2:
        raise UserError("--num_captions must be >= 2 (retrieval ranks a clip among several captions)")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if num_samples < 1:
        raise UserError(f"--num_samples must be >= 1, got {num_samples}")
    dev = select_device(device)
    pipe = SignPipeline.from_pretrained(checkpoint, dev, text_encoder=False,  # captions come from the cache
                                        autoencoder=autoencoder)
    cfg, state = pipe.cfg, pipe.state
    settings = pipe.settings(**(sampling or {}))
    if data_dir:
        cfg.data.data_dir = data_dir
    ev_path = evaluator or os.path.join(checkpoint if os.path.isdir(checkpoint) else
                                        os.path.dirname(os.path.abspath(checkpoint)), EVALUATOR_FILE)
    ev, meta = load_evaluator(ev_path)
    check_preprocessing(meta, cfg.data, ev_path, f"--checkpoint {checkpoint}")
    groups = {split: SignDataset(cfg.data, split, quiet=True), "heldout": heldout_set(cfg.data)}
    picks = {name: pick_captions(ds, num_captions, seed) for name, ds in groups.items() if ds is not None}
    picks = {name: p for name, p in picks.items() if len(p[0]) >= 2}
    if split not in picks:
        raise UserError(f"the {split} split of {cfg.data.data_dir} has fewer than 2 distinct captions: "
                        f"use --split train or a larger data set")
    captions = [c for names, _ in picks.values() for c in names]
    pipe.warn_unknown_words(captions)
    text = embed_captions(cfg.text.encoder, cfg.text.max_length, captions, cfg.data.cache_dir)
    generated = generate_clips(pipe, text, captions, settings, num_samples, seed, batch_size,
                               progress)  # (N, all captions, T, H, W, 3)
    ev_text = ev.encode_text(embed_captions(meta["text_encoder"], meta["max_length"], captions, cfg.data.cache_dir))
    step = int(state.get("step", 0))
    out = out or os.path.join(cfg.train.sample_dir, cfg.train.exp_name, f"eval_step{step:07d}_{split}.json")
    grid_dir = os.path.splitext(out)[0] + "_grids"
    truth = truth_source(cfg.data)
    trained_on = meta.get("trained_on") or meta.get("data_dir")
    saw = bool(split == "train" and trained_on and os.path.realpath(trained_on) == os.path.realpath(cfg.data.data_dir))
    report = dict(checkpoint=checkpoint, step=step, evaluator=ev_path, evaluator_trained_on=trained_on,
                  evaluator_saw_scored_clips=saw, data_dir=cfg.data.data_dir, split=split,
                  autoencoder=cfg.autoencoder.path if cfg.autoencoder.kind != "none" else None, steps=settings.steps, guidance=settings.guidance, sampler=settings.sampler, eta=settings.eta,
                  noise_correlation=settings.noise_correlation, seed=seed, samples_per_caption=num_samples,
                  ground_truth=truth,
                  groups=score_groups(ev, ev_text, groups, picks, generated, training_captions(cfg.data), grid_dir,
                                      truth, reconstruct=pipe.reconstruct))
    write_report(report, out)
    report["json"], report["grid_dir"] = out, grid_dir
    report["tensorboard_dir"] = write_scalars(cfg, state, report)
    return report


def generate_clips(pipe: SignPipeline, text, captions: list[str], settings, num_samples: int, seed: int,
                   batch_size: int, progress: bool) -> np.ndarray:
    """num_samples clips of every caption, batched across captions: uint8 (N, K, T, H, W, 3). Sample j of caption c
    draws its noise from sample_seed(seed, c, j), so no clip depends on batch_size or on the other captions."""
    jobs = [(j, i) for j in range(num_samples) for i in range(len(captions))]
    rows = torch.tensor([i for _, i in jobs])
    clips = pipe([captions[i] for _, i in jobs], seeds=[sample_seed(seed, captions[i], j) for j, i in jobs],
                 settings=settings, text=text.select(rows), batch_size=batch_size, progress=progress)
    return clips.reshape(num_samples, len(captions), *clips.shape[1:])


def score_groups(ev, ev_text: torch.Tensor, groups: dict, picks: dict, generated: np.ndarray, seen: set[str],
                 grid_dir: str, truth: dict | None = None, reconstruct=None) -> dict:
    """Metrics per group (the split, held-out), with per-caption rows that say whether the caption was trained on
    and point to its real | generated grid GIF; with truth["source"], the renderer's ground truth too; with
    reconstruct (a latent model's real clips -> through its autoencoder), the latent space's ceiling
    (reconstructed_* keys, None for a pixel model)."""
    results, start = {}, 0
    for name, (names, idx) in picks.items():
        ds, k = groups[name], len(names)
        real, gen = ds.clips[idx].numpy(), generated[:, start:start + k]
        which, others = other_clips(ds, names, idx)
        res = score_clips(ev, ev_text[start:start + k], real, gen, names,
                          other_real=(np.array(which, int), ds.clips[others].numpy()) if which else None)
        back = reconstruct(real) if reconstruct is not None else None
        res.update(score_reconstruction(ev, ev_text[start:start + k], real, back) if back is not None else
                   dict.fromkeys(RECONSTRUCTED))
        if truth and "source" in truth:
            res["ground_truth"] = ground_truth.compare(gen, real, names, truth["source"])
        for n, (c, row) in enumerate(zip(names, res["per_caption"])):
            path = os.path.join(grid_dir, f"{name}_{n:03d}_{safe_filename(c)}.gif")
            write_gif(path, clip_grid([[upscale(real[n], GRID_MIN_SIDE)]
                                       + [upscale(g, GRID_MIN_SIDE) for g in gen[:, n]]]))
            row.update(in_training=c in seen, grid=path)
        res["by_training"] = seen_unseen(res["per_caption"])
        results[name] = res
        start += k
    return results


def write_report(report: dict, out: str) -> None:
    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=1)


def write_scalars(cfg, state: dict, report: dict) -> str:
    """Evaluation/<group>/<metric> at the checkpoint's step, under the training run's log folder (eval/)."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = state.get("run_dir") or ""
    base = run_dir if os.path.isdir(run_dir) else os.path.join(cfg.train.log_dir, cfg.train.exp_name)
    folder = os.path.join(base, "eval")
    writer = SummaryWriter(folder)
    for group, res in report["groups"].items():
        for key in SCALARS:
            if res.get(key) is not None:
                writer.add_scalar(f"Evaluation/{group}/{key}", float(res[key]), report["step"])
        gt = res.get("ground_truth") or {}
        for side in ("generated", "real") if gt.get("captions") else ():
            for key in ground_truth.HEADLINE:
                writer.add_scalar(f"Evaluation/{group}/ground_truth_{side}/{key}", gt[side][key], report["step"])
    writer.close()
    return folder
