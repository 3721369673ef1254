"""Bounded memory for every decoded input: utils.gif.read_gif and utils.video.read_video count each frame at the size
it really decodes to, frame by frame, before it is decoded further or kept, so a file whose frames are larger than it
declares (a GIF frame beyond its logical screen, an MJPEG frame beyond its stream's size) is a named refusal, not
gigabytes of pixels. The hostile files are built here: GIF bytes spliced by hand from frames Pillow encodes, and a
real Matroska file whose MJPEG packets are larger than its stream header says (no decoder is monkeypatched)."""
import io
import os
import struct
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import GifImagePlugin, Image

import utils.video as video
from config import DataConfig
from dataset import SignDataset
from utils.gif import GifReadError, read_gif
from utils.video import VideoReadError, read_video

SCREEN = 16  # what the hostile files declare
BIG = 1024  # what their later frames decode to: 1M pixels, 4 MB as RGBA


def _gif_parts(image: Image.Image) -> tuple[bytes, bytes]:
    """(header with its global colour table, the frame's image descriptor + LZW data) of a one-frame GIF Pillow
    encodes, so frames of different sizes can be spliced into one file with valid pixel data."""
    buf = io.BytesIO()
    image.save(buf, format="GIF")
    data = buf.getvalue()
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    header = data[:pos]
    while data[pos] == 0x21:  # extension blocks: introducer, label, sub-blocks up to a 0 length
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C and data[-1] == 0x3B
    return header, data[pos:-1]


def oversize_gif(path, sides=(SCREEN, BIG, BIG, BIG)) -> None:
    """A GIF whose logical screen is SCREEN x SCREEN and whose frames have the given sides (the first one SCREEN, so
    the file declares what the old guard checked): Pillow grows its canvas to each frame's extent, so the screen size
    alone says nothing about memory."""
    palette = [0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6)
    parts = []
    for k, side in enumerate(sides):
        im = Image.new("P", (side, side), k % 2)
        im.putpalette(palette)
        parts.append(_gif_parts(im))
    header = parts[0][0][:6] + struct.pack("<HH", SCREEN, SCREEN) + parts[0][0][10:]
    delay = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control extension: 100 ms, no transparency
    data = header + b"".join(delay + frame for _, frame in parts) + b"\x3b"
    with open(path, "wb") as f:
        f.write(data)


def _jpeg(side: int, level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (level,) * 3).save(buf, format="JPEG")
    return buf.getvalue()


