"""Tests for dataset.py and utils.gif.read_gif on small GIFs written into tmp_path."""
import dataclasses
import json
import os
import struct

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from config import DataConfig
import data.folder as data_folder
from data.folder import DataError, find_pairs
from dataset import SignDataset, load_clip, sample_frame_indices
from utils.errors import UserError
from utils.gif import GifReadError, read_gif, write_gif
from utils.pixels import to_unit_range


def save_pil_gif(path, images, duration=100):
    """Write PIL images as a GIF (Pillow merges identical consecutive frames, so keep frames distinct)."""
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


def solid(h, w, color, mode="RGB"):
    return Image.new(mode, (w, h), color)


def grey_ramp_gif(path, n, size=16, duration=100):
    """Frame i is a solid grey of level 3*i, so the decoded value tells which frame was sampled."""
    save_pil_gif(path, [solid(size, size, (3 * i,) * 3) for i in range(n)], duration)


def frame_ids(clip):
    return [int(round(f.mean() / 3)) for f in clip]


def make_set(folder, n, size=16, frames=4, captions=None):
    """n distinct clips clip000.gif .. with captions (default: 'sign k % 3' so some captions repeat)."""
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        images = [solid(size, size, ((37 * k + 50 * t) % 256, (11 * k) % 256, 40 * t)) for t in range(frames)]
        save_pil_gif(os.path.join(folder, f"clip{k:03d}.gif"), images)
        caption = captions[k] if captions else f"sign {k % 3}"
        with open(os.path.join(folder, f"clip{k:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(caption + "\n")


def warnings(capsys) -> list[str]:
    """stderr lines without the start-up summary ("data: ...", tested on its own)."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("data: ")]


def cfg_for(tmp_path, **kw):
    kw.setdefault("data_dir", str(tmp_path / "data"))
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("num_frames", 8)
    kw.setdefault("image_size", 16)
    return DataConfig(**kw)


# ---------------------------------------------------------------------------------------------- read_gif

def test_read_gif_rgb(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    write_gif(str(tmp_path / "a.gif"), np.stack([np.full((10, 12, 3), c, np.uint8) for c in colors]), 200)
    frames, durations = read_gif(str(tmp_path / "a.gif"))
    assert frames.shape == (3, 10, 12, 3) and frames.dtype == np.uint8
    assert [tuple(f[0, 0]) for f in frames] == colors
    assert durations == [200.0] * 3


def test_read_gif_palette(tmp_path):
    images = []
    for i in range(3):
        im = Image.new("P", (8, 8), i)
        im.putpalette([255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * 759)
        images.append(im)
    save_pil_gif(tmp_path / "p.gif", images)
    frames, _ = read_gif(str(tmp_path / "p.gif"))
    assert frames.shape == (3, 8, 8, 3)
    assert [tuple(f[4, 4]) for f in frames] == [(255, 0, 0), (0, 128, 0), (10, 20, 30)]


def test_read_gif_grayscale(tmp_path):
    save_pil_gif(tmp_path / "g.gif", [solid(9, 7, v, mode="L") for v in (0, 100, 255)])
    frames, _ = read_gif(str(tmp_path / "g.gif"))
    assert frames.shape == (3, 9, 7, 3)
    assert [tuple(f[0, 0]) for f in frames] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_read_gif_rgba_mixed_channels(tmp_path):
    images = []
    for i in range(4):
        x = np.zeros((20, 20, 4), np.uint8)
        x[..., 0], x[..., 3] = 200, 255
        x[:5, :5, 3] = 0  # transparent corner
        x[i * 5:(i + 1) * 5, 10:, 1] = 255  # moving green bar keeps frames distinct
        images.append(Image.fromarray(x, "RGBA"))
    save_pil_gif(tmp_path / "t.gif", images)
    # precondition: the plugin really hands out frames with different channel counts for this file
    assert len({f.shape[-1] for f in iio.imiter(tmp_path / "t.gif")}) > 1
    frames, _ = read_gif(str(tmp_path / "t.gif"))
    assert frames.shape == (4, 20, 20, 3)
    assert tuple(frames[0, 0, 0]) == (0, 0, 0)  # transparent -> composited on black
    assert tuple(frames[0, 10, 5]) == (200, 0, 0)
    clip = load_clip(str(tmp_path / "t.gif"), 4, 8, "pad")
    assert clip.shape == (4, 8, 8, 3) and clip.dtype == np.uint8


def test_read_gif_corrupt(tmp_path):
    (tmp_path / "bad.gif").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(GifReadError):
        read_gif(str(tmp_path / "bad.gif"))
    assert issubclass(GifReadError, ValueError)


# ---------------------------------------------------------------------------------------------- preprocessing

def test_non_square_pad_keeps_edges_and_crop_shape(tmp_path):
    images = []
    for t in range(3):
        x = np.full((180, 320, 3), 128, np.uint8)
        x[80:100, 2:14] = (255, 0, 0)  # red marker at the left edge
        x[80:100, 306:318] = (0, 0, 255)  # blue marker at the right edge
        x[10 + 20 * t:30 + 20 * t, 150:170] = (0, 255, 0)  # moving block keeps frames distinct
        images.append(Image.fromarray(x))
    save_pil_gif(tmp_path / "wide.gif", images)
    pad = load_clip(str(tmp_path / "wide.gif"), 4, 64, "pad")
    assert pad.shape == (4, 64, 64, 3)
    left, right = pad[:, :, :3].astype(int), pad[:, :, -3:].astype(int)
    assert ((left[..., 0] > 150) & (left[..., 2] < 100)).any(), "left marker lost in pad mode"
    assert ((right[..., 2] > 150) & (right[..., 0] < 100)).any(), "right marker lost in pad mode"
    # 320x180 -> 64x36: 14-row bars top and bottom in the clip's border colour (the grey background)
    assert (pad[:, :14] == 128).all() and (pad[:, -14:] == 128).all()
    crop = load_clip(str(tmp_path / "wide.gif"), 4, 64, "crop")
    assert crop.shape == (4, 64, 64, 3)
    assert not (crop[..., 0] > 200).any()  # the crop fills the frame, the edge markers are cut off


def test_fit_cuts_at_most_a_quarter_of_the_long_side_then_pads(tmp_path):
    def write(name, w, h, band=0):
        frames = []
        for t in range(3):
            x = np.zeros((h, w, 3), np.uint8)
            x[..., 1] = np.linspace(0, 250, h, dtype=np.uint8)[:, None]  # ramps: no row and no column is uniform
            x[..., 2] = np.linspace(0, 250, w, dtype=np.uint8)[None, :]
            x[:, :band, 0] = 255  # a red band on the left, which the cut removes
            x[10 + 20 * t:30 + 20 * t, w // 2 - 10:w // 2 + 10, 0] = 128  # moving block keeps frames distinct
            frames.append(Image.fromarray(x))
        save_pil_gif(tmp_path / name, frames)
        return {mode: load_clip(str(tmp_path / name), 4, 64, mode) for mode in ("pad", "fit")}

    def bar_rows(clip):  # leading rows of one colour: the letterbox (a picture row is never uniform here)
        return next(n for n in range(64) if not (clip[0, n] == clip[0, 0, 0]).all())

    four_three = write("four_three.gif", 240, 180, band=28)
    # 4:3 -> its centre 180x180 (a quarter of the width cut) fills the square: no bars, the band cut away
    assert bar_rows(four_three["fit"]) == 0 and not (four_three["fit"][..., 0] > 200).any()
    assert bar_rows(four_three["pad"]) == 8 and (four_three["pad"][..., 0] > 200).any()  # 64x48 + bars
    wide = write("wide.gif", 320, 180)
    # 16:9: a quarter of 320 cut, 240x180 -> 64x48 and 8-row bars, where pad draws 64x36 with 14-row bars
    assert bar_rows(wide["fit"]) == 8 and bar_rows(wide["pad"]) == 14
    bar = wide["fit"][0, 0, 0]
    assert (wide["fit"][:, -8:] == bar).all() and not (wide["fit"][:, 8:-8] == bar).all(-1).all(-1).any()


def test_short_clip_repeats_last_frame(tmp_path):
    grey_ramp_gif(tmp_path / "s.gif", 3)
    clip = load_clip(str(tmp_path / "s.gif"), 16, 16, "pad")
    assert clip.shape == (16, 16, 16, 3)
    assert frame_ids(clip) == [0, 1, 2] + [2] * 13


def test_long_clip_spans_whole_clip(tmp_path):
    grey_ramp_gif(tmp_path / "l.gif", 80)
    ids = frame_ids(load_clip(str(tmp_path / "l.gif"), 16, 16, "pad"))
    assert ids[0] == 0 and ids[-1] == 79
    assert ids == np.round(np.linspace(0, 79, 16)).astype(int).tolist()


def test_sample_frame_indices_exact():
    assert sample_frame_indices([100] * 80, 16) == np.round(np.linspace(0, 79, 16)).astype(int).tolist()
    assert sample_frame_indices([100] * 3, 5) == [0, 1, 2, 2, 2]
    assert sample_frame_indices([100] * 4, 4) == [0, 1, 2, 3]
    # frame 4 is shown 1000 of 1900 ms: sample instants linspace(50, 1850, 8) land on it 4 times of 8
    durations = [100, 100, 100, 100, 1000, 100, 100, 100, 100, 100]
    assert sample_frame_indices(durations, 8) == [0, 3, 4, 4, 4, 4, 6, 9]
    with pytest.raises(ValueError):
        sample_frame_indices([], 4)


def test_duration_aware_sampling_from_gif(tmp_path):
    durations = [100, 100, 100, 100, 1000, 100, 100, 100, 100, 100]
    grey_ramp_gif(tmp_path / "d.gif", 10, duration=durations)
    assert read_gif(str(tmp_path / "d.gif"))[1] == [float(d) for d in durations]
    assert frame_ids(load_clip(str(tmp_path / "d.gif"), 8, 16, "pad")) == [0, 3, 4, 4, 4, 4, 6, 9]


# ---------------------------------------------------------------------------------------------- discovery

def test_corrupt_and_uncaptioned_are_skipped_with_one_warning(tmp_path, capsys):
    data = tmp_path / "data"
    make_set(data, 4)
    (data / "broken.gif").write_bytes(np.random.default_rng(1).bytes(200))
    (data / "broken.txt").write_text("broken")
    grey_ramp_gif(data / "orphan.gif", 3)
    grey_ramp_gif(data / "blank.gif", 3)
    (data / "blank.txt").write_text("  \n")
    ds = SignDataset(cfg_for(tmp_path), split="all")
    err = capsys.readouterr().err
    assert len(ds) == 4
    lines = err.strip().splitlines()
    assert lines[0] == f"warning: skipped 3 file(s) in {data} (4 clips loaded):"
    assert lines[1] == "  blank.gif: empty caption" and lines[3] == "  orphan.gif: no caption"
    assert lines[2].startswith("  broken.gif: unreadable: ") and len(lines) == 5
    assert lines[4] == (f"data: {data}: 5 captioned clips (train 4, val 1); 4 clips loaded with 3 distinct "
                        f"captions, 3 file(s) skipped")
    assert sorted(name for name, _ in ds.skipped) == ["blank.gif", "broken.gif", "orphan.gif"]
    # a warm start does not decode the broken file again, and still names it
    again = SignDataset(cfg_for(tmp_path), split="all", quiet=True)
    broken = [(n, w) for n, w in ds.skipped if n == "broken.gif"]
    assert [(n, w) for n, w in again.skipped if n == "broken.gif"] == broken


def test_awkward_names_links_and_captions_are_named_skips(tmp_path, capsys):
    data = tmp_path / "data"
    make_set(data, 2)
    outside = tmp_path / "secret.txt"
    outside.write_text("a caption read from outside the data folder")
    grey_ramp_gif(tmp_path / "outside.gif", 3)
    raw = os.fsencode(str(data))
    grey_ramp_gif(os.path.join(raw, b"bad\xff.gif").decode("utf-8", "surrogateescape"), 3)  # not UTF-8
    with open(os.path.join(raw, b"bad\xff.txt"), "wb") as f:
        f.write(b"caption")
    for stem, caption in (("nul", b"hel\x00lo"), ("esc", b"\x1b[31mred"), ("latin1", "caf\xe9".encode("latin-1")),
                          ("utf16", "thank you".encode("utf-16")), ("case", b"x")):
        grey_ramp_gif(data / f"{stem}.gif", 3)
        (data / (f"{stem}.txt" if stem != "case" else "CASE.txt")).write_bytes(caption)
    grey_ramp_gif(data / "linked.gif", 3)
    os.symlink(outside, data / "linked.txt")  # a caption that reads any file on the machine
    os.symlink(tmp_path / "outside.gif", data / "away.gif")
    (data / "away.txt").write_text("away")
    os.symlink(tmp_path / "missing.gif", data / "dangling.gif")
    grey_ramp_gif(data / "new\nline.gif", 3)
    (data / "sub").mkdir()
    grey_ramp_gif(data / "sub" / "deep.gif", 3)
    ds = SignDataset(cfg_for(tmp_path), split="all")
    assert ds.captions.count("thank you") == 1  # UTF-16 with a BOM is a documented rule, not a skip
    assert len(ds) == 3
    assert warnings(capsys) == [
        f"warning: skipped 12 file(s) in {data} (3 clips loaded):",
        "  away.gif: link to outside the data folder",
        "  bad\\xff.gif: file name is not valid UTF-8",  # escaped, on one line
        "  bad\\xff.txt: file name is not valid UTF-8",
        "  case.gif: no caption (CASE.txt differs in case)",
        "  dangling.gif: broken link",
        "  esc.gif: caption has control characters",
        "  latin1.gif: caption is not UTF-8 (or UTF-16 with a BOM)",
        "  linked.gif: no caption",
        "  linked.txt: link to outside the data folder",
        "  new\\nline.gif: no caption",
        "  nul.gif: caption has control characters",
        "  sub/: a folder: not read (clips must sit directly in the data folder)"]


def test_every_skip_is_listed_not_the_first_ten(tmp_path, capsys):
    data = tmp_path / "data"
    make_set(data, 1)
    for i in range(25):
        grey_ramp_gif(data / f"orphan{i:02d}.gif", 2)
    SignDataset(cfg_for(tmp_path), split="all")
    lines = warnings(capsys)
    assert lines[0].startswith("warning: skipped 25 file(s)") and lines[0].endswith("(1 clips loaded):")
    assert lines[1:] == [f"  orphan{i:02d}.gif: no caption" for i in range(25)]


def test_find_pairs_reads_captions(tmp_path):
    data = tmp_path / "data"
    make_set(data, 2, captions=["hello  world\n", "thank you"])
    grey_ramp_gif(data / "UPPER.GIF", 2)
    (data / "UPPER.txt").write_text("\ufeffyes\n", encoding="utf-8")
    pairs, skipped = find_pairs(str(data))
    assert [(os.path.basename(p), c) for p, c in pairs] == [
        ("UPPER.GIF", "yes"), ("clip000.gif", "hello world"), ("clip001.gif", "thank you")]
    assert skipped == []


@pytest.mark.parametrize("make", ["missing", "empty", "only_txt"])
def test_no_data_raises_data_error(tmp_path, make):
    data = tmp_path / "data"
    if make != "missing":
        data.mkdir()
    if make == "only_txt":
        (data / "a.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        SignDataset(cfg_for(tmp_path), quiet=True)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert "synth-data" in msg and str(data) in msg


def test_everything_skipped_raises(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    grey_ramp_gif(data / "a.gif", 3)
    (data / "b.gif").write_bytes(b"not a gif")
    (data / "b.txt").write_text("b")
    with pytest.raises(DataError, match="synth-data"):
        SignDataset(cfg_for(tmp_path), quiet=True)


# ---------------------------------------------------------------------------------------------- cache

def _boom(*args, **kwargs):
    raise AssertionError("decoded a GIF although the cache should have it")


def array_file(root):
    return root / json.loads((root / "index.json").read_text())["array"]


def store_dirs(tmp_path):
    return sorted(d for d in os.listdir(tmp_path / "cache") if d.startswith("clips-"))


def test_cache_second_load_decodes_nothing(tmp_path, monkeypatch):
    make_set(tmp_path / "data", 5)
    cfg = cfg_for(tmp_path)
    first = SignDataset(cfg, split="all", quiet=True)
    assert len(store_dirs(tmp_path)) == 1
    root = tmp_path / "cache" / store_dirs(tmp_path)[0]
    assert array_file(root).stat().st_size == 5 * 8 * 16 * 16 * 3
    with monkeypatch.context() as m:  # warm start: no decode, and no file is even hashed (size + mtime match)
        m.setattr(dataset, "read_gif", _boom)
        m.setattr(dataset, "load_clip", _boom)
        m.setattr(dataset, "content_hash", _boom)
        second = SignDataset(cfg, split="all", quiet=True)
    assert torch.equal(first.clips[:], second.clips[:]) and first.captions == second.captions

    # new settings -> a new store; the old one stays valid
    bigger = SignDataset(cfg_for(tmp_path, image_size=24), split="all", quiet=True)
    assert bigger.clips.shape == (5, 8, 24, 24, 3) and len(store_dirs(tmp_path)) == 2

    # a file touched but unchanged is re-hashed, not decoded; a renamed copy finds its row by content
    os.utime(tmp_path / "data" / "clip000.gif", ns=(1, 1))
    (tmp_path / "data" / "clip001.gif").rename(tmp_path / "data" / "clip009.gif")
    (tmp_path / "data" / "clip001.txt").rename(tmp_path / "data" / "clip009.txt")
    with monkeypatch.context() as m:
        m.setattr(dataset, "load_clip", _boom)
        moved = SignDataset(cfg, split="all", quiet=True)
    assert torch.equal(moved.clips[4], first.clips[1])

    # an unreadable index or an array shorter than the index says: the store is rebuilt, never trusted
    calls = []
    real = dataset.load_clip
    monkeypatch.setattr(dataset, "load_clip", lambda *a: calls.append(a) or real(*a))
    for damage in ("index", "array"):
        if damage == "index":
            (root / "index.json").write_text("{garbage")
        else:
            with open(array_file(root), "r+b") as f:
                f.truncate(3 * 8 * 16 * 16 * 3)
        calls.clear()
        again = SignDataset(cfg, split="all", quiet=True)
        assert len(calls) == 5 and torch.equal(again.clips[:], moved.clips[:]), damage


def test_an_interrupted_cache_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    """A build killed after some clips were appended: the next run keeps what the index published (flushed every
    FLUSH_EVERY clips) and cuts off the rest before appending."""
    import data.clip_store as clip_store

    make_set(tmp_path / "data", 5)
    cfg = cfg_for(tmp_path)
    monkeypatch.setattr(clip_store, "FLUSH_EVERY", 2)
    real, calls = dataset.load_clip, []

    def dies_at_the_fifth(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(dataset, "load_clip", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        SignDataset(cfg, split="all", quiet=True)
    root = tmp_path / "cache" / store_dirs(tmp_path)[0]
    record = 8 * 16 * 16 * 3
    assert json.loads((root / "index.json").read_text())["rows"] == 4  # two flushes of 2
    with open(array_file(root), "ab") as f:
        f.write(b"\xff" * (record // 2))  # the half-written record of a crash mid-append
    calls.clear()
    monkeypatch.setattr(dataset, "load_clip", lambda *a: calls.append(a) or real(*a))
    ds = SignDataset(cfg, split="all", quiet=True)
    assert len(calls) == 1 and array_file(root).stat().st_size == 5 * record
    fresh = tmp_path / "fresh"
    assert torch.equal(ds.clips[:], SignDataset(dataclasses.replace(cfg, cache_dir=str(fresh)), "all", quiet=True).clips[:])


def test_value_mapping_exact():
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).view(1, 1, 6, 1).expand(1, 1, 6, 3)
    y = to_unit_range(x)  # (3, 1, 1, 6)
    assert y.shape == (3, 1, 1, 6) and y.dtype == torch.float32
    assert y[0, 0, 0, 0].item() == -1.0 and y[0, 0, 0, -1].item() == 1.0
    assert torch.allclose(y[:, 0, 0], torch.tensor([0, 1, 127, 128, 254, 255]).float() / 127.5 - 1)


def test_getitem_and_get_batch(tmp_path):
    data = tmp_path / "data"
    make_set(data, 6)
    save_pil_gif(data / "bw.gif", [solid(16, 16, (0, 0, 0)), solid(16, 16, (255, 255, 255))])
    (data / "bw.txt").write_text("sign 0")
    ds = SignDataset(cfg_for(tmp_path), split="all", quiet=True)
    assert ds.clips.dtype == torch.uint8 and ds.clips.shape == (7, 8, 16, 16, 3)
    assert ds.caption_vocab == ["sign 0", "sign 1", "sign 2"]
    assert ds.caption_ids.dtype == torch.long
    assert [ds.caption_vocab[i] for i in ds.caption_ids] == ds.captions
    at = {os.path.basename(p): i for i, p in enumerate(ds.paths)}
    # clip000, clip003 and bw share the caption "sign 0" -> equal ids
    assert ds.caption_ids[at["clip000.gif"]] == ds.caption_ids[at["clip003.gif"]] == ds.caption_ids[at["bw.gif"]]
    assert ds.caption_ids[at["clip000.gif"]] != ds.caption_ids[at["clip001.gif"]]

    item = ds[at["bw.gif"]]
    assert item["video"].shape == (3, 8, 16, 16) and item["video"].dtype == torch.float32
    assert item["video"].min().item() == -1.0 and item["video"].max().item() == 1.0
    assert item["caption"] == "sign 0" and isinstance(item["caption_id"], int)

    idx = torch.tensor([5, 0, 5, 2])
    videos, ids = ds.get_batch(idx)
    assert videos.shape == (4, 3, 8, 16, 16) and videos.dtype == torch.float32 and ids.shape == (4,)
    assert videos.is_contiguous()
    for b, i in enumerate(idx.tolist()):
        assert torch.equal(videos[b], ds[i]["video"]) and ids[b].item() == ds[i]["caption_id"]
    videos_cpu, _ = ds.get_batch(idx, device="cpu")
    assert torch.equal(videos_cpu, videos)


# ---------------------------------------------------------------------------------------------- split

def test_split_deterministic_and_stable(tmp_path):
    make_set(tmp_path / "data", 40, size=8, frames=2)
    cfg = cfg_for(tmp_path, val_fraction=0.3, image_size=8, num_frames=2)
    train, val = SignDataset(cfg, "train", quiet=True), SignDataset(cfg, "val", quiet=True)
    assert 0 < len(val) < 40 and len(train) + len(val) == 40 and not set(train.paths) & set(val.paths)
    # pinned: the split is sha1(stem) < val_fraction, so these names are val on every machine, in every process and
    # version (listed once from data.folder.split_of; a Python hash() or an RNG would move them between runs)
    assert [os.path.basename(p)[:-4] for p in val.paths] == [
        "clip000", "clip001", "clip006", "clip007", "clip009", "clip011", "clip015", "clip018", "clip021", "clip031",
        "clip032", "clip037"]
    # adding files never moves existing ones
    make_set(tmp_path / "more", 1, size=8, frames=2)
    os.replace(tmp_path / "more" / "clip000.gif", tmp_path / "data" / "extra.gif")
    os.replace(tmp_path / "more" / "clip000.txt", tmp_path / "data" / "extra.txt")
    assert set(val.paths) <= set(SignDataset(cfg, "val", quiet=True).paths)

    cfg.val_fraction = 0.0
    assert len(SignDataset(cfg, "val", quiet=True)) == 0 and len(SignDataset(cfg, "train", quiet=True)) == 41


def test_train_never_empty(tmp_path):
    make_set(tmp_path / "data", 3, size=8, frames=2)
    cfg = cfg_for(tmp_path, val_fraction=0.999999, image_size=8, num_frames=2)
    train, val = SignDataset(cfg, "train", quiet=True), SignDataset(cfg, "val", quiet=True)
    assert len(train) == 1 and len(val) == 2
    with pytest.raises(ValueError):
        SignDataset(cfg, "test", quiet=True)


def test_upper_case_gif_folders_count_as_clips_everywhere(tmp_path, capsys):
    """One folder rule: x.GIF is a clip for discovery, for the demo's 'write the synthetic set if empty' and for the
    held-out folder (a case-sensitive glob used to call such a folder empty and write 600 clips into it)."""
    from data.synth import ensure_data
    from methods.evaluation.captions import heldout_set

    folder = tmp_path / "clips"
    (folder / data_folder.HELDOUT_DIR).mkdir(parents=True)
    for sub, name in ((folder, "A"), (folder, "B"), (folder / data_folder.HELDOUT_DIR, "C")):
        grey_ramp_gif(sub / f"{name}.GIF", 3)
        (sub / f"{name}.txt").write_text(f"caption {name.lower()}")
    (folder / ".hidden.gif").write_bytes(b"not a clip")
    assert data_folder.clip_files(str(folder)) == ["A.GIF", "B.GIF"] and data_folder.has_clips(str(folder))
    cfg = DataConfig(data_dir=str(folder), num_frames=2, image_size=8, cache_dir=str(tmp_path / "cache"),
                     synth_if_missing=True, synth_num=5)
    ensure_data(cfg)
    assert sorted(os.listdir(folder)) == [".hidden.gif", "A.GIF", "A.txt", "B.GIF", "B.txt", data_folder.HELDOUT_DIR]
    assert [c for _, c in find_pairs(str(folder))[0]] == ["caption a", "caption b"]
    assert heldout_set(cfg).captions == ["caption c"]
    assert capsys.readouterr().err == ""


def bomb_gif(path, width, height, frames):
    """A GIF declaring `frames` frames of width x height in a few bytes each (the pixel data is never there)."""
    out = bytearray(b"GIF89a" + struct.pack("<HH", width, height) + bytes([0x80, 0, 0]) + b"\x00" * 3 + b"\xff" * 3)
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00\x02\x01\x2c\x00"
    path.write_bytes(bytes(out + b"\x3b"))


def test_hostile_and_useless_files_are_not_training_data(tmp_path, capsys):
    data = tmp_path / "data"
    make_set(data, 2)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(data / "png.gif", format="PNG")  # renamed stills
    Image.new("RGB", (16, 16), (10, 200, 10)).save(data / "jpeg.gif", format="JPEG")
    solid(16, 16, (9, 9, 9)).save(data / "still.gif")  # a real GIF of one frame
    frames = [Image.new("RGBA", (8, 8), c) for c in ((255, 0, 0, 0), (0, 0, 255, 0), (0, 255, 0, 0))]
    frames[0].save(data / "clear.gif", save_all=True, append_images=frames[1:], duration=100, disposal=2)
    bomb_gif(data / "bomb.gif", 2048, 2048, 300)  # 6.6 kB declaring 1.26 G pixels
    for stem in ("png", "jpeg", "still", "clear", "bomb"):
        (data / f"{stem}.txt").write_text(stem)
    assert (data / "bomb.gif").stat().st_size < 7000
    ds = SignDataset(cfg_for(tmp_path), split="all")
    assert sorted(ds.captions) == ["clear", "sign 0", "sign 1"] and ds.constant == ["clear.gif"]
    err = warnings(capsys)
    assert err == [f"warning: skipped 4 file(s) in {data} (3 clips loaded):",
                   "  bomb.gif: unreadable: declares 300 frames of 2048x2048 = 1,258M pixels, over the 1,000M of "
                   "data.max_clip_pixels",
                   "  jpeg.gif: unreadable: not a GIF file (JPEG data)",
                   "  png.gif: unreadable: not a GIF file (PNG data)",
                   "  still.gif: unreadable: a still image (1 frame), not an animation; data.allow_stills=true keeps "
                   "such files",
                   f"warning: 1 clip(s) in {data} are constant (every frame the same), kept but they teach no motion: "
                   f"clear.gif"]
    allowed = SignDataset(dataclasses.replace(cfg_for(tmp_path), allow_stills=True), split="all", quiet=True)
    assert "still" in allowed.captions and len(allowed) == 4  # a different cache key: the switch is not stale


def test_only_the_kept_frames_are_decoded(tmp_path, monkeypatch):
    grey_ramp_gif(tmp_path / "long.gif", 40)
    converted = []
    real = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda im, *a, **k: converted.append(1) or real(im, *a, **k))
    clip = load_clip(str(tmp_path / "long.gif"), 4, 16, "pad")
    assert frame_ids(clip) == [0, 13, 26, 39] and len(converted) == 4  # 4 of 40 frames kept in memory


def test_a_cache_the_disk_cannot_hold_is_refused_before_decoding(tmp_path, monkeypatch):
    make_set(tmp_path / "data", 3)
    monkeypatch.setattr(dataset.shutil, "disk_usage", lambda path: shutil_usage(1000))
    monkeypatch.setattr(dataset, "load_clip", _boom)
    with pytest.raises(DataError, match=r"the all split.s 3 new clips need 0 MB in the clip cache .*, 0 MB is free "
                                        r"there: point data.cache_dir at a larger disk"):
        SignDataset(cfg_for(tmp_path), split="all", quiet=True)


def shutil_usage(free):
    import collections

    return collections.namedtuple("usage", "total used free")(free, 0, free)
