"""`main.py data-stats`: what a data folder holds before anything is trained on it, and a contact sheet of clips as
the model will see them (after every preprocessing step of the configuration)."""
from __future__ import annotations

import collections
import os
import random

import numpy as np
from tqdm import tqdm

from config import Config
from data.folder import HELDOUT_DIR, caption_words, clip_files, find_pairs, select_split, shown
from dataset import load_clip
from utils.contact_sheet import contact_sheet, write_png
from utils.gif import probe_gif
from utils.video import is_video, probe_video

SHEET_CLIPS = 16  # clips on the contact sheet: enough to spot a systematic problem, small enough to look at


def spread(values: list[float]) -> str:
    """min / 10th percentile / median / 90th percentile / max, in one short line."""
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return " / ".join(f"{v:.3g}" for v in q) + " (min / p10 / median / p90 / max)"


def data_stats(cfg: Config, sheet_path: str, sheet_clips: int = SHEET_CLIPS, seed: int = 0,
               quiet: bool = False) -> dict:
    """The report as a dict of primitives (also printed by the CLI) and the contact sheet written to sheet_path."""
    dc = cfg.data
    pairs, skipped = find_pairs(dc.data_dir, dc.caption_normalize)
    probes, probed = [], []
    for path, caption in tqdm(pairs, desc="probing clips", unit="clip", disable=quiet or None, leave=False):
        try:
            probes.append((probe_video if is_video(path) else probe_gif)(path))
            probed.append((path, caption))
        except ValueError as e:
            skipped.append((shown(os.path.basename(path)), f"unreadable: {e}"))
    captions = [c for _, c in probed]
    lengths = [len(caption_words(c)) for c in captions]
    vocab = collections.Counter(w for c in captions for w in caption_words(c))
    sizes = collections.Counter(f"{w}x{h}" for _, _, w, h in probes)
    kinds = collections.Counter(os.path.splitext(p)[1].lower() for p, _ in probed)
    n_val = len(select_split(probed, "val", dc.val_fraction))
    report = dict(
        data_dir=dc.data_dir, clips=len(probed), kinds=dict(kinds), skipped=sorted(skipped),
        train=len(probed) - n_val, val=n_val, heldout=len(clip_files(os.path.join(dc.data_dir, HELDOUT_DIR))),
        distinct_captions=len(set(captions)), vocabulary=len(vocab), top_words=vocab.most_common(10),
        words_per_caption=spread(lengths) if lengths else "-", length_histogram=dict(sorted(collections.Counter(
            lengths).items())), seconds=spread([s for _, s, _, _ in probes]) if probes else "-",
        frames=spread([n for n, _, _, _ in probes]) if probes else "-", resolutions=sizes.most_common(5),
        sheet=None)
    if probed:
        chosen = random.Random(seed).sample(probed, min(sheet_clips, len(probed)))
        clips, names = [], []
        for path, caption in chosen:
            try:
                clips.append(load_clip(path, dc.num_frames, dc.image_size, dc.resize_mode, dc.max_clip_pixels,
                                       dc.allow_stills, dc.trim_still))
                names.append(caption)
            except ValueError:
                continue  # a still refused by data.allow_stills: listed by `train`, not shown here
        if clips:
            write_png(sheet_path, contact_sheet(clips, names))
            report["sheet"] = sheet_path
    return report


def format_report(r: dict) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["kinds"].items()))
    lines = [f"data folder: {r['data_dir']}",
             f"clips: {r['clips']} with captions ({kinds or 'none'}); train {r['train']}, val {r['val']}; "
             f"held-out combinations in {HELDOUT_DIR}/: {r['heldout']}",
             f"captions: {r['distinct_captions']} distinct, vocabulary {r['vocabulary']} words; words per caption "
             f"{r['words_per_caption']}",
             "caption lengths: " + ", ".join(f"{k} word(s): {v}" for k, v in r["length_histogram"].items()),
             "most frequent words: " + ", ".join(f"{w} ({n})" for w, n in r["top_words"]),
             f"duration (s): {r['seconds']}",
             f"frames: {r['frames']}",
             "resolutions: " + ", ".join(f"{s} ({n})" for s, n in r["resolutions"]),
             f"skipped: {len(r['skipped'])}" + "".join(f"\n  {name}: {why}" for name, why in r["skipped"]),
             f"contact sheet: {r['sheet'] or 'none (no clip decodes)'}"]
    return "\n".join(lines)
