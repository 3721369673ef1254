"""The clip store verifies what it reads (data/clip_store.py): array names in index.json never leave the store folder,
every row's checksum is checked on read (a damaged or reordered row is decoded again from its file, said once, never
served as another clip), and decoding results are keyed by content and suffix, with one rule for a file whose
content does not match its suffix: skipped by name, everywhere (data/folder.py)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from config import DataConfig
from data.clip_store import ClipStore, ClipStoreError, ClipView
from dataset import SignDataset
from utils.gif import GifReadError, probe_gif, read_gif, write_gif
from utils.video import VideoReadError, probe_video, read_video, write_video

FRAMES, SIZE = 4, 16


def frames(k: int) -> np.ndarray:
    """Clip k: 4 solid frames whose levels tell k and the frame apart."""
    return np.stack([np.full((SIZE, SIZE, 3), (30 * k + 10 * t) % 256, np.uint8) for t in range(FRAMES)])


def make_set(data, n: int) -> None:
    data.mkdir(exist_ok=True)
    for k in range(n):
        write_gif(str(data / f"c{k}.gif"), frames(k))
        (data / f"c{k}.txt").write_text(f"sign {k}")


def cfg_for(tmp_path, **kw) -> DataConfig:
    return DataConfig(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), num_frames=FRAMES,
                      image_size=SIZE, val_fraction=0.0, **kw)


def store_root(tmp_path):
    (root,) = [tmp_path / "cache" / d for d in os.listdir(tmp_path / "cache")]
    return root


def edit_index(root, change) -> None:
    index = json.loads((root / "index.json").read_text())
    change(index)
    (root / "index.json").write_text(json.dumps(index))


@pytest.fixture
def decodes(monkeypatch):
    """Paths load_clip decodes (the real decoder still runs)."""
    calls, real = [], dataset.load_clip
    monkeypatch.setattr(dataset, "load_clip", lambda path, *a: calls.append(os.path.basename(path)) or real(path, *a))
    return calls


def damage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "fails its checksum" in line]


# ---------------------------------------------------------------------------------------------- checksums

@pytest.mark.parametrize("what", ["rows", "rows and checksums"])
def test_a_rotated_index_never_feeds_another_clips_pixels(tmp_path, capsys, decodes, what):
    make_set(tmp_path / "data", 3)
    cfg = cfg_for(tmp_path)
    ds = SignDataset(cfg, quiet=True)
    expected = ds.clips[:]
    assert [os.path.basename(p) for p in ds.paths] == ["c0.gif", "c1.gif", "c2.gif"]
    root = store_root(tmp_path)

    def rotate(index):
        keys = sorted(index["clips"], key=lambda k: index["clips"][k][0])
        old = [list(index["clips"][k]) for k in keys]
        for k, entry in zip(keys, old[1:] + old[:1]):
            if what == "rows":
                index["clips"][k][0] = entry[0]  # each key now names the next clip's row
            else:
                index["clips"][k] = entry  # row, checksum and flag all moved together

    edit_index(root, rotate)
    capsys.readouterr()
    decodes.clear()
    rotated = SignDataset(cfg, quiet=True)
    assert decodes == []  # a warm start reads no clip: nothing is checked before it is read
    assert torch.equal(rotated.clips[:], expected)  # each clip is its own, decoded again
    assert sorted(decodes) == ["c0.gif", "c1.gif", "c2.gif"]
    assert damage_lines(capsys.readouterr().err) == [
        f"warning: the clip cache's copy of c{k}.gif fails its checksum (a damaged cache): decoded it again from the "
        f"file" for k in range(3)]
    decodes.clear()
    assert torch.equal(rotated.clips[:], expected) and decodes == []  # stored again: said and decoded once
    assert torch.equal(SignDataset(cfg, quiet=True).clips[:], expected) and decodes == []
    assert damage_lines(capsys.readouterr().err) == []


def test_a_flipped_byte_is_decoded_again_and_said_once(tmp_path, capsys, decodes):
    make_set(tmp_path / "data", 3)
    cfg = cfg_for(tmp_path)
    expected = SignDataset(cfg, quiet=True).clips[:]
    root = store_root(tmp_path)
    index = json.loads((root / "index.json").read_text())
    row = 1  # the middle record of three
    with open(root / index["array"], "r+b") as f:
        f.seek(row * FRAMES * SIZE * SIZE * 3 + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    capsys.readouterr()
    decodes.clear()
    ds = SignDataset(cfg, quiet=True)
    damaged = [os.path.basename(ds.paths[i]) for i, key in enumerate(ds.clips.keys) if index["clips"][key][0] == row]
    assert len(damaged) == 1
    batch, _ = ds.get_batch(torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.equal(batch, dataset.to_unit_range(expected[[0, 1, 2, 0, 1, 2]]))
    assert decodes == damaged  # once, although the batch holds it twice
    assert damage_lines(capsys.readouterr().err) == [
        f"warning: the clip cache's copy of {damaged[0]} fails its checksum (a damaged cache): decoded it again from "
        f"the file"]


def test_a_reader_without_the_source_refuses_a_damaged_row(tmp_path):
    store = ClipStore(str(tmp_path), "s", (1, 2, 2, 3))
    with store:
        store.add("a.gif", np.full((1, 2, 2, 3), 7, np.uint8), False)
        store.add("b.gif", np.full((1, 2, 2, 3), 9, np.uint8), False)
    assert ClipView(store, ["a.gif", "b.gif"])[:].unique().tolist() == [7, 9]
    edit_index(tmp_path / os.path.basename(store.root),
               lambda index: index["clips"].update({"a.gif": index["clips"]["b.gif"]}))
    reader = ClipStore(str(tmp_path), "s", (1, 2, 2, 3))
    out, bad = reader.read(["a.gif", "b.gif", "missing.gif"])
    assert bad == [0, 2] and out[0].max() == 0 and out[1].min() == 9  # the bad slots hold nothing of another clip
    with pytest.raises(ClipStoreError, match=r"^clip cache .* is damaged \(a clip fails its checksum\): delete that "
                                             r"folder and it is rebuilt from the clips$"):
        ClipView(reader, ["a.gif"])[0]


# ---------------------------------------------------------------------------------------------- names in the index

@pytest.mark.parametrize("array", ["../../outside.bin", "ABSOLUTE", "sub/clips-0123456789ab.u8",
                                   "clips-0123456789ab.u8/..", "index.json", "clips-0123456789AB.u8"])
def test_an_array_name_not_of_the_store_is_not_trusted(tmp_path, capsys, decodes, array):
    make_set(tmp_path / "data", 2)
    cfg = cfg_for(tmp_path)
    expected = SignDataset(cfg, quiet=True).clips[:]
    root = store_root(tmp_path)
    record = FRAMES * SIZE * SIZE * 3
    victim = tmp_path / "outside.bin"  # what "../../outside.bin" names from the store folder
    victim.write_bytes(b"precious" * record)  # long enough to pass for the array of every row the index names
    if array == "ABSOLUTE":
        array = str(victim)
    if array.startswith("sub/"):
        (root / "sub").mkdir()
        shutil.copy(victim, root / array)
    before = {p: p.read_bytes() for p in (victim, root / "index.json")}
    edit_index(root, lambda index: index.update(array=array))
    write_gif(str(tmp_path / "data" / "new.gif"), frames(7))  # the next build appends
    (tmp_path / "data" / "new.txt").write_text("new")
    capsys.readouterr()
    decodes.clear()
    ds = SignDataset(cfg, quiet=True)
    assert victim.read_bytes() == before[victim]  # never truncated nor appended to
    assert sorted(decodes) == ["c0.gif", "c1.gif", "new.gif"]  # a new array file, rebuilt
    index = json.loads((root / "index.json").read_text())
    assert index["array"] != array and os.path.dirname(os.path.join(root, index["array"])) == str(root)
    err = [line for line in capsys.readouterr().err.splitlines() if "not trusted" in line]
    assert err == [f"warning: clip cache index {root / 'index.json'} is not trusted (array file {array!r} is not a "
                   f"clips-<id>.u8 name in the store folder): starting a new array file"]
    assert torch.equal(ds.clips[:2], expected)
    if array.startswith("sub/"):
        assert (root / array).read_bytes() == before[victim]


def test_a_link_under_the_array_name_is_never_written_through(tmp_path, capsys):
    make_set(tmp_path / "data", 1)
    cfg = cfg_for(tmp_path)
    SignDataset(cfg, quiet=True)
    root = store_root(tmp_path)
    victim = tmp_path / "outside.bin"
    victim.write_bytes(b"x" * 10 ** 6)
    index = json.loads((root / "index.json").read_text())
    os.remove(root / index["array"])
    os.symlink(victim, root / index["array"])
    write_gif(str(tmp_path / "data" / "new.gif"), frames(7))
    (tmp_path / "data" / "new.txt").write_text("new")
    ds = SignDataset(cfg, quiet=True)
    assert victim.read_bytes() == b"x" * 10 ** 6 and len(ds) == 2
    assert f"array file {index['array']} is a link" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- suffixes

def mp4_bytes(tmp_path) -> bytes:
    write_video(str(tmp_path / "real.mp4"), frames(3), fps=10)
    return (tmp_path / "real.mp4").read_bytes()


def test_a_failed_file_renamed_to_its_right_suffix_is_tried_again(tmp_path, decodes):
    data = tmp_path / "data"
    make_set(data, 1)
    (data / "v.gif").write_bytes(mp4_bytes(tmp_path))
    (data / "v.txt").write_text("video")
    cfg = cfg_for(tmp_path)
    first = SignDataset(cfg, quiet=True)
    assert first.captions == ["sign 0"]
    assert first.skipped == [("v.gif", "unreadable: not a GIF file (MP4 data; rename it to .mp4)")]
    os.rename(data / "v.gif", data / "v.mp4")
    decodes.clear()
    renamed = SignDataset(cfg, quiet=True)
    assert decodes == ["v.mp4"] and renamed.skipped == []  # tried again: no stale reason
    assert [os.path.basename(p) for p in renamed.paths] == ["c0.gif", "v.mp4"]
    os.rename(data / "v.mp4", data / "v.gif")  # and back: the remembered failure, not decoded again
    decodes.clear()
    assert SignDataset(cfg, quiet=True).skipped == first.skipped and decodes == []


@pytest.mark.parametrize("name,content,reason", [
    ("a.gif", "mp4", "not a GIF file (MP4 data; rename it to .mp4)"),
    ("a.mp4", "gif", "not a video file (GIF data; rename it to .gif)"),
    ("a.webm", "png", "not a video file (PNG image data)"),
])
def test_content_not_matching_its_suffix_is_skipped_by_name_everywhere(tmp_path, name, content, reason):
    """One rule: the suffix picks the decoder and the content must agree. Training, data-stats' probe and the
    checklist's read all refuse the file with the same reason (an mp4 holding a GIF used to load)."""
    data = tmp_path / "data"
    make_set(data, 1)
    if content == "mp4":
        (data / name).write_bytes(mp4_bytes(tmp_path))
    elif content == "gif":
        write_gif(str(data / name), frames(5))
    else:
        Image.new("RGB", (SIZE, SIZE), (1, 2, 3)).save(data / name, format="PNG")
    (data / "a.txt").write_text("mismatch")
    ds = SignDataset(cfg_for(tmp_path, allow_stills=True), quiet=True)
    assert [os.path.basename(p) for p in ds.paths] == ["c0.gif"] and ds.skipped == [(name, f"unreadable: {reason}")]
    readers = (read_gif, probe_gif) if name.endswith(".gif") else (read_video, probe_video)
    error = GifReadError if name.endswith(".gif") else VideoReadError
    for read in readers:
        with pytest.raises(error) as info:
            read(str(data / name))
        assert str(info.value) == reason, read.__name__


