"""Ground-truth scores of clips of the synthetic signer: no learned model, only what the renderer knows.

A learned text-video scorer can be satisfied by coloured blobs in the right places (colour + location alone tell 23 of
the 24 words apart). Here each hand is found by colour, its shape is read by fitting the renderer's own shape masks,
and everything is compared with the renderer's truth (synth_truth.py) frame by frame:

place_px     mean distance (pixels of the clip) from each true hand centre to the hand found for it; a hand not found
             costs MISS (half the frame), so a blank clip is not a perfect one
dtw_px       the same distance under dynamic time warping: the path's shape with timing slack
shape_acc    share of true hands found with the word's shape (disc / square / diamond / ring); missing = wrong
colour_acc   share of true hands found with the word's palette colour; missing = wrong
pck          share of true hands with a found hand within one hand radius of it (percentage of correct keypoints)
word_acc     share of frames whose hands read as the word the caption has there (among the caption's words)
order_ok     1 when the words read over time, repeats merged, are exactly the caption in order
background   mean |pixel - flat background colour| (0-255) over pixels that are background in every real frame

`score_clips(clips, captions)` returns {"overall": {metric: float}, "per_word": {word: {metric: float}},
"clips": [score_clip dicts]}: "overall" is flat floats, ready for a log line or TensorBoard scalars.
"""
from __future__ import annotations

import numpy as np

from data.synth import AMPLITUDE, BASE, COLOURS, INK, SHAPES, VOCAB, WordSpec, _coverage, _sd_hand
from methods.synth_truth import (Truth, background_mask, hand_radius_px, hand_template, path_points, real_clip,
                                 truth)

PALETTE = np.array(list(COLOURS.values()), np.float32)  # (9, 3) hand colours
COLOUR_NAMES = tuple(COLOURS)
# body colours (palette tints move them <= 10 per channel); INK is not here: it is the zero end of every hand colour
BODY = np.array([*BASE.values(), np.array(BASE["shirt"]) * 0.78, (150, 60, 60)], np.float32)
# what may be drawn over the background region (arms, outlines), so not noise there
FIGURE = np.array([BASE["skin"], np.array(BASE["shirt"]) * 0.78, INK], np.float32)
BODY_TOL = 24.0  # a pixel this close to a body colour is body: a tint moves it at most 17.3, rounding 0.9 more
LINE_TOL = 30.0  # how far off the ink -> hand-colour line a pixel may be and still be hand (grain, blur)
# below this a reading is more likely an outline's ink over grey body than a hand's edge (white hands, mostly)
ALPHA_FLOOR = 0.25
MIN_AREA = 0.4   # a blob under this share of a hand's area is a speck, not a hand
# a blob over this many hands' area, where the caption has two hands, is both touching (they cross at the middle in
# friend, want, name, what); one real hand is at most 1.08 hands' area at 32 and 64 px
MERGED_AREA = 1.25
STEP = 0.25      # shape fit: sub-pixel grid of candidate centres, +-SPAN px around the blob's centroid
SPAN = 2.0
METRICS = ("place_px", "dtw_px", "shape_acc", "colour_acc", "pck", "word_acc")
# what `evaluate` prints and logs of the overall scores (the JSON has every metric, per word too)
HEADLINE = ("place_px", "dtw_px", "shape_acc", "colour_acc", "pck", "word_acc", "order_ok", "background")


