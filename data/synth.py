"""Procedural synthetic sign-language clips: the built-in dataset and the test data.

A cartoon signer (head, torso, arms) moves coloured hands along one fixed motion per word. Each
word owns a (hands, colour, shape, location, path) row of VOCAB_TABLE; the words of a caption share
the clip time equally and in order, so a model that follows the text must produce the right motions
in the right order. Drawing is plain numpy (signed distances + anti-aliased coverage), vectorized
over frames, and fully deterministic.
"""
from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np

from config import DEMO_DATA_DIR, DataConfig
from data.folder import HELDOUT_DIR, has_clips
from utils.atomic import atomic_write
from utils.folders import claim_output_folder
from utils.gif import write_gif

README_TITLE = "Text2Sign synthetic sign-language clips"

COLOURS = {
    "red": (235, 35, 35), "orange": (255, 140, 0), "yellow": (250, 230, 30), "green": (40, 205, 60),
    "cyan": (30, 220, 235), "blue": (45, 85, 255), "purple": (150, 55, 245), "magenta": (245, 45, 200),
    "white": (250, 250, 250),
}
# Where each motion happens, for the signer's right hand (on the image's left: the signer faces the
# viewer). The left hand uses the mirror image. Normalized (x, y) with y pointing down.
LOCATIONS = {
    "forehead": (0.41, 0.15), "cheek": (0.37, 0.28), "chin": (0.44, 0.37), "shoulder": (0.33, 0.52),
    "chest": (0.40, 0.62), "belly": (0.40, 0.77), "side": (0.21, 0.64), "high": (0.21, 0.17),
}
PATHS = {
    "circle": "one circle around the location",
    "zigzag": "zig-zag from outside inward, three strokes",
    "tap": "touch the location twice, coming from outside-below",
    "sweep": "straight line from the location outward and down",
    "updown": "up and down one and a half times",
    "sidetoside": "side to side one and a half times",
    "figure8": "one figure-eight around the location",
    "arc": "half circle over the top, from outside to inside",
}
SHAPES = ("disc", "square", "diamond", "ring")
HANDS = ("right", "left", "both")

# word      hands    colour     shape      location    path
VOCAB_TABLE = """
hello       right    yellow     disc       forehead    sweep
thank       right    green      square     chin        sweep
you         right    red        diamond    chest       tap
yes         right    cyan       square     side        updown
no          right    magenta    diamond    side        sidetoside
please      right    orange     disc       chest       circle
help        both     blue       square     belly       updown
more        both     magenta    ring       chest       tap
stop        left     red        square     high        tap
go          both     green      diamond    chest       sweep
eat         right    orange     ring       chin        tap
drink       right    blue       ring       chin        updown
home        right    white      disc       cheek       arc
friend      both     yellow     ring       chest       figure8
love        both     red        disc       shoulder    tap
want        both     purple     square     belly       arc
good        left     white      square     chin        sweep
bad         right    red        square     chest       zigzag
name        both     cyan       diamond    chest       sidetoside
what        both     white      diamond    belly       sidetoside
where       right    purple     diamond    high        sidetoside
sorry       right    purple     square     chest       circle
work        both     orange     square     belly       tap
learn       left     green      diamond    forehead    tap
"""


@dataclass(frozen=True)
class WordSpec:
    word: str
    hands: str  # "right", "left" or "both"
    colour: tuple[int, int, int]
    colour_name: str
    shape: str
    location: str
    path: str

    @property
    def anchor(self) -> tuple[float, float]:
        return LOCATIONS[self.location]


def _parse_table(table: str) -> dict[str, WordSpec]:
    specs = {}
    for line in table.strip().splitlines():
        word, hands, colour, shape, location, path = line.split()
        assert hands in HANDS and shape in SHAPES and location in LOCATIONS and path in PATHS, line
        specs[word] = WordSpec(word, hands, COLOURS[colour], colour, shape, location, path)
    return specs


WORDS: dict[str, WordSpec] = _parse_table(VOCAB_TABLE)
VOCAB: tuple[str, ...] = tuple(WORDS)

AMPLITUDE = 0.11     # motion size, normalized
HAND_RADIUS = 0.085  # 5.4 px at 64x64, so still ~2.7 px after downsampling to 32x32
ARM = 0.22  # upper arm and forearm length; straight arms reach 0.44 from the shoulder
SHOULDERS = {1: (0.33, 0.52), -1: (0.67, 0.52)}  # side +1 = right hand, -1 = left hand
REST = (0.22, 0.93)  # idle right hand, low at the side
BASE = {"background": (62, 70, 86), "shirt": (126, 118, 108), "skin": (226, 180, 148), "hair": (70, 45, 32)}
INK = np.array((24, 22, 26), np.float32)


