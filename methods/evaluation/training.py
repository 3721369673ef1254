"""`main.py train-evaluator`: fit the evaluator (model.py) on a data set's REAL clips.

Symmetric InfoNCE between clips and captions, with time-reversed and segment-shuffled clips and word-reversed
captions as extra negatives, so the evaluator learns that the order of the signs matters. On the synthetic set it
trains on an independent render (another seed: it never sees the clips it will score), and each caption's render
with its handshapes, and with its paths, swapped is a negative too, so its R@1 needs shapes and paths. Checked on
the val split and the held-out combinations, then saved next to the experiment's checkpoints with its numbers.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from config import Config
from data.synth import synth_settings, usable_cpus, write_dataset
from dataset import SignDataset
from methods.evaluation.captions import heldout_set, pick_captions, reversed_words
from methods.ground_truth import scorable
from methods.evaluation.metrics import recall, retrieval_ranks
from methods.evaluation.model import Evaluator, clips_to_input, reorderings, segment_shuffle
from methods.evaluation.store import EVALUATOR_FILE, PREPROCESSING, save_evaluator
from methods.synth_truth import SWAPS, swapped_clip, truth_source
from models.text_encoder import embed_captions
from schedulers import lr_factor
from utils.device import select_device

WEIGHT_DECAY = 0.01  # AdamW decay: a small model making many passes over few clips
WARMUP_SHARE = 20  # warm up over the first 1/20 of the steps: InfoNCE with a learned temperature is unstable early
CLIP_NORM = 1.0  # max gradient norm: the same guard against spikes as the trainer's default
LOSS_WINDOW = 10  # the progress bar shows the mean loss of the last this-many steps, refreshed this often
FINAL_LOSS_WINDOW = 20  # the saved final_loss averages this many last steps (one step's loss is noisy)
CHECK_CAPTIONS = 64  # captions ranked in the saved checks: enough to be hard, few enough for any data set
SHUFFLE_SEED_STRIDE = 1_000_003  # step s shuffles segments with seed * stride + s: a new order every step
SWAPS_PER_STEP = 8  # clips a step also sees with shapes / paths swapped: hard negatives at a quarter of the batch's cost
RENDER_SEED_OFFSET = 1  # the independent render's seed: the data set's + this (other captions, other tints)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-clip brightness / contrast jitter and pixel noise, so generated clips' artefacts are not out of domain."""
    B = x.shape[0]
    shape = (B,) + (1,) * (x.dim() - 1)
    gain, bias = 1 + 0.2 * (torch.rand(shape, generator=g) - 0.5), 0.2 * (torch.rand(shape, generator=g) - 0.5)
    noise = torch.randn(x.shape, generator=g) * 0.08 * torch.rand(shape, generator=g)
    return (x * gain + bias + noise).clamp(-1, 1)


