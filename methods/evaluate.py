"""Does a model follow the text? `main.py train-evaluator` and `main.py evaluate`.

train_evaluator: fits models/evaluator.py (text <-> video matching) on the REAL clips of a data set's train split,
with time-reversed / segment-shuffled clips and word-reversed captions as extra negatives, and saves it to
<checkpoint_dir>/<exp>/evaluator.pt with its validation numbers.
evaluate: for K captions of a split (and of heldout/, the unseen word combinations of the synthetic set), generates
N clips per caption (--samples) and reports caption retrieval (R@1 with its standard error, R@5) of generated vs real
clips vs chance, the Frechet distance in the evaluator's embedding space, SSIM / PSNR against the real clip of the
same caption and the mean frame-to-frame change (metrics in methods/metrics.py); writes a JSON, TensorBoard scalars
and one real | generated GIF grid per caption.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from config import Config
from dataset import SignDataset, find_pairs, split_of
from methods.metrics import recall, retrieval_ranks, score_clips, seen_unseen
from methods.trainer import lr_factor
from models.evaluator import (Evaluator, augment, clips_to_input, info_nce, load_evaluator, reorderings,
                              save_evaluator, segment_shuffle)
from models.text_encoder import embed_captions
from utils.errors import UserError

EVALUATOR_FILE = "evaluator.pt"
SAMPLE_SEED_STRIDE = 1_000_003  # sample j of caption i draws its noise from seed + i + j * stride: sample 0 = seed + i
WEIGHT_DECAY = 0.01  # AdamW decay of the evaluator (small model, many steps over few clips)


# ----------------------------------------------------------------------------------------------------------
# Data helpers


def heldout_set(dc) -> SignDataset | None:
    """The synthetic set's heldout/ folder (word combinations never seen in training), when it has clips."""
    folder = os.path.join(dc.data_dir, "heldout")
    if not glob.glob(os.path.join(folder, "*.gif")):
        return None
    return SignDataset(dataclasses.replace(dc, data_dir=folder), "all", quiet=True)


def pick_captions(ds: SignDataset, k: int, seed: int) -> tuple[list[str], list[int]]:
    """Up to k distinct captions (seeded choice, data order) and the index of the first real clip of each."""
    first: dict[str, int] = {}
    for i, c in enumerate(ds.captions):
        first.setdefault(c, i)
    names = list(first)
    if len(names) > k:
        chosen = np.sort(np.random.default_rng(seed).choice(len(names), size=k, replace=False))
        names = [names[i] for i in chosen]
    return names, [first[c] for c in names]


def reversed_words(caption: str) -> str | None:
    words = caption.split()
    return " ".join(words[::-1]) if len(words) > 1 and words != words[::-1] else None


def training_captions(dc) -> set[str]:
    """Captions of the train split, from the file names and .txt files only (no decoding)."""
    pairs, _ = find_pairs(dc.data_dir)
    return {c for p, c in pairs if split_of(os.path.basename(p)[:-4], dc.val_fraction) == "train"}


# ----------------------------------------------------------------------------------------------------------
# train-evaluator


def check_real(ev: Evaluator, ds: SignDataset, text, row: dict[str, int], k: int, seed: int = 0) -> dict:
    """Real clips of up to k captions: R@1 in true / reversed / segment-shuffled frame order, and how often the true
    order is closer to the caption than the reordered clip (order_acc; 0.5 = order ignored)."""
    names, idx = pick_captions(ds, k, seed)
    if len(names) < 2:
        return {}
    emb = ev.encode_text(text.select(torch.tensor([row[c] for c in names])))
    clips, T = ds.clips[idx], ds.clips.shape[1]
    out = {"num_captions": len(names), "chance_r1": 1 / len(names)}
    true = ev.encode_clips(clips)
    out["r1"] = recall(retrieval_ranks(true, emb), 1)
    for name, order in reorderings(T).items():
        moved = ev.encode_clips(clips, order=order)
        out[f"{name}_r1"] = recall(retrieval_ranks(moved, emb), 1)
        out[f"{name}_order_acc"] = float(((true * emb).sum(1) > (moved * emb).sum(1)).float().mean())
    return out