def word_spec(word: str) -> WordSpec:
    spec = WORDS.get(word.lower())
    if spec is None:
        raise ValueError(f"unknown word {word!r} (the synthetic vocabulary has {len(VOCAB)} words: {' '.join(VOCAB)})")
    return spec


def _path_offsets(path: str, u: np.ndarray) -> np.ndarray:
    """(len(u), 2) offsets in units of AMPLITUDE for the right hand; x < 0 points away from the body.

    Every path keeps moving at all u (the reversal points of the back-and-forth paths are rounded
    into thin ellipses), so consecutive frames always differ and GIF writers never merge them.
    """
    w = 2 * np.pi * u
    if path == "circle":
        x, y = np.cos(w), np.sin(w)
    elif path == "zigzag":
        x, y = -1.2 + 2.4 * u, 0.8 * (2 / np.pi) * np.arcsin(np.sin(1.5 * w))
    elif path == "tap":
        away = 1.4 * (1 + np.cos(2 * w)) / 2
        x, y = -0.6 * away + 0.2 * np.sin(2 * w), 0.8 * away + 0.15 * np.sin(2 * w)
    elif path == "sweep":
        x, y = -2.2 * u, 1.0 * u
    elif path == "updown":
        x, y = -0.3 * (1 - np.cos(1.5 * w)), -np.sin(1.5 * w)
    elif path == "sidetoside":
        x, y = -np.sin(1.5 * w), 0.3 * (1 - np.cos(1.5 * w))
    elif path == "figure8":
        x, y = 1.1 * np.sin(w), 0.6 * np.sin(2 * w)
    elif path == "arc":
        x, y = -1.2 * np.cos(w / 2), -1.2 * np.sin(w / 2)
    else:
        raise ValueError(f"unknown path {path!r}")
    return np.stack([x, y], axis=-1)


def _hand_track(spec: WordSpec, side: int, u: np.ndarray) -> np.ndarray | None:
    """Hand centres (len(u), 2) for side +1 (right) / -1 (left), or None when that hand is idle."""
    if spec.hands != "both" and spec.hands != ("right" if side == 1 else "left"):
        return None
    off = _path_offsets(spec.path, u) * AMPLITUDE
    x0, y0 = spec.anchor
    return np.stack([0.5 + side * (x0 - 0.5 + off[:, 0]), y0 + off[:, 1]], axis=-1)


def _elbow(shoulder: np.ndarray, hand: np.ndarray, side: int) -> np.ndarray:
    """Two-bone IK: the elbow bends outward and down, straight arm when out of reach."""
    d = hand - shoulder
    dist = np.linalg.norm(d, axis=-1, keepdims=True).clip(1e-6)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=-1) / dist
    normal *= np.where(normal @ np.array([-side, 0.5]) < 0, -1.0, 1.0)[:, None]
    bend = np.sqrt(np.clip(ARM**2 - (dist / 2) ** 2, 0, None))
    return shoulder + d / 2 + normal * bend


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, None, :], c[None, :, None]  # x (1, 1, W), y (1, H, 1)


def _coverage(sd: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (normalized units, > 0 inside)."""
    return np.clip(sd * size + 0.5, 0.0, 1.0)


def _sd_segment(x, y, a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """Signed distance to a thick capsule from a to b; a, b are (N, 2) for N frames."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    bx, by = b[:, 0, None, None] - ax, b[:, 1, None, None] - ay
    t = np.clip(((x - ax) * bx + (y - ay) * by) / np.maximum(bx * bx + by * by, 1e-12), 0, 1)
    return width / 2 - np.hypot(x - ax - t * bx, y - ay - t * by)


def _sd_ellipse(x, y, cx, cy, rx, ry):
    return (1 - np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)) * min(rx, ry)


def _sd_rect(x, y, x0, y0, x1, y1):
    return np.minimum(np.minimum(x - x0, x1 - x), np.minimum(y - y0, y1 - y))


def _sd_hand(x, y, centres: np.ndarray, shape: str) -> np.ndarray:
    dx, dy, r = x - centres[:, 0, None, None], y - centres[:, 1, None, None], HAND_RADIUS
    if shape == "disc":
        return r - np.hypot(dx, dy)
    if shape == "square":  # equal-area-ish with the disc so no shape dominates by size
        return 0.88 * r - np.maximum(np.abs(dx), np.abs(dy))
    if shape == "diamond":
        return (1.25 * r - np.abs(dx) - np.abs(dy)) / np.sqrt(2)
    return 0.3 * r - np.abs(np.hypot(dx, dy) - 0.72 * r)  # ring


