"""A user's own data folder: caption normalisation, rest-pose trimming, the start-up summary, and presets pointed at
another folder (experiment name and sample prompts of their own)."""
import numpy as np
import pytest

from config import build_config
from data.folder import find_pairs, normalize_caption
from dataset import SignDataset, load_clip, moving_span
from utils.gif import write_gif
from config import DataConfig


def ramp(levels, size=8):
    """Frames of solid grey at the given levels: the decoded mean tells which frame it was."""
    return np.stack([np.full((size, size, 3), v, dtype=np.uint8) for v in levels])


@pytest.mark.parametrize("raw,expected", [("Thank you.", "thank you"), ("  HELLO  ", "hello"),
                                          ("Don't stop!", "dont stop"), ("yes/no", "yes no"),
                                          ("Café, très bien", "café très bien"), ("?!", "")])
def test_normalize_caption(raw, expected):
    assert normalize_caption(raw) == expected


def test_caption_normalize_merges_case_and_punctuation(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, caption in enumerate(["Hello", "hello", "Thank you.", "thank you", "..."]):
        write_gif(str(data / f"c{k}.gif"), ramp([10 * k, 10 * k + 50]))
        (data / f"c{k}.txt").write_text(caption)
    assert len({c for _, c in find_pairs(str(data))[0]}) == 5
    pairs, skipped = find_pairs(str(data), normalize=True)
    assert [c for _, c in pairs] == ["hello", "hello", "thank you", "thank you"]
    assert skipped == [("c4.gif", "empty caption after data.caption_normalize (punctuation only)")]
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), num_frames=2, image_size=8,
                     val_fraction=0.0, caption_normalize=True)
    ds = SignDataset(cfg, quiet=True)
    assert ds.caption_vocab == ["hello", "thank you"] and ds.top_captions(3) == ["hello", "thank you"]


def test_moving_span_exact():
    # changes between neighbours: 0, 0, 30, 30, 0, 2 -> frames 2..5 move (threshold 5)
    frames = ramp([0, 0, 0, 30, 60, 60, 62])
    assert moving_span(frames, 5.0) == (2, 4)
    assert moving_span(frames, 1.0) == (2, 6)
    assert moving_span(ramp([7, 7, 7]), 1.0) == (0, 2)  # nothing moves: kept whole


def test_trim_still_samples_only_the_sign(tmp_path):
    path = str(tmp_path / "rest_sign_rest.gif")
    levels = [0, 1, 0, 1, 40, 80, 120, 160, 161, 160, 161, 160]  # rest (flickering by 1), 4 moving frames, rest
    write_gif(path, ramp(levels))  # distinct neighbours: Pillow would merge identical ones into one longer frame
    untrimmed = load_clip(path, 4, 8, "pad")
    trimmed = load_clip(path, 4, 8, "pad", trim_still=5.0)
    # whole clip (12 frames of 100 ms): instants 50, 417, 783, 1150 ms -> frames 0, 4, 7, 11; trimmed to frames 3..7
    # (the last rest frame before the first change is where the movement starts): instants 50, 183, 317, 450 ms of
    # those 500 ms -> frames 3, 4, 6, 7
    assert [int(f.mean()) for f in untrimmed] == [0, 40, 160, 160]
    assert [int(f.mean()) for f in trimmed] == [1, 40, 120, 160]


def test_summary_line_at_start(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(6):
        write_gif(str(data / f"c{k}.gif"), ramp([10 * k, 10 * k + 50]))
        (data / f"c{k}.txt").write_text("sign" if k % 2 else "other sign")
    (data / "lonely.gif").write_bytes(b"GIF89a")
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), num_frames=2, image_size=8,
                     val_fraction=0.3)
    ds = SignDataset(cfg)
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("data: ")]
    n_val = 6 - len(ds)
    assert summary == [f"data: {data}: 6 captioned clips (train {6 - n_val}, val {n_val}); {6 - n_val} train clips "
                       f"loaded with {len(ds.caption_vocab)} distinct captions, 1 file(s) skipped"]


