"""Ground-truth scores of synthetic clips (methods/ground_truth.py): real renders score at the ceiling, and
each planted fault worsens its own attribute and not (much) the others."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data.synth import SHAPES, VOCAB, WORDS, _hand_track, draw_captions, render_clip, word_spec
from methods.ground_truth import dtw, format_table, score_clip, score_clips
from data.synth import render_specs
from methods.synth_truth import background_mask, real_clip, truth

LOADED = (64, 24)  # the built-in set's render size: the demo model's 32x32 / 8 frames come from it via the loader
CAPTIONS = [c for c in draw_captions(40, 11)[len(VOCAB):] if len(c) >= 2][:8]


def overall(clip, words, source=None) -> dict:
    return score_clip(clip, words, source=source)["overall"]


def other_shape(spec):
    return dataclasses.replace(spec, shape=SHAPES[(SHAPES.index(spec.shape) + 1) % len(SHAPES)])


def far_track(spec):
    """The spec moved onto the track of the word whose place is furthest away (and whose path differs)."""
    far = max(WORDS.values(), key=lambda s: (s.path != spec.path) * np.hypot(*np.subtract(s.anchor, spec.anchor)))
    return dataclasses.replace(spec, location=far.location, path=far.path)


@pytest.mark.parametrize("words,size,frames,seed", [(("thank", "you"), 64, 24, 3), (("friend",), 32, 8, 0),
                                                    (("what", "stop", "go"), 32, 9, 7)])
def test_render_specs_draws_exactly_what_render_clip_draws(words, size, frames, seed):
    specs = [word_spec(w) for w in words]
    assert np.array_equal(render_specs(specs, size, frames, seed), render_clip(words, size, frames, seed))


def test_truth_follows_the_renderer_and_the_loader():
    tr = truth(("yes", "no", "please"), 64, 24)
    assert tr.word.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    expect = _hand_track(word_spec("no"), 1, np.linspace(0, 1, 8)) * 64 - 0.5
    assert np.allclose(tr.centres[8:16, 0], expect) and np.isnan(tr.centres[:, 1]).all()  # "no" is one-handed
    assert truth(("yes", "no", "please"), 32, 8).word.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]  # direct 8-frame render
    assert truth(("yes", "no", "please"), 32, 8, LOADED).word.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # 24 loaded as 8
    clip = render_clip(["please"], 64, 24)
    for t in range(24):  # a disc's centre pixel is the word's colour
        x, y = np.rint(truth(("please",), 64, 24).active(t)[0]).astype(int)
        assert tuple(clip[t, y, x]) == word_spec("please").colour


@pytest.mark.parametrize("size,frames,source", [(32, 8, None), (32, 8, LOADED)])
def test_real_renders_of_every_word_score_at_the_ceiling(size, frames, source):
    clips = [real_clip((w,), size, frames, 17 * i + 1, source) for i, w in enumerate(VOCAB)]
    res = score_clips(clips, [(w,) for w in VOCAB], source, real_reference=False)
    o = res["overall"]
    assert o["place_px"] < 0.3 and o["dtw_px"] < 0.3, o
    assert o["shape_acc"] >= 0.98 and o["colour_acc"] == 1.0 and o["word_acc"] == 1.0 and o["order_ok"] == 1.0, o
    assert o["pck"] >= 0.98 and o["background"] < 0.05, o
    assert min(r["shape_acc"] for r in res["per_word"].values()) >= 0.8, res["per_word"]


@pytest.mark.parametrize("size,frames,source", [(32, 8, None), (32, 8, LOADED), (64, 24, None)])
def test_real_renders_of_longer_captions_score_at_the_ceiling(size, frames, source):
    caps = CAPTIONS[:4] if size == 64 else CAPTIONS
    for i, words in enumerate(caps):
        o = overall(real_clip(words, size, frames, 5 * i, source), words, source)
        assert o["place_px"] < 0.5 and o["shape_acc"] >= 0.9 and o["colour_acc"] == 1.0, (words, o)
        assert o["word_acc"] == 1.0 and o["order_ok"] == 1.0 and o["pck"] >= 0.95, (words, o)


def fault_scores(kind: str, source=LOADED) -> tuple[dict, dict]:
    """Mean overall scores of real clips and of clips with one planted fault, over CAPTIONS at 32x32 / 8 frames."""
    real, bad = [], []
    for i, words in enumerate(CAPTIONS):
        specs = [word_spec(w) for w in words]
        clip = real_clip(words, 32, 8, i, source)
        if kind == "shape":
            faulty = real_clip(words, 32, 8, i, source, specs=[other_shape(s) for s in specs])
        elif kind == "path":
            faulty = real_clip(words, 32, 8, i, source, specs=[far_track(s) for s in specs])
        elif kind == "order":
            faulty = real_clip(words[::-1], 32, 8, i, source)
        else:  # grain: Gaussian noise, sigma 8, on the background
            noisy = clip.astype(np.float32)
            mask = background_mask(words, 32, 8, source)
            noisy[:, mask] += np.random.default_rng(i).normal(0, 8, noisy[:, mask].shape)
            faulty = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        real.append(overall(clip, words, source))
        bad.append(overall(faulty, words, source))
    return ({k: np.mean([r[k] for r in real]) for k in real[0]}, {k: np.mean([r[k] for r in bad]) for k in bad[0]})


def test_a_swapped_hand_shape_costs_shape_accuracy_only():
    real, bad = fault_scores("shape")
    assert bad["shape_acc"] < 0.1 <= real["shape_acc"] - 0.8
    assert bad["place_px"] < 0.5 and bad["colour_acc"] == 1.0 and bad["pck"] >= 0.95
    assert bad["word_acc"] >= 0.9 and abs(bad["background"] - real["background"]) < 0.1


def test_a_wrong_path_costs_place_and_dtw_only():
    real, bad = fault_scores("path")
    assert bad["place_px"] > 10 and bad["dtw_px"] > 10 and bad["pck"] < 0.1 and real["place_px"] < 0.5
    assert bad["shape_acc"] >= 0.95 and bad["colour_acc"] == 1.0 and bad["order_ok"] == 1.0
    assert bad["background"] < 2.0  # arms pass through the background now: only their soft edges count


def test_swapped_word_order_fails_the_order():
    real, bad = fault_scores("order")
    assert real["order_ok"] == 1.0 and bad["order_ok"] == 0.0 and bad["word_acc"] < 0.5
    # every frame shows another word than the caption has there, so the per-frame attributes drop too; DTW cannot
    # undo a reordering, the background stays clean
    assert bad["place_px"] > 5 and bad["background"] < 0.1


def test_grain_on_the_background_costs_cleanliness_only():
    real, bad = fault_scores("grain")
    assert real["background"] < 0.05 and bad["background"] > 4.0
    assert {k: round(v, 6) for k, v in bad.items() if k != "background"} == \
        {k: round(v, 6) for k, v in real.items() if k != "background"}


@pytest.mark.parametrize("size,frames", [(32, 8), (64, 24)])
def test_a_disc_where_a_square_should_be_is_a_wrong_shape(size, frames):
    words = ("thank", "help", "please")  # square, square, disc
    assert score_clips([real_clip(words, size, frames, 2)], [words], real_reference=False)["overall"]["shape_acc"] == 1
    specs = [dataclasses.replace(word_spec(w), shape="disc") for w in words]
    res = score_clips([real_clip(words, size, frames, 2, specs=specs)], [words], real_reference=False)
    per = res["per_word"]
    assert per["thank"]["shape_acc"] == 0.0 and per["help"]["shape_acc"] == 0.0 and per["please"]["shape_acc"] == 1.0
    assert res["overall"]["place_px"] < 0.5 and res["overall"]["colour_acc"] == 1.0


def test_hands_are_found_through_grain_over_the_whole_frame():
    words = CAPTIONS[0]
    clip = real_clip(words, 32, 8, 0, LOADED).astype(np.float32)
    noisy = np.clip(clip + np.random.default_rng(0).normal(0, 4, clip.shape), 0, 255).astype(np.uint8)
    o = overall(noisy, words, LOADED)
    assert o["place_px"] < 0.6 and o["shape_acc"] >= 0.9 and o["colour_acc"] == 1.0 and o["order_ok"] == 1.0, o


def test_a_clip_with_no_hands_scores_nothing():
    words = ("help", "love")
    blank = np.repeat(real_clip(words, 32, 8)[:, :1, :1], 32, 1).repeat(32, 2)  # background colour everywhere
    o = overall(blank, words)
    assert o["pck"] == 0 and o["shape_acc"] == 0 and o["colour_acc"] == 0 and o["order_ok"] == 0
    assert o["place_px"] == 16.0 and o["background"] == 0.0  # a missing hand costs half the frame


def test_dtw_forgives_timing_not_place():
    a = np.array([0.0, 0, 1, 2, 3, 3])
    b = np.array([0.0, 1, 2, 3, 3, 3])
    assert dtw(np.abs(a[:, None] - b[None])) == 0.0 < np.abs(a - b).mean()
    assert dtw(np.abs(a[:, None] - (b + 2)[None])) > 1.0


def test_score_clips_reports_per_word_overall_and_the_real_background():
    caps = [("hello", "yes"), "good bad"]
    clips = [real_clip(("hello", "yes"), 32, 8, 0), real_clip(("good", "bad"), 32, 8, 1)]
    res = score_clips(clips, caps)
    assert list(res["per_word"]) == ["hello", "yes", "good", "bad"]  # vocabulary order
    assert res["overall"]["background_real"] == 0.0 and len(res["clips"]) == 2
    assert all(isinstance(v, float) for v in res["overall"].values())  # ready for scalars
    table = format_table(res)
    assert "| good | 1 |" in table and "| **all** | 2 |" in table and "word order correct: 1.00" in table
    with pytest.raises(ValueError, match="expected"):
        score_clip(clips[0], ("hello",), size=64)