@functools.lru_cache(maxsize=8)
def _body_layers(size: int) -> tuple[tuple[str, np.ndarray], ...]:
    """Static (colour name, coverage (H, W)) layers of the signer, back to front."""
    x, y = _grid(size)
    x, y = x[0], y[0]
    shoulders = np.array([SHOULDERS[1]]), np.array([SHOULDERS[-1]])
    layers = (
        ("shirt", np.maximum(_sd_rect(x, y, 0.27, 0.54, 0.73, 1.1), _sd_segment(x, y, *shoulders, 0.14)[0])),
        ("skin", _sd_rect(x, y, 0.455, 0.35, 0.545, 0.52)),  # neck
        ("hair", _sd_ellipse(x, y, 0.5, 0.215, 0.128, 0.125)),
        ("skin", _sd_ellipse(x, y, 0.5, 0.265, 0.112, 0.13)),  # face, leaving a band of hair on top
        ("ink", np.maximum(_sd_ellipse(x, y, 0.455, 0.25, 0.016, 0.016), _sd_ellipse(x, y, 0.545, 0.25, 0.016, 0.016))),
        ("mouth", _sd_segment(x, y, np.array([[0.47, 0.325]]), np.array([[0.53, 0.325]]), 0.014)[0]),
    )
    return tuple((name, _coverage(sd, size)) for name, sd in layers)


def _palette(variation_seed: int) -> dict[str, np.ndarray]:
    """Mild per-clip tints (+-10 per channel) so the model sees some variety, never a new layout."""
    rng = np.random.default_rng(variation_seed)
    pal = {k: np.clip(np.array(v, np.float32) + rng.integers(-10, 11, 3), 0, 255) for k, v in BASE.items()}
    pal["sleeve"] = pal["shirt"] * 0.78
    pal["ink"], pal["mouth"] = INK, np.array((150, 60, 60), np.float32)
    return pal