def test_a_preset_on_another_folder_gets_its_own_name_and_prompts(tmp_path):
    demo = build_config("demo")
    assert demo.train.exp_name == "demo" and demo.train.sample_prompts == ("hello", "thank you", "yes no please")
    mine = build_config("demo", [f"data.data_dir={tmp_path / 'My Signs!'}"])
    assert mine.train.exp_name == "demo_My_Signs" and mine.train.sample_prompts == ()
    named = build_config("demo", [f"data.data_dir={tmp_path}/x/", "train.exp_name=run1", "sample_prompts=hi"])
    assert named.train.exp_name == "run1" and named.train.sample_prompts == ("hi",)
    assert build_config("demo", ["data.data_dir=./training_data/synthetic"]).train.exp_name == "demo"


def test_data_stats_cli(tmp_path, capsys):
    import main
    from PIL import Image
    from utils.video import write_video

    data = tmp_path / "signs"
    data.mkdir()
    for k, caption in enumerate(["Hello", "thank you", "thank you", "yes no please"]):
        write_gif(str(data / f"g{k}.gif"), ramp([10 * k + 5 * t for t in range(6)], size=20))
        (data / f"g{k}.txt").write_text(caption)
    write_video(str(data / "v.mp4"), ramp([7 * t for t in range(10)], size=24), fps=5)
    (data / "v.txt").write_text("hello!")
    (data / "bad.mkv").write_bytes(b"nope")
    (data / "bad.txt").write_text("bad")
    sheet = tmp_path / "sheet.png"
    code = main.main(["data-stats", "--set", f"data.data_dir={data}", "--set", "data.caption_normalize=true",
                      "--set", "data.val_fraction=0", "--sheet", str(sheet)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[1] == "clips: 5 with captions (4 .gif, 1 .mp4); train 5, val 0; held-out combinations in heldout/: 0"
    assert out[2] == ("captions: 3 distinct, vocabulary 6 words; words per caption 1 / 1 / 2 / 2.6 / 3 "
                      "(min / p10 / median / p90 / max)")
    assert out[3] == "caption lengths: 1 word(s): 2, 2 word(s): 2, 3 word(s): 1"
    assert out[4].startswith("most frequent words: hello (2), thank (2), you (2)")
    assert out[5] == "duration (s): 0.6 / 0.6 / 0.6 / 1.44 / 2 (min / p10 / median / p90 / max)"
    assert out[7] == "resolutions: 20x20 (4), 24x24 (1)"
    assert out[8] == "skipped: 1" and out[9].startswith("  bad.mkv: unreadable: ")
    with Image.open(sheet) as im:  # 5 clips of 4 frames of 32 px, twice enlarged, 2 columns, 3 rows
        assert im.size == (2 * 4 * 64 + 4, 3 * (64 + 14) + 2 * 4)
    assert main.main(["data-stats", "--set", f"data.data_dir={data}", "--sheet-clips", "0"]) == 2


def test_evaluate_counts_normalised_captions_as_seen(tmp_path):
    # evaluate compares the data set's (normalised) captions with training_captions: both must be normalised alike,
    # or "Nice to meet you." in a file reads as unseen beside the picked "nice to meet you"
    from methods.evaluation.captions import pick_captions, training_captions

    data = tmp_path / "data"
    data.mkdir()
    for k, caption in enumerate(["Nice to meet you.", "Hello!", "THANK you"]):
        write_gif(str(data / f"c{k}.gif"), ramp([10 * k, 10 * k + 50]))
        (data / f"c{k}.txt").write_text(caption)
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), num_frames=2, image_size=8,
                     val_fraction=0.0, caption_normalize=True)
    names, _ = pick_captions(SignDataset(cfg, quiet=True), 3, 0)
    assert sorted(names) == ["hello", "nice to meet you", "thank you"]
    assert training_captions(cfg) == set(names)