def hand_alpha(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 9): how much of each pixel each hand colour covers, reading the pixel as that colour over ink."""
    # the renderer paints a hand's anti-aliased edge over its 1 px ink outline, so an edge pixel is exactly
    # a * colour + (1 - a) * INK: projecting onto that line recovers the coverage a that a shape template predicts
    p = frames.astype(np.float32)
    d = p - INK
    v = PALETTE - INK
    a = np.einsum("thwc,kc->thwk", d, v) / (v * v).sum(1)
    a = a.clip(0.0, 1.0)
    off = np.linalg.norm(d[..., None, :] - a[..., None] * v, axis=-1)
    body = np.linalg.norm(p[..., None, :] - BODY, axis=-1).min(-1) < BODY_TOL
    return np.where((off < LINE_TOL) & ~body[..., None] & (a >= ALPHA_FLOOR), a, 0.0).astype(np.float32)


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of (T, H, W) bool (0 = none): propagate the largest id until nothing changes."""
    lab = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        p = np.pad(lab, ((0, 0), (1, 1), (1, 1)))
        h, w = mask.shape[1:]
        best = np.max([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
        new = np.where(mask, best, 0)
        if (new == lab).all():
            return lab
        lab = new


def _split(ys: np.ndarray, xs: np.ndarray) -> list[np.ndarray]:
    """Two index sets of a merged blob's pixels: 2-means on position, started at its leftmost and rightmost pixels."""
    pts = np.stack([xs, ys], 1).astype(np.float64)
    c = pts[[pts[:, 0].argmin(), pts[:, 0].argmax()]]
    for _ in range(10):
        near = np.linalg.norm(pts[:, None] - c[None], axis=-1).argmin(1)
        c = np.stack([pts[near == k].mean(0) if (near == k).any() else c[k] for k in range(2)])
    return [np.flatnonzero(near == k) for k in range(2)]


def _fit_shape(obs: np.ndarray, cx: float, cy: float, size: int) -> tuple[str, float, float, float]:
    """(shape, x, y, IoU): the renderer's shape mask and sub-pixel centre that best overlap the hand's coverage map."""
    win = 2 * int(np.ceil(1.3 * hand_radius_px(size) + SPAN + 1.5)) + 1  # room for the furthest offset
    ix, iy = int(round(cx)), int(round(cy))
    pad = np.pad(obs, win)
    patch = pad[iy + win - win // 2: iy + win + win // 2 + 1, ix + win - win // 2: ix + win + win // 2 + 1]
    g = np.arange(-SPAN - 0.5, SPAN + 0.5 + STEP / 2, STEP)  # from the centre pixel: the same grid for every hand,
    dx, dy = (tuple(a.ravel()) for a in np.meshgrid(g, g))  # so its templates are made once per size (cached)
    best = ("disc", cx, cy, -1.0)
    for shape in SHAPES:
        tmpl = hand_template(shape, size, dx, dy, win)
        iou = np.minimum(tmpl, patch).sum((1, 2)) / np.maximum(np.maximum(tmpl, patch).sum((1, 2)), 1e-6)
        k = int(iou.argmax())
        if iou[k] > best[3] + 1e-6:  # ties go to SHAPES order
            best = (shape, ix + dx[k], iy + dy[k], float(iou[k]))
    return best


def _coverage_at(shape: str, x: float, y: float, size: int) -> np.ndarray:
    g = (np.arange(size) + 0.5) / size
    c = (np.array([[x, y]]) + 0.5) / size
    return _coverage(_sd_hand(g[None, None, :], g[None, :, None], c, shape), size)[0]


def find_hands(alpha: np.ndarray, labels: np.ndarray, size: int, expect: int = 2) -> list[dict]:
    """Up to two hands in one frame: {"xy", "colour", "shape", "iou"}, biggest blobs first."""
    strength = alpha.max(-1)
    area = np.pi * hand_radius_px(size) ** 2
    blobs = []
    for lab in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == lab)
        if len(ys) >= MIN_AREA * area:
            blobs.append((ys, xs))
    blobs.sort(key=lambda b: -strength[b].sum())
    if expect == 2 and len(blobs) == 1 and len(blobs[0][0]) > MERGED_AREA * area:
        ys, xs = blobs[0]
        blobs = [(ys[k], xs[k]) for k in _split(ys, xs)]
    hands = []
    for ys, xs in blobs[:2]:
        colour = int(alpha[ys, xs].sum(0).argmax())
        w = alpha[ys, xs, colour] + 1e-6
        hands.append({"xy": np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()]), "colour": colour})
    for _ in range(2):  # second round: each hand fitted with the other's fitted mask taken out (hands that touch)
        fitted = [_coverage_at(h["shape"], *h["xy"], size) if "shape" in h else 0.0 for h in hands]
        for i, h in enumerate(hands):
            others = sum((f for j, f in enumerate(fitted) if j != i), np.zeros((size, size)))
            obs = np.clip(alpha[..., h["colour"]] - others, 0.0, 1.0)
            h["shape"], x, y, h["iou"] = _fit_shape(obs, *h["xy"], size)
            h["xy"] = np.array([x, y])
    return hands


