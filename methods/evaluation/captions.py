"""Which captions and real clips an evaluation compares: a split's distinct captions, the held-out combinations,
and which captions the model saw in training."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from config import DataConfig
from data.folder import HELDOUT_DIR, find_pairs, has_clips, select_split
from dataset import SignDataset


def heldout_set(dc: DataConfig) -> SignDataset | None:
    """The data folder's held-out word combinations (never seen in training), when it has any."""
    folder = os.path.join(dc.data_dir, HELDOUT_DIR)
    if not has_clips(folder):
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


def other_clips(ds: SignDataset, names: list[str], first: list[int]) -> tuple[list[int], list[int]]:
    """(k, clip index) for each picked caption k that has a second real clip: the real reference of retrieval that
    compares clips with clips (a real clip is trivially nearest to itself)."""
    pairs = []
    for k, (c, i) in enumerate(zip(names, first)):
        j = next((j for j, cj in enumerate(ds.captions) if cj == c and j != i), None)
        if j is not None:
            pairs.append((k, j))
    return [k for k, _ in pairs], [j for _, j in pairs]


def reversed_words(caption: str) -> str | None:
    """The caption with its words in reverse order, when that is a different caption."""
    words = caption.split()
    return " ".join(words[::-1]) if len(words) > 1 and words != words[::-1] else None


def training_captions(dc: DataConfig) -> set[str]:
    """Captions of the train split, from the file names and .txt files only (no decoding), normalised as the data
    set normalises them: a picked caption must be compared with what training saw, not with the raw file."""
    pairs, _ = find_pairs(dc.data_dir, dc.caption_normalize)
    return {c for _, c in select_split(pairs, "train", dc.val_fraction)}