def _paint(frames: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    a = coverage[..., None]
    frames *= 1 - a
    frames += a * colour


def _word_bounds(n_words: int, num_frames: int) -> list[int]:
    return [i * num_frames // n_words for i in range(n_words + 1)]


def render_clip(words: Sequence[str], size: int = 64, num_frames: int = 24, variation_seed: int = 0) -> np.ndarray:
    """Render a caption of known words to uint8 frames (num_frames, size, size, 3)."""
    if isinstance(words, str):
        words = words.split()
    return render_specs([word_spec(w) for w in words], size, num_frames, variation_seed)


def render_specs(specs: Sequence[WordSpec], size: int = 64, num_frames: int = 24, variation_seed: int = 0,
                 outline: bool = True) -> np.ndarray:
    """render_clip for WordSpecs, which an evaluation may alter to plant a fault (another shape, path or order);
    outline=False leaves out the ink ring."""
    if not specs:
        raise ValueError("render_clip needs at least one word")
    if num_frames < len(specs):
        raise ValueError(f"{num_frames} frames cannot hold {len(specs)} words")
    pal = _palette(variation_seed)
    body = np.zeros((size, size, 3), np.float32) + pal["background"]
    for name, coverage in _body_layers(size):
        _paint(body, coverage, pal[name])
    x, y = _grid(size)
    bounds = _word_bounds(len(specs), num_frames)
    clip = np.empty((num_frames, size, size, 3), np.uint8)
    for spec, start, stop in zip(specs, bounds, bounds[1:]):
        n = stop - start
        u = np.linspace(0.0, 1.0, n) if n > 1 else np.full(1, 0.5)
        frames = np.repeat(body[None], n, axis=0)
        hands = []
        for side in (1, -1):
            track = _hand_track(spec, side, u)
            if track is None:
                track = np.tile([[0.5 + side * (REST[0] - 0.5), REST[1]]], (n, 1))
            else:
                hands.append(track)
            shoulder = np.tile(SHOULDERS[side], (n, 1))
            elbow = _elbow(shoulder, track, side)
            _paint(frames, _coverage(_sd_segment(x, y, shoulder, elbow, 0.075), size), pal["sleeve"])
            _paint(frames, _coverage(_sd_segment(x, y, elbow, track, 0.06), size), pal["skin"])
        colour = np.array(spec.colour, np.float32)
        for track in hands:  # after both arms, so a hand is never hidden by the other arm
            sd = _sd_hand(x, y, track, spec.shape)
            if outline:
                _paint(frames, _coverage(sd + 1.0 / size, size), INK)  # 1 px outline keeps shapes apart at 32x32
            _paint(frames, _coverage(sd, size), colour)
        clip[start:stop] = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return clip


def _contains(caption: tuple[str, ...], seq: tuple[str, ...]) -> bool:
    k = len(seq)
    return any(caption[i:i + k] == seq for i in range(len(caption) - k + 1))


def _is_excluded(caption: tuple[str, ...], exclude: Collection[tuple[str, ...]]) -> bool:
    return any(_contains(caption, tuple(seq)) for seq in exclude)


def draw_captions(num: int, seed: int, max_words: int = 3,
                    exclude: Collection[tuple[str, ...]] = ()) -> list[tuple[str, ...]]:
    """Deterministic captions: every word alone first (VOCAB order), then random 1..max_words combos.

    A caption is rejected when it contains any excluded sequence as a contiguous run (so a held-out
    pair never shows up inside a longer training caption either). Single words may repeat (they are
    the easiest signal to learn from); longer captions repeat only once the unique ones run out.
    """
    if max_words < 1:
        raise ValueError("max_words must be >= 1")
    max_words = min(max_words, len(VOCAB))
    exclude = [tuple(seq) for seq in exclude]
    out = [(w,) for w in VOCAB if not _is_excluded((w,), exclude)][:num]
    seen, misses = set(out), 0
    rng = np.random.default_rng([seed, 0])
    lengths = np.arange(1, max_words + 1)
    weights = np.where(lengths == 1, 1.0, 2.0)  # favour combos: single words are already covered above
    while len(out) < num:
        k = rng.choice(lengths, p=weights / weights.sum())
        caption = tuple(VOCAB[i] for i in rng.choice(len(VOCAB), size=k, replace=False))
        if _is_excluded(caption, exclude):
            misses += 1
            if misses > 100_000:
                raise ValueError("exclude leaves no caption to sample")
            continue
        if caption in seen and len(caption) > 1 and misses < 1000:
            misses += 1
            continue
        out.append(caption)
        seen.add(caption)
        misses = 0
    return out


def holdout_combinations(seed: int, num: int) -> list[tuple[str, ...]]:
    """Deterministic 2-3 word sequences kept out of training to test unseen combinations."""
    rng = np.random.default_rng([seed, 1])
    out: list[tuple[str, ...]] = []
    while len(out) < num:
        k = int(rng.integers(2, 4))
        caption = tuple(VOCAB[i] for i in rng.choice(len(VOCAB), size=k, replace=False))
        if caption not in out:
            out.append(caption)
    return out


def describe_vocab() -> str:
    """Human-readable table of the words and their motions."""
    rows = [("word", "hands", "colour", "shape", "location", "path")]
    rows += [(s.word, s.hands, s.colour_name, s.shape, s.location, s.path) for s in WORDS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", "paths:"] + [f"  {name:<11} {text}" for name, text in PATHS.items()]
    lines += ["", "Captions of 1-3 words share the clip time equally, in order; an idle hand rests at the side.",
              "Both-hand words mirror the motion on the left hand."]
    return "\n".join(lines)


def _write_pair(folder: str, name: str, words: tuple[str, ...], size: int, num_frames: int, variation_seed: int):
    write_gif(os.path.join(folder, name + ".gif"), render_clip(words, size, num_frames, variation_seed))
    with atomic_write(os.path.join(folder, name + ".txt"), "w") as f:
        f.write(" ".join(words) + "\n")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it, as under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_pairs(jobs: list[tuple], workers: int) -> None:
    """_write_pair(*job) for every job, on `workers` processes: rendering is single-threaded numpy, and each clip
    depends on its own arguments alone, so the files are the same however the jobs are spread."""
    if workers <= 1 or len(jobs) < 4 * workers:
        for job in jobs:
            _write_pair(*job)
        return
    # spawn, not fork: the caller may hold torch's thread pools, which a forked child must not inherit; list()
    # waits for every clip and raises a worker's error here
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_pair, *zip(*jobs), chunksize=max(1, len(jobs) // (8 * workers))))


def write_dataset(out_dir: str, num: int, seed: int = 0, size: int = 64, num_frames: int = 24,
                  holdout: int = 0, command: str | None = None, workers: int = 1, flag: str = "--out") -> dict:
    """Write num <name>.gif + <name>.txt clips (and held-out combinations under HELDOUT_DIR/) plus README.txt, on
    `workers` processes, into a new or empty folder or one an earlier synth-data run made (never another's files)."""
    if command is None:
        command = (f"python -c \"from data.synth import write_dataset; write_dataset('<out_dir>', num={num}, "
                   f"seed={seed}, size={size}, num_frames={num_frames}, holdout={holdout})\"")
    claim_output_folder(out_dir, "synth-data", command, flag=flag, legacy=is_synthetic_set)
    held = holdout_combinations(seed, holdout) if holdout > 0 else []
    captions = draw_captions(num, seed, exclude=held)
    variations = np.random.default_rng([seed, 2]).integers(0, 2**31, size=num + len(held))
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(out_dir, f"synth_{i:05d}", words, size, num_frames, int(variations[i]))
            for i, words in enumerate(captions)]
    jobs += [(os.path.join(out_dir, HELDOUT_DIR), f"heldout_{i:05d}", words, size, num_frames, int(variations[num + i]))
             for i, words in enumerate(held)]
    _write_pairs(jobs, workers)
    readme = (
        README_TITLE + " (procedural, data/synth.py).\n\n"
        "A cartoon signer moves coloured hands along one fixed motion per word; the words of a caption\n"
        "share the clip time equally and in order. Each <name>.gif has a caption in <name>.txt.\n"
        + (f"{HELDOUT_DIR}/ holds {len(held)} word combinations that never occur in the training clips,\n"
           "not even inside a longer caption; every word of them does occur.\n" if held else "")
        + f"\nclips: {len(captions)}  heldout: {len(held)}  seed: {seed}  size: {size}x{size}  frames: {num_frames}\n"
        f"command: {command}\n\n{describe_vocab()}\n"
    )
    with atomic_write(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(readme)
    return {"clips": len(captions), "heldout": len(held), "out_dir": out_dir}


def is_synthetic_set(folder: str) -> bool:
    """A folder an earlier write_dataset filled (from before output folders were marked): its README.txt says so."""
    try:
        with open(os.path.join(folder, "README.txt"), encoding="utf-8") as f:
            return f.read(len(README_TITLE)) == README_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def synth_settings(folder: str) -> dict | None:
    """{"size", "frames", "clips", "seed"} a synthetic set's README.txt states (the folder or, for a held-out
    subfolder, its parent); None for any other folder. Ground-truth scoring replays the loader from that render, and an
    independent evaluator renders the same vocabulary with another seed."""
    for where in (folder, os.path.dirname(os.path.normpath(folder))):
        try:
            with open(os.path.join(where, "README.txt"), encoding="utf-8") as f:
                text = f.read(65536)
        except (OSError, UnicodeDecodeError):
            continue
        if text.startswith(README_TITLE):  # what is_synthetic_set checks, without reading the file twice
            m = re.search(r"clips: (\d+)\s+heldout: \d+\s+seed: (\d+)\s+size: (\d+)x\d+\s+frames: (\d+)", text)
            return dict(clips=int(m[1]), seed=int(m[2]), size=int(m[3]), frames=int(m[4])) if m else None
    return None


def rendered_at(folder: str) -> tuple[int, int] | None:
    """(size, frames) of synth_settings, or None."""
    s = synth_settings(folder)
    return (s["size"], s["frames"]) if s else None


def will_write_synthetic(dc: DataConfig) -> bool:
    """True when ensure_data would write the synthetic set: data.synth_if_missing (the demo preset) and data_dir is the
    demo's own folder with no clips. Any other folder is the user's: missing or empty, it is an error, never filled
    with synthetic clips that would then be trained on as if they were the user's data."""
    same = os.path.realpath(dc.data_dir) == os.path.realpath(DEMO_DATA_DIR)
    return dc.synth_if_missing and same and not has_clips(dc.data_dir)


def ensure_data(dc: DataConfig) -> None:
    """Write the built-in synthetic set where will_write_synthetic says so."""
    if will_write_synthetic(dc):
        print(f"no clips in {dc.data_dir}: writing the built-in synthetic sign set ({dc.synth_num} clips, "
              f"seed {dc.synth_seed})", file=sys.stderr)
        write_dataset(dc.data_dir, dc.synth_num, seed=dc.synth_seed, holdout=dc.synth_holdout, workers=usable_cpus(),
                      command="python main.py train (demo preset)", flag="data.data_dir")