def info_nce(video: torch.Tensor, text: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor,
             video_neg: torch.Tensor | None = None, text_neg: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE with repeated captions and extra negatives.

    video (B, D) and text (U, D) normalised; pos (B,) = row of each clip's caption in `text` (several clips may share
    one); video_neg (M, D) clips that match no caption (reversed / shuffled), text_neg (R, D) captions that match
    no clip (words reordered). Clip -> caption: cross-entropy over text + text_neg. Caption -> clip: the target is
    spread evenly over that caption's clips among video + video_neg.
    """
    texts = text if text_neg is None else torch.cat([text, text_neg])
    v2t = F.cross_entropy(scale * video @ texts.T, pos)
    videos = video if video_neg is None else torch.cat([video, video_neg])
    logits = scale * text @ videos.T  # (U, B + M)
    target = torch.zeros_like(logits)
    target[pos, torch.arange(video.shape[0], device=video.device)] = 1.0
    target = target / target.sum(1, keepdim=True).clamp(min=1)
    keep = target.sum(1) > 0  # every row of `text` should have a clip; guard anyway
    t2v = -(target * F.log_softmax(logits, dim=1)).sum(1)[keep].mean()
    return (v2t + t2v) / 2




def check_real(ev: Evaluator, ds: SignDataset, text, row: dict[str, int], k: int, seed: int = 0,
               source: tuple[int, int] | None = None) -> dict:
    """Real clips of up to k captions: R@1 in true / reversed / segment-shuffled frame order, and how often the true
    order is closer to the caption than the reordered clip (order_acc; 0.5 = order ignored). With `source` (a
    synthetic set), the same for the captions' renders with handshapes / paths swapped (shape_r1, shape_order_acc...):
    an evaluator blind to hands ranks those as high as the true clips."""
    names, idx = pick_captions(ds, k, seed)
    if len(names) < 2:
        return {}
    emb = ev.encode_text(text.select(torch.tensor([row[c] for c in names])))
    clips, T = ds.clips[idx], ds.clips.shape[1]
    out = {"num_captions": len(names), "chance_r1": 1 / len(names)}
    true = ev.encode_clips(clips)
    out["r1"] = recall(retrieval_ranks(true, emb), 1)
    moved = {name: ev.encode_clips(clips, order=order) for name, order in reorderings(T).items()}
    if source is not None and all(scorable(c) for c in names):
        size = clips.shape[2]
        moved.update({kind: ev.encode_clips(np.stack([swapped_clip(c.split(), kind, size, T, i, source)
                                                      for i, c in enumerate(names)])) for kind in SWAPS})
    for name, m in moved.items():
        out[f"{name}_r1"] = recall(retrieval_ranks(m, emb), 1)
        out[f"{name}_order_acc"] = float(((true * emb).sum(1) > (m * emb).sum(1)).float().mean())
    return out


def independent_render(cfg: Config, quiet: bool = False) -> str | None:
    """A fresh render of the synthetic data set (same vocabulary, count, size and frames; seed + RENDER_SEED_OFFSET)
    under the experiment's checkpoint folder, written once; None when the data is not synthetic or
    eval.evaluator_render is off."""
    st = synth_settings(cfg.data.data_dir)
    if st is None or not cfg.eval.evaluator_render:
        return None
    want = dict(st, seed=st["seed"] + RENDER_SEED_OFFSET)
    folder = os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name, f"evaluator_render_seed{want['seed']}")
    if synth_settings(folder) != want:
        if not quiet:
            print(f"rendering an independent set for the evaluator ({want['clips']} clips, seed {want['seed']}) in "
                  f"{folder}", file=sys.stderr)
        write_dataset(folder, want["clips"], seed=want["seed"], size=want["size"], num_frames=want["frames"],
                      workers=usable_cpus(), command="python main.py train-evaluator (eval.evaluator_render)",
                      flag="train.checkpoint_dir")
    return folder


def swap_bank(ds: SignDataset, source: tuple[int, int] | None) -> torch.Tensor | None:
    """uint8 (len(SWAPS), V, T, H, W, 3): every caption id's clip with its handshapes / paths swapped, made as the
    loader makes clips; None when a caption has a word the renderer does not know."""
    if source is None or not all(scorable(c) for c in ds.caption_vocab):
        return None
    T, size = ds.clips.shape[1], ds.clips.shape[2]
    return torch.from_numpy(np.stack([np.stack([swapped_clip(c.split(), kind, size, T, i, source)
                                                for i, c in enumerate(ds.caption_vocab)]) for kind in SWAPS]))


def caption_table(train: SignDataset, checks: dict[str, SignDataset]) -> list[str]:
    """Rows of the text-embedding table: train captions (row = caption id), their word-reversed negatives, then
    the check sets' other captions."""
    vocab = list(train.caption_vocab)
    negatives = sorted({reversed_words(c) for c in vocab} - set(vocab) - {None})
    extra = sorted({c for ds in checks.values() for c in ds.caption_vocab} - set(vocab) - set(negatives))
    return vocab + negatives + extra