def match(found: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the found hand (m, 2) matched to each true hand (k, 2), -1 if none; their distances)."""
    # as many found hands as true ones: each its own (cheapest pairing); fewer: each true hand takes the nearest, as
    # two hands crossing at the middle are one blob, and a generator's lone blob is then as far off as it looks
    if len(found) == 0:
        return np.full(len(true), -1), np.full(len(true), np.inf)
    d = np.linalg.norm(true[:, None] - found[None], axis=-1)  # (k, m), k, m <= 2
    if len(true) == 2 and len(found) >= 2:
        pick = np.array([0, 1]) if d[0, 0] + d[1, 1] <= d[0, 1] + d[1, 0] else np.array([1, 0])
    else:
        pick = d.argmin(1)
    return pick, d[np.arange(len(true)), pick]


def set_distance(found: np.ndarray, true: np.ndarray, miss: float) -> float:
    """Mean over true hands of the distance to the found hand matched to it; a hand with none costs miss."""
    return float(np.minimum(match(found, true)[1], miss).mean())


def dtw(cost: np.ndarray) -> float:
    """Dynamic time warping over a (n, m) cost matrix: the mean cost along the cheapest monotone alignment."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1))
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = [(acc[i - 1, j - 1], steps[i - 1, j - 1]), (acc[i - 1, j], steps[i - 1, j]),
                    (acc[i, j - 1], steps[i, j - 1])]
            a, s = min(prev, key=lambda p: (p[0], p[1]))
            acc[i, j], steps[i, j] = a + cost[i - 1, j - 1], s + 1
    return float(acc[n, m] / steps[n, m])


def _recognise(hands: list[dict], specs: tuple[WordSpec, ...], size: int) -> int | None:
    """Which caption word one frame's hands look like: colour, shape, hand count and where its path runs."""
    if not hands:
        return None
    xy = np.stack([h["xy"] for h in hands])
    colour = COLOUR_NAMES[hands[0]["colour"]]
    costs = []
    for spec in specs:
        pts = path_points(spec, size)  # (n, k, 2)
        place = min(set_distance(xy, p, 1e9) for p in pts) / (AMPLITUDE * size)
        costs.append((colour != spec.colour_name) + 0.5 * (hands[0]["shape"] != spec.shape)
                     + 0.5 * abs(len(hands) - pts.shape[1]) + 0.4 * min(place, 1.0))
    return int(np.argmin(costs))


def _background_pixels(clip: np.ndarray, alpha: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 3) pixels of the background region that are not a hand, arm or outline: a misplaced hand is a path error,
    scored there, not noise; what is left of the region is judged against its flat colour."""
    px, a = clip[:, mask].astype(np.float32), alpha[:, mask].max(-1)
    drawn = np.linalg.norm(px[..., None, :] - FIGURE, axis=-1).min(-1) < BODY_TOL
    return px[(a == 0) & ~drawn]


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def score_clip(clip: np.ndarray, words, size: int | None = None, num_frames: int | None = None,
               source: tuple[int, int] | None = None) -> dict:
    """{"caption", "overall": {metric: float}, "words": [per-word dict], "read": word index per frame} of one clip."""
    # clip: uint8 (T, H, W, 3); size / num_frames only check it; source: how the truth was rendered (synth_truth)
    words = tuple(words.split() if isinstance(words, str) else words)
    T, H, W, _ = clip.shape
    if H != W or (size or H) != H or (num_frames or T) != T:
        raise ValueError(f"clip is {T}x{H}x{W}, expected {num_frames}x{size}x{size} square frames")
    size, miss = H, H / 2
    tr: Truth = truth(words, size, T, source)
    alpha = hand_alpha(clip)
    labels = label_components(alpha.max(-1) > 0.5)
    frames = [find_hands(alpha[t], labels[t], size, len(tr.active(t))) for t in range(T)]
    found_xy = [np.stack([h["xy"] for h in f]) if f else np.zeros((0, 2)) for f in frames]
    cost = np.array([[set_distance(found_xy[i], tr.active(j), miss) for j in range(T)] for i in range(T)])
    read = [_recognise(f, tr.specs, size) for f in frames]
    per_frame = []
    for t, hands in enumerate(frames):
        spec, true = tr.specs[tr.word[t]], tr.active(t)
        pick, dist = match(found_xy[t], true)
        hits = [hands[i] for i in pick if i >= 0]
        per_frame.append({"place_px": cost[t, t], "pck": float((dist <= hand_radius_px(size)).mean()),
                          "shape_acc": sum(h["shape"] == spec.shape for h in hits) / len(true),
                          "colour_acc": sum(COLOUR_NAMES[h["colour"]] == spec.colour_name for h in hits) / len(true),
                          "word_acc": float(read[t] == tr.word[t])})
    per_word = []
    for i, spec in enumerate(tr.specs):
        ts = tr.word_frames(i)
        row = {"word": spec.word, "frames": len(ts), "dtw_px": dtw(cost[np.ix_(ts, ts)])}
        row.update({m: _mean(per_frame[t][m] for t in ts) for m in METRICS if m != "dtw_px"})
        row["shapes_read"] = [h["shape"] for t in ts for h in frames[t]]
        per_word.append(row)
    seen = [r for r in read if r is not None]  # frames without a hand say nothing about order
    merged = [r for j, r in enumerate(seen) if j == 0 or seen[j - 1] != r]
    bg = _background_pixels(clip, alpha, background_mask(words, size, T, source))
    overall = {m: _mean(f[m] for f in per_frame) for m in METRICS if m != "dtw_px"}
    overall.update(dtw_px=dtw(cost), order_ok=float(merged == list(range(len(words)))),
                   background=float(np.abs(bg - np.median(bg, 0)).mean()) if len(bg) > 0 else float("nan"))
    return {"caption": " ".join(words), "overall": overall, "words": per_word, "read": read}


def score_clips(clips, captions, source: tuple[int, int] | None = None, real_reference: bool = True) -> dict:
    """{"overall": means over clips, "per_word": means per vocabulary word, "clips": each score_clip} of N clips."""
    # captions: word tuples or strings. real_reference adds overall["background_real"], the same statistic on the
    # renderer's clips of these captions: generated clips are judged against it, not against an abstract zero
    captions = [tuple(c.split()) if isinstance(c, str) else tuple(c) for c in captions]
    scored = [score_clip(np.asarray(c), words, source=source) for c, words in zip(clips, captions)]
    keys = scored[0]["overall"].keys() if scored else ()
    overall = {k: _mean(s["overall"][k] for s in scored) for k in keys}
    if real_reference and scored:
        T, size = np.asarray(clips[0]).shape[:2]
        reals = [real_clip(words, size, T, i, source) for i, words in enumerate(captions)]
        overall["background_real"] = _mean(score_clip(r, w, source=source)["overall"]["background"]
                                           for r, w in zip(reals, captions))
    per_word: dict[str, dict] = {}
    for s in scored:
        for row in s["words"]:
            per_word.setdefault(row["word"], []).append(row)
    per_word = {w: {"clips": len(rows), **{m: _mean(r[m] for r in rows) for m in METRICS}}
                for w, rows in sorted(per_word.items(), key=lambda kv: VOCAB.index(kv[0]))}
    return {"overall": overall, "per_word": per_word, "clips": scored}


def scorable(caption: str) -> bool:
    """Whether the ground truth knows a caption: every word one of the synthetic signer's."""
    return bool(caption.split()) and all(w in VOCAB for w in caption.split())


