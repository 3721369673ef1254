"""What the synthetic renderer knows about a caption's clip: each frame's word, hand centres, shape and colour.

Ground-truth scoring (ground_truth.py) compares generated clips with this. A clip the model saw in training was not
drawn at its own size: the built-in set is rendered at 64x64 / 24 frames, stored as GIF, and the loader picks frames
evenly by time and shrinks them (dataset.load_clip). `source=(size, frames)` replays that path, because it moves the
word boundaries (3 words over 8 loaded frames are 3/2/3 frames, not the 2/3/3 of a direct 8-frame render).

Planted faults (another shape, another track, no outline) are drawn by data.synth.render_specs, the renderer itself
over WordSpecs instead of words.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Sequence

import numpy as np

from data.synth import (HAND_RADIUS, PATHS, rendered_at, SHAPES, WordSpec, _coverage, _hand_track, _sd_hand, _word_bounds,
                        render_specs, word_spec)
from dataset import load_clip, sample_frame_indices
from utils.gif import write_gif

SIDES = (1, -1)  # the renderer's right hand (image left) and left hand, in that order everywhere here


@dataclasses.dataclass(frozen=True)
class Truth:
    """Per-frame truth of one caption at one clip size: arrays indexed by frame t (and hand slot 0=right, 1=left)."""
    specs: tuple[WordSpec, ...]
    size: int
    word: np.ndarray     # (T,) index into specs of the word shown in frame t
    centres: np.ndarray  # (T, 2, 2) hand centres in pixels (x, y) of the clip; NaN where that hand is idle
    u: np.ndarray        # (T,) how far into its word frame t is (0..1): the renderer's time parameter

    @property
    def num_frames(self) -> int:
        return len(self.word)

    def active(self, t: int) -> np.ndarray:
        """(k, 2) pixel centres of the hands drawn in frame t (1 or 2 of them)."""
        c = self.centres[t]
        return c[~np.isnan(c[:, 0])]

    def word_frames(self, i: int) -> np.ndarray:
        return np.flatnonzero(self.word == i)


def to_pixels(points: np.ndarray, size: int) -> np.ndarray:
    """Normalized renderer coordinates -> pixel coordinates (pixel i's centre is (i + 0.5) / size)."""
    return points * size - 0.5


def _frame_times(n_words: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(word index, u) of every frame of a direct render, exactly as render_clip spreads them."""
    bounds = _word_bounds(n_words, num_frames)
    word, u = np.zeros(num_frames, int), np.zeros(num_frames)
    for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        n = stop - start
        word[start:stop] = i
        u[start:stop] = np.linspace(0.0, 1.0, n) if n > 1 else 0.5
    return word, u


def loaded_indices(source_frames: int, num_frames: int) -> list[int]:
    """Which source frames the data loader keeps (GIF frames all last equally long)."""
    return sample_frame_indices([1.0] * source_frames, num_frames)


def truth(words: Sequence[str], size: int, num_frames: int, source: tuple[int, int] | None = None,
          specs: Sequence[WordSpec] | None = None) -> Truth:
    """The truth of `words` (or of explicit `specs`) for a clip of num_frames frames of size x size."""
    specs = tuple(specs) if specs is not None else tuple(word_spec(w) for w in words)
    word, u = _frame_times(len(specs), source[1] if source else num_frames)
    if source:
        keep = loaded_indices(source[1], num_frames)
        word, u = word[keep], u[keep]
    centres = np.full((len(word), 2, 2), np.nan)
    for t, (i, ut) in enumerate(zip(word, u)):
        for slot, side in enumerate(SIDES):
            track = _hand_track(specs[i], side, np.array([ut]))
            if track is not None:
                centres[t, slot] = to_pixels(track[0], size)
    return Truth(specs, size, word, centres, u)


def path_points(spec: WordSpec, size: int, n: int = 33) -> np.ndarray:
    """(n, k, 2) pixel centres of the word's k hands over its whole motion: where the word may be, at any time."""
    u = np.linspace(0.0, 1.0, n)
    tracks = [_hand_track(spec, side, u) for side in SIDES]
    return to_pixels(np.stack([t for t in tracks if t is not None], axis=1), size)


@functools.lru_cache(maxsize=64)
def hand_template(shape: str, size: int, dx: tuple[float, ...], dy: tuple[float, ...], win: int) -> np.ndarray:
    """(len(dx), win, win) coverage of a `shape` hand at pixel offsets (dx, dy) from a window's centre pixel."""
    # the renderer's own signed distance: a real hand matches its template exactly at any size
    g = (np.arange(win) - win // 2 + 0.5) / size  # window pixel centres relative to the centre pixel's corner
    centres = (np.stack([dx, dy], axis=1) + 0.5) / size
    return _coverage(_sd_hand(g[None, None, :], g[None, :, None], centres, shape), size).astype(np.float32)


def hand_radius_px(size: int) -> float:
    return HAND_RADIUS * size


def through_loader(clip: np.ndarray, size: int, num_frames: int) -> np.ndarray:
    """A rendered clip as training saw it: stored as GIF, then decoded, frame-sampled and resized by load_clip."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clip.gif")
        write_gif(path, clip)
        return load_clip(path, num_frames, size, "pad")


def real_clip(words: Sequence[str], size: int, num_frames: int, variation_seed: int = 0,
              source: tuple[int, int] | None = None, specs: Sequence[WordSpec] | None = None,
              outline: bool = True) -> np.ndarray:
    """The renderer's clip of `words` (or of altered `specs`) at size / num_frames, via `source` when given."""
    specs = tuple(specs) if specs is not None else tuple(word_spec(w) for w in words)
    if source is None:
        return render_specs(specs, size, num_frames, variation_seed, outline)
    return through_loader(render_specs(specs, source[0], source[1], variation_seed, outline), size, num_frames)


def truth_source(dc) -> dict:
    """Whether ground-truth scores apply: {"source": (size, frames) the synthetic set was rendered at} for the
    renderer's folders loaded as the truth replays them, else {"skipped": why}."""
    source = rendered_at(dc.data_dir)
    if source is None:
        return {"skipped": "not a synthetic set (no synth-data README.txt): no ground truth to compare with"}
    if dc.trim_still or dc.image_size > source[0] or dc.num_frames > source[1]:
        return {"skipped": "the ground truth replays plain loading: data.trim_still 0, no more frames or pixels "
                           "than the render"}
    return {"source": source}


SWAPS = ("shape", "path")  # what a swapped render changes; everything else (colour, place, timing) stays right


def swapped(spec: WordSpec, kind: str) -> WordSpec:
    """The word with the next handshape of SHAPES ("shape") or the next path of PATHS at the same place ("path")."""
    if kind == "shape":
        return dataclasses.replace(spec, shape=SHAPES[(SHAPES.index(spec.shape) + 1) % len(SHAPES)])
    if kind == "path":
        paths = tuple(PATHS)
        return dataclasses.replace(spec, path=paths[(paths.index(spec.path) + 1) % len(paths)])
    raise ValueError(f"unknown swap {kind!r} (one of {', '.join(SWAPS)})")


def swapped_clip(words: Sequence[str], kind: str, size: int, num_frames: int, variation_seed: int = 0,
                 source: tuple[int, int] | None = None) -> np.ndarray:
    """The caption's clip with every word's handshape or path swapped: an evaluator that ranks it as high as the true
    clip does not look at hands or paths."""
    return real_clip(words, size, num_frames, variation_seed, source,
                     specs=[swapped(word_spec(w), kind) for w in words])


@functools.lru_cache(maxsize=256)
def background_mask(words: tuple[str, ...], size: int, num_frames: int,
                    source: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool: pixels flat background in every frame of the real clip and 1 px away from anything drawn."""
    # the 1 px margin: a generator's slightly soft body edge is not noise; a stray blob or grain is
    clip = real_clip(words, size, num_frames, 0, source).astype(np.int16)
    flat = (np.abs(clip - clip[:, :1, :1]).max(axis=(0, 3)) <= 2)  # the top-left corner is always background
    eroded = flat.copy()
    eroded[1:] &= flat[:-1]
    eroded[:-1] &= flat[1:]
    eroded[:, 1:] &= flat[:, :-1]
    eroded[:, :-1] &= flat[:, 1:]
    return eroded