def oversize_video(path, sides=(SCREEN, BIG, BIG, BIG)) -> None:
    """A Matroska file whose MJPEG stream declares SCREEN x SCREEN (and whose first frame is that size, so probing
    agrees) while the later JPEG packets are of the given sides: FFmpeg decodes each at its own size."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = SCREEN, SCREEN, "yuvj420p"
        stream.time_base = Fraction(1, 10)
        for i, side in enumerate(sides):
            packet = av.Packet(_jpeg(side, 20 + 10 * i))
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 10)
            packet.is_keyframe = True
            container.mux(packet)


@pytest.fixture
def canvas_sizes(monkeypatch):
    """Every canvas size Pillow prepares to decode a GIF frame onto (load_prepare allocates it)."""
    sizes = []
    real = GifImagePlugin.GifImageFile.load_prepare
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "load_prepare", lambda im: sizes.append(im.size) or real(im))
    return sizes


@pytest.fixture
def converted_sizes(monkeypatch):
    """(width, height) of every decoded video frame turned into an RGB array."""
    sizes = []
    real = video._rgb
    monkeypatch.setattr(video, "_rgb", lambda frame, size=None: sizes.append((frame.width, frame.height))
                        or real(frame, size))
    return sizes


def test_gif_frames_larger_than_the_screen_are_refused_frame_by_frame(tmp_path, canvas_sizes):
    path = tmp_path / "screen.gif"
    oversize_gif(path)
    assert path.stat().st_size < 10_000
    with Image.open(path) as im:  # what the file declares passes the old guard: 4 frames of 16x16
        assert im.size == (SCREEN, SCREEN) and im.n_frames == 4
    bound = SCREEN * SCREEN * 4
    with pytest.raises(GifReadError) as info:
        read_gif(str(path), max_pixels=bound)
    assert str(info.value) == ("frame 1 decodes to 1024x1024 (declared 16x16): 1M pixels, over the 0.001M of "
                               "data.max_clip_pixels")
    assert canvas_sizes and max(canvas_sizes) == (SCREEN, SCREEN)  # the big canvas was never allocated


def test_a_canvas_grown_by_the_last_frame_is_counted_again_when_frames_are_kept(tmp_path, canvas_sizes):
    """Seeking back to the first frame keeps Pillow's grown canvas: the durations pass fits the bound, the pass that
    keeps frames would decode every one of them at 1024x1024, and is refused at its second frame."""
    path = tmp_path / "late.gif"
    oversize_gif(path, sides=(SCREEN, SCREEN, SCREEN, BIG))
    bound = 3 * SCREEN * SCREEN + BIG * BIG  # exactly what the durations pass spends
    assert read_gif(str(path), choose=lambda d: [0], max_pixels=bound)[0].shape == (1, BIG, BIG, 3)
    canvas_sizes.clear()
    with pytest.raises(GifReadError) as info:
        read_gif(str(path), max_pixels=bound)
    assert str(info.value) == ("frame 1 decodes to 1024x1024 (declared 16x16): 2M pixels, over the 1M of "
                               "data.max_clip_pixels")
    assert canvas_sizes.count((BIG, BIG)) == 1  # frame 0 again, on the grown canvas; no frame after it


def test_video_frames_larger_than_the_stream_declares_are_refused_frame_by_frame(tmp_path, converted_sizes):
    path = tmp_path / "mjpeg.mkv"
    oversize_video(path)
    with av.open(str(path)) as container:  # a real file: the header says 16x16, the decoder hands back 1024x1024
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (SCREEN, SCREEN)
        assert [(f.width, f.height) for f in container.decode(stream)] == [(SCREEN, SCREEN)] + [(BIG, BIG)] * 3
    converted_sizes.clear()
    with pytest.raises(VideoReadError) as info:
        read_video(str(path), max_pixels=SCREEN * SCREEN * 4)
    assert str(info.value) == ("frame 1 decodes to 1024x1024 (declared 16x16): 1M pixels, over the 0.001M of "
                               "data.max_clip_pixels")
    assert converted_sizes == [(SCREEN, SCREEN)]  # no big frame became an array


def test_a_video_whose_frames_change_size_is_a_named_error(tmp_path):
    """Within the bound, frames of several sizes are refused by name (was numpy's bare stacking error)."""
    path = tmp_path / "sizes.mkv"
    oversize_video(path, sides=(SCREEN, 24, 24))
    with pytest.raises(VideoReadError, match=r"^frames differ in size: \[\(16, 16, 3\), \(24, 24, 3\)\]$"):
        read_video(str(path))


def test_clips_within_the_bound_still_load(tmp_path):
    """The per-frame count spends exactly what the declared check allows: a clip at the bound is not refused."""
    gif = tmp_path / "ok.gif"
    frames = [Image.new("RGB", (SCREEN, SCREEN), (40 * i,) * 3) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert read_gif(str(gif), max_pixels=SCREEN * SCREEN * 3)[0].shape == (3, SCREEN, SCREEN, 3)
    mkv = tmp_path / "ok.mkv"
    oversize_video(mkv, sides=(SCREEN,) * 3)
    assert read_video(str(mkv), max_pixels=SCREEN * SCREEN * 3)[0].shape == (3, SCREEN, SCREEN, 3)


def test_oversize_frames_are_a_named_skip_in_the_data_set(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    oversize_gif(data / "screen.gif")
    oversize_video(data / "stream.mkv")
    frames = [Image.new("RGB", (SCREEN, SCREEN), (40 * i,) * 3) for i in range(4)]
    frames[0].save(data / "fine.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    for stem in ("screen", "stream", "fine"):
        (data / f"{stem}.txt").write_text(stem)
    cfg = DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"), num_frames=4, image_size=SCREEN,
                     val_fraction=0.0, max_clip_pixels=SCREEN * SCREEN * 4)
    ds = SignDataset(cfg, quiet=True)
    assert [os.path.basename(p) for p in ds.paths] == ["fine.gif"]
    tail = "frame 1 decodes to 1024x1024 (declared 16x16): 1M pixels, over the 0.001M of data.max_clip_pixels"
    assert sorted(ds.skipped) == [("screen.gif", f"unreadable: {tail}"), ("stream.mkv", f"unreadable: {tail}")]
    assert np.asarray(ds.clips[0]).shape == (4, SCREEN, SCREEN, 3)