def compare(generated: np.ndarray, real: np.ndarray, captions: list[str], source: tuple[int, int] | None) -> dict:
    """Ground truth of a group's generated clips (N, K, T, H, W, 3) beside the real clips (K, ...) of its K captions:
    {"generated": overall, "real": overall, "per_word": generated per word, "captions": scored count}; captions
    with a word the renderer does not know are left out (counted)."""
    keep = [i for i, c in enumerate(captions) if scorable(c)]
    if not keep:
        return {"captions": 0}
    gen = score_clips([g for n in range(len(generated)) for g in generated[n, keep]],
                      [captions[i] for _ in range(len(generated)) for i in keep], source, real_reference=False)
    ref = score_clips(real[keep], [captions[i] for i in keep], source, real_reference=False)
    return {"captions": len(keep), "generated": gen["overall"], "real": ref["overall"], "per_word": gen["per_word"]}


def format_table(result: dict, title: str = "") -> str:
    """Markdown tables of score_clips' result: one row per vocabulary word, then the overall row."""
    head = "| word | clips | place px | DTW px | shape | colour | PCK | word |"
    lines = ([f"{title}"] if title else []) + [head, "|" + "---|" * 8]
    for w, r in result["per_word"].items():
        lines.append(f"| {w} | {r['clips']} | {r['place_px']:.2f} | {r['dtw_px']:.2f} | {r['shape_acc']:.2f} | "
                     f"{r['colour_acc']:.2f} | {r['pck']:.2f} | {r['word_acc']:.2f} |")
    o = result["overall"]
    lines.append(f"| **all** | {len(result['clips'])} | {o['place_px']:.2f} | {o['dtw_px']:.2f} | {o['shape_acc']:.2f}"
                 f" | {o['colour_acc']:.2f} | {o['pck']:.2f} | {o['word_acc']:.2f} |")
    bg = f"background noise {o['background']:.2f}" + (f" (real renders {o['background_real']:.2f})"
                                                      if "background_real" in o else "")
    lines.append(f"word order correct: {o['order_ok']:.2f}   {bg}")
    return "\n".join(lines)