def test_a_copy_under_the_wrong_suffix_is_skipped_not_loaded(tmp_path, capsys):
    """The same bytes as v.mp4 (loaded) and as v2.gif (refused): the .gif is only ever skipped, whether both are
    found in one build or the .gif appears after the .mp4 is stored (a row keyed by content alone served it)."""
    data = tmp_path / "data"
    make_set(data, 1)
    video = mp4_bytes(tmp_path)
    (data / "v.mp4").write_bytes(video)
    (data / "v.txt").write_text("video")
    cfg = cfg_for(tmp_path)
    assert [os.path.basename(p) for p in SignDataset(cfg, quiet=True).paths] == ["c0.gif", "v.mp4"]
    (data / "v2.gif").write_bytes(video)
    (data / "v2.txt").write_text("copy")
    warm = SignDataset(cfg, quiet=True)
    assert [os.path.basename(p) for p in warm.paths] == ["c0.gif", "v.mp4"]
    assert warm.skipped == [("v2.gif", "unreadable: not a GIF file (MP4 data; rename it to .mp4)")]
    shutil.rmtree(tmp_path / "cache")
    cold = SignDataset(cfg, quiet=True)
    assert cold.paths == warm.paths and cold.skipped == warm.skipped


def test_a_key_has_a_row_or_a_failure_never_both(tmp_path):
    """So a file is never both loaded and reported skipped, whatever order runs sharing a cache stored them in."""
    clip = np.zeros((1, 2, 2, 3), np.uint8)
    with ClipStore(str(tmp_path), "s", (1, 2, 2, 3)) as store:
        store.fail("a.gif", "unreadable: once")
        store.add("a.gif", clip, False)
        store.add("b.gif", clip, False)
        store.fail("b.gif", "unreadable: later")
    again = ClipStore(str(tmp_path), "s", (1, 2, 2, 3))
    assert [(again.row(k), again.failure(k)) for k in ("a.gif", "b.gif")] == [(0, None), (1, None)]