def train_evaluator(cfg: Config, quiet: bool = False) -> dict:
    """Train on the train split's real clips, check on val (+ heldout), save next to the checkpoints."""
    ec, dc = cfg.eval, cfg.data
    t0 = time.perf_counter()
    train = SignDataset(dc, "train", quiet=quiet)
    checks = {"val": SignDataset(dc, "val", quiet=True), "heldout": heldout_set(dc)}
    checks = {k: v for k, v in checks.items() if v is not None and len(v)}
    vocab = list(train.caption_vocab)
    negatives = sorted({reversed_words(c) for c in vocab} - set(vocab) - {None})
    extra = sorted({c for ds in checks.values() for c in ds.caption_vocab} - set(vocab) - set(negatives))
    all_caps = vocab + negatives + extra
    row = {c: i for i, c in enumerate(all_caps)}
    text = embed_captions(cfg.text.encoder, cfg.text.max_length, all_caps, dc.cache_dir)
    neg_row = torch.tensor([row.get(reversed_words(c) or "", -1) for c in vocab])  # per train caption id
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    model = Evaluator(text.pooled.shape[1], dc.image_size, dc.num_frames, ec.evaluator_dim, ec.evaluator_patch,
                      ec.evaluator_depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=ec.evaluator_lr, weight_decay=WEIGHT_DECAY)
    steps = ec.evaluator_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, max(1, steps // 20), steps, "cosine"))
    g = torch.Generator().manual_seed(cfg.train.seed)
    T, losses = dc.num_frames, []
    bar = tqdm(range(steps), desc="train-evaluator", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    model.train()
    for step in bar:
        idx = torch.randint(len(train), (min(ec.evaluator_batch_size, len(train)),), generator=g)
        f = model.frame_features(augment(clips_to_input(train.clips[idx]), g))
        uniq, pos = train.caption_ids[idx].unique(return_inverse=True)
        t = model.text_embedding(text.tokens[uniq], text.mask[uniq])  # train captions are rows 0..len(vocab)-1
        negs = neg_row[uniq][neg_row[uniq] >= 0]
        t_neg = model.text_embedding(text.tokens[negs], text.mask[negs]) if len(negs) else None
        shuffled = f[:, segment_shuffle(T, cfg.train.seed * 1_000_003 + step)]
        v_neg = model.clip_embedding(torch.cat([f.flip(1), shuffled])) if T > 1 else None
        loss = info_nce(model.clip_embedding(f), t, pos, model.scale(), v_neg, t_neg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
    model.eval()
    results = {name: check_real(model, ds, text, row, 64) for name, ds in checks.items()}
    results["train"] = check_real(model, train, text, row, 64)
    path = os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name, EVALUATOR_FILE)
    meta = dict(text_encoder=cfg.text.encoder, max_length=cfg.text.max_length, data_dir=dc.data_dir,
                resize_mode=dc.resize_mode, steps=steps, final_loss=float(np.mean(losses[-20:])), checks=results,
                train_seconds=time.perf_counter() - t0)
    save_evaluator(path, model, **meta)
    return {"path": path, **meta}


# ----------------------------------------------------------------------------------------------------------
# evaluate


def evaluate(checkpoint: str, data_dir: str | None = None, split: str = "val", num_captions: int = 32,
             steps: int | None = None, guidance: float | None = None, out: str | None = None,
             evaluator: str | None = None, seed: int = 0, device: str = "auto", progress: bool = True,
             batch_size: int = 16, samples: int = 1) -> dict:
    from methods.sampling import generate, load_ema_model, sampling_settings
    from utils.device import select_device
    from utils.gif import safe_filename, write_gif
    from utils.tb_images import clip_grid, upscale

    if split not in ("val", "train"):
        raise UserError(f"--split must be val or train, got {split!r}")
    if num_captions < 2:
        raise UserError("--num_captions must be >= 2 (retrieval ranks a clip among several captions)")
    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    dev = select_device(device)
    cfg, model, diffusion, state = load_ema_model(checkpoint, dev)
    dc = cfg.diffusion
    steps, guidance = sampling_settings(dc, steps, guidance)
    if data_dir:
        cfg.data.data_dir = data_dir
    ev_path = evaluator or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), EVALUATOR_FILE)
    ev, meta = load_evaluator(ev_path)
    T, S = cfg.data.num_frames, cfg.data.image_size
    if (meta["hparams"]["num_frames"], meta["hparams"]["image_size"]) != (T, S):
        raise UserError(f"evaluator {ev_path} scores {meta['hparams']['num_frames']} frames of "
                        f"{meta['hparams']['image_size']}px but the checkpoint makes {T} frames of {S}px: run "
                        f"train-evaluator with --set data.num_frames={T} --set data.image_size={S}")
    groups = {split: SignDataset(cfg.data, split, quiet=True), "heldout": heldout_set(cfg.data)}
    picks = {name: pick_captions(ds, num_captions, seed) for name, ds in groups.items() if ds is not None}
    picks = {name: p for name, p in picks.items() if len(p[0]) >= 2}
    if split not in picks:
        raise UserError(f"the {split} split of {cfg.data.data_dir} has fewer than 2 distinct captions: "
                        f"use --split train or a larger data set")
    captions = [c for names, _ in picks.values() for c in names]
    seen = training_captions(cfg.data)
    gen_text = embed_captions(cfg.text.encoder, cfg.text.max_length, captions, cfg.data.cache_dir)
    ev_text = ev.encode_text(embed_captions(meta["text_encoder"], meta["max_length"], captions, cfg.data.cache_dir))

    # Jobs (sample j, caption i), batched across captions; each job has its own seed, so the clips do not depend
    # on batch_size and sample 0 is the clip a --samples 1 run makes.
    jobs = [(j, i) for j in range(samples) for i in range(len(captions))]
    clips = []
    with tqdm(total=len(jobs), desc="evaluate", unit="clip", disable=not progress, dynamic_ncols=True,
              file=sys.stderr) as bar:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            text = gen_text.select(torch.tensor([i for _, i in batch]))
            clips.extend(generate(model, diffusion, text, T, S, steps, dc.sampler, dc.eta, guidance, device=dev,
                                  seed=[seed + i + j * SAMPLE_SEED_STRIDE for j, i in batch]))
            bar.update(len(batch))
    generated = np.stack(clips).reshape(samples, len(captions), *clips[0].shape)  # (N, all captions, T, H, W, 3)

    step = int(state.get("step", 0))
    out = out or os.path.join(cfg.train.sample_dir, cfg.train.exp_name, f"eval_step{step:07d}_{split}.json")
    grid_dir = os.path.splitext(out)[0] + "_grids"
    report = dict(checkpoint=checkpoint, step=step, evaluator=ev_path, data_dir=cfg.data.data_dir, split=split,
                  steps=steps, guidance=guidance, sampler=dc.sampler, seed=seed, samples_per_caption=samples,
                  groups={})
    start = 0
    for name, (names, idx) in picks.items():
        ds, k = groups[name], len(names)
        real, gen = ds.clips[idx].numpy(), generated[:, start:start + k]
        res = score_clips(ev, ev_text[start:start + k], real, gen, names)
        for n, (c, row) in enumerate(zip(names, res["per_caption"])):
            path = os.path.join(grid_dir, f"{name}_{n:03d}_{safe_filename(c)}.gif")
            write_gif(path, clip_grid([[upscale(real[n], 64)] + [upscale(g, 64) for g in gen[:, n]]]))
            row.update(in_training=c in seen, grid=path)
        res["by_training"] = seen_unseen(res["per_caption"])
        report["groups"][name] = res
        start += k
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    report["json"], report["grid_dir"] = out, grid_dir
    report["tensorboard_dir"] = write_scalars(cfg, state, report)
    return report


SCALARS = ("real_r1", "real_r5", "generated_r1", "generated_r5", "generated_r1_se", "chance_r1", "r1_ratio",
           "real_reversed_r1", "frechet_distance", "ssim", "psnr", "temporal_change_generated", "temporal_change_real")


def write_scalars(cfg: Config, state: dict, report: dict) -> str:
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
    writer.close()
    return folder
