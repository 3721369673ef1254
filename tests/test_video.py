"""Video clips: utils.video.read_video / write_video on small videos written into tmp_path, and video files in a
data folder (discovery, loading, skips), plus the rule that the synthetic set only ever fills the demo's folder."""
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from config import DEMO_DATA_DIR, DataConfig
from data.folder import DataError, find_pairs
from data.synth import ensure_data, will_write_synthetic
from dataset import SignDataset, load_clip
from utils.gif import write_gif
from utils.video import VideoReadError, read_video, write_video


def grey_frames(n, h=16, w=16):
    """Frame i is a solid grey of level 10*i + 20: the decoded mean tells which frame it was, even after H.264."""
    return np.stack([np.full((h, w, 3), 10 * i + 20, dtype=np.uint8) for i in range(n)])


def frame_ids(frames):
    return [int(round((f.mean() - 20) / 10)) for f in frames]


def write_lossless(path, frames, times_ms):
    """An FFV1 (lossless RGB) video whose frame i is shown from times_ms[i]: variable frame rates on demand."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=1000)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, ms in zip(frames, times_ms):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(vf))
        container.mux(stream.encode())


def test_write_then_read_mp4(tmp_path):
    path = str(tmp_path / "a.mp4")
    write_video(path, grey_frames(12, 15, 21), fps=10)  # odd sides: padded to even for yuv420p
    frames, durations = read_video(path)
    assert frames.shape == (12, 16, 22, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == list(range(12))
    assert durations == pytest.approx([100.0] * 12)
    kept, _ = read_video(path, lambda d: [0, 5, 5, 11])
    assert frame_ids(kept) == [0, 5, 5, 11]


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    path = tmp_path / "vfr.mkv"
    times = [0, 100, 200, 700, 800]  # frame 2 is shown for 500 ms
    write_lossless(path, grey_frames(5), times)
    frames, durations = read_video(str(path))
    assert frames.shape == (5, 16, 16, 3) and np.array_equal(frames, grey_frames(5))  # lossless: exact pixels
    assert durations[:4] == pytest.approx([100, 100, 500, 100])
    clip = load_clip(str(path), num_frames=4, image_size=16, resize_mode="pad")
    # instants spread evenly from the centre of frame 0 (50 ms) to the centre of frame 4 (850 ms): 50, 317, 583 and
    # 850 ms fall in frames 0, 2, 2 and 4 (at a constant rate they would be frames 0, 1, 3, 4)
    assert frame_ids(clip) == [0, 2, 2, 4]


def test_trim_by_time(tmp_path):
    path = tmp_path / "t.mkv"
    write_lossless(path, grey_frames(10), [100 * i for i in range(10)])
    frames, durations = read_video(str(path), start_s=0.25, end_s=0.6)
    assert frame_ids(frames) == [3, 4, 5] and len(durations) == 3
    with pytest.raises(VideoReadError, match="no frames from 2s"):
        read_video(str(path), start_s=2.0)


@pytest.mark.parametrize("suffix,codec", [(".webm", "libvpx-vp9"), (".avi", "mpeg4"), (".mov", "libx264")])
def test_other_containers(tmp_path, suffix, codec):
    path = str(tmp_path / f"c{suffix}")
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for f in grey_frames(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    frames, durations = read_video(path)
    assert frame_ids(frames) == list(range(6)) and durations == pytest.approx([125.0] * 6)


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, "truncated", "audio"])
def test_unreadable_videos_raise_one_line(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content == "truncated":
        write_video(str(tmp_path / "ok.mp4"), grey_frames(8))
        data = (tmp_path / "ok.mp4").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content == "audio":
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
    else:
        path.write_bytes(content)
    with pytest.raises(VideoReadError) as info:
        read_video(str(path))
    assert "\n" not in str(info.value) and len(str(info.value)) <= 120
    if content == "audio":
        assert str(info.value) == "no video stream"


def test_max_pixels_refused_before_decoding(tmp_path):
    path = str(tmp_path / "big.mp4")
    write_video(path, grey_frames(10, 32, 32))
    with pytest.raises(VideoReadError, match="10 frames of 32x32"):
        read_video(path, max_pixels=32 * 32 * 9)


def test_a_folder_of_gifs_and_videos(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_gif(str(data / "a.gif"), grey_frames(4))
    write_video(str(data / "b.MP4"), grey_frames(6), fps=10)
    write_lossless(data / "c.mkv", grey_frames(3), [0, 100, 200])
    (data / "d.webm").write_bytes(b"not a video")
    for stem, caption in (("a", "hello"), ("b", "thank you"), ("c", "yes"), ("d", "no"), ("e", "please")):
        (data / f"{stem}.txt").write_text(caption)
    (data / "e.avi").write_bytes(b"")
    pairs, skipped = find_pairs(str(data))
    assert [os.path.basename(p) for p, _ in pairs] == ["a.gif", "b.MP4", "c.mkv", "d.webm", "e.avi"]
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), num_frames=3, image_size=16,
                     val_fraction=0.0)
    ds = SignDataset(cfg)
    assert ds.captions == ["hello", "thank you", "yes"]
    assert frame_ids(ds.clips[1].numpy()) == [0, 2, 5]  # 6 frames of 100 ms: instants at 50, 300, 550 ms
    assert frame_ids(ds.clips[2].numpy()) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "skipped 2 file(s)" in err and "d.webm: unreadable: InvalidDataError" in err and "e.avi: unreadable" in err
    assert SignDataset(cfg, quiet=True).captions == ds.captions  # from the cache


def test_synthetic_set_only_fills_the_demo_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = DataConfig(data_dir=str(tmp_path / "my_dat"), synth_if_missing=True, synth_num=4, synth_holdout=0)
    assert not will_write_synthetic(mine)
    ensure_data(mine)
    assert not os.path.exists(mine.data_dir)
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(mine.data_dir)
    videos_only = tmp_path / DEMO_DATA_DIR
    videos_only.mkdir(parents=True)
    write_video(str(videos_only / "v.mp4"), grey_frames(4))
    demo = DataConfig(data_dir=DEMO_DATA_DIR, synth_if_missing=True, synth_num=4, synth_holdout=0)
    assert not will_write_synthetic(demo)  # the demo folder holds a video: it has clips
    os.remove(videos_only / "v.mp4")
    assert will_write_synthetic(demo)
    ensure_data(demo)
    assert len(find_pairs(DEMO_DATA_DIR)[0]) == 4


@pytest.mark.parametrize("rotation,expected", [(0, [[1, 2], [3, 4]]), (-90, [[3, 1], [4, 2]]), (90, [[2, 4], [1, 3]]),
                                               (180, [[4, 3], [2, 1]])])
def test_rotation_metadata_turns_frames_upright(rotation, expected):
    """frame.rotation is the angle the display matrix turns the picture counter-clockwise (FFmpeg's
    av_display_rotation_get; phones store -90 for portrait): the frame is shown turned by it."""
    from utils.video import _rgb

    class Frame:
        def to_ndarray(self, format):
            return np.array([[1, 2], [3, 4]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)

    Frame.rotation = rotation
    assert _rgb(Frame())[:, :, 0].tolist() == expected