def train_evaluator(cfg: Config, quiet: bool = False) -> dict:
    """Train on the train split's real clips (synthetic: all clips of an independent render), check on val (+ held-out,
    + the data's train split when it trained on a render), save next to the checkpoints."""
    ec, dc = cfg.eval, cfg.data
    t0 = time.perf_counter()
    # train.device, decided before minutes of decoding (on the CPU of an H200 machine beside two GPU runs a step
    # took 4 s, against 0.35 s on 2 idle cores)
    device = select_device(cfg.train.device)
    render = independent_render(cfg, quiet)
    train = (SignDataset(dataclasses.replace(dc, data_dir=render), "all", quiet=quiet) if render
             else SignDataset(dc, "train", quiet=quiet))
    source = truth_source(dc).get("source")
    bank = swap_bank(train, source) if ec.evaluator_swaps else None
    checks = {"val": SignDataset(dc, "val", quiet=True), "heldout": heldout_set(dc)}
    if render:  # the clips the generator trained on, which this evaluator never saw
        checks["train"] = SignDataset(dc, "train", quiet=True)
    checks = {k: v for k, v in checks.items() if v is not None and len(v)}
    all_caps = caption_table(train, checks)
    row = {c: i for i, c in enumerate(all_caps)}
    text = embed_captions(cfg.text.encoder, cfg.text.max_length, all_caps, dc.cache_dir)
    neg_row = torch.tensor([row.get(reversed_words(c) or "", -1) for c in train.caption_vocab])  # per caption id
    torch.manual_seed(cfg.train.seed)
    model = Evaluator(text.pooled.shape[1], dc.image_size, dc.num_frames, ec.evaluator_dim, ec.evaluator_patch,
                      ec.evaluator_depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=ec.evaluator_lr, weight_decay=WEIGHT_DECAY)
    steps = ec.evaluator_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, max(1, steps // WARMUP_SHARE), steps, "cosine"))
    g = torch.Generator().manual_seed(cfg.train.seed)
    T, losses = dc.num_frames, []
    bar = tqdm(range(steps), desc="train-evaluator", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    model.train()
    for step in bar:
        idx = torch.randint(len(train), (min(ec.evaluator_batch_size, len(train)),), generator=g)
        # augmented on the CPU with g, then moved: the same random draws on any device
        f = model.frame_features(augment(clips_to_input(train.clips[idx]), g).to(device))
        uniq, pos = train.caption_ids[idx].unique(return_inverse=True)
        # train captions are rows 0..len(vocab)-1
        t = model.text_embedding(text.tokens[uniq].to(device), text.mask[uniq].to(device))
        negs = neg_row[uniq][neg_row[uniq] >= 0]
        t_neg = model.text_embedding(text.tokens[negs].to(device), text.mask[negs].to(device)) if len(negs) else None
        shuffled = f[:, segment_shuffle(T, cfg.train.seed * SHUFFLE_SEED_STRIDE + step)]
        negatives = [f.flip(1), shuffled] if T > 1 else []
        if bank is not None:  # (len(SWAPS) * n, T, D): n of this batch's captions with shapes / paths swapped
            swaps = bank[:, train.caption_ids[idx[:SWAPS_PER_STEP]]].flatten(0, 1)
            negatives.append(model.frame_features(augment(clips_to_input(swaps), g).to(device)))
        v_neg = model.clip_embedding(torch.cat(negatives)) if negatives else None
        loss = info_nce(model.clip_embedding(f), t, pos.to(device), model.scale(), v_neg, t_neg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % LOSS_WINDOW == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-LOSS_WINDOW:]):.3f}", refresh=False)
    model.eval()
    results = {name: check_real(model, ds, text, row, CHECK_CAPTIONS, source=source) for name, ds in checks.items()}
    results["render" if render else "train"] = check_real(model, train, text, row, CHECK_CAPTIONS, source=source)
    path = os.path.join(cfg.train.checkpoint_dir, cfg.train.exp_name, EVALUATOR_FILE)
    meta = dict(text_encoder=cfg.text.encoder, max_length=cfg.text.max_length,
                **{key: getattr(dc, key) for key in PREPROCESSING}, trained_on=render or dc.data_dir,
                swap_negatives=bank is not None, steps=steps,
                final_loss=float(np.mean(losses[-FINAL_LOSS_WINDOW:])), checks=results,
                train_seconds=time.perf_counter() - t0)
    save_evaluator(path, model, **meta)
    return {"path": path, **meta}
