"""`prepare-data` on small fake copies of each public layout (../shared/reference/datasets.md), built here: exact clip
counts, trims, crops, captions and skip reasons; resuming; parallel workers; the CLI's one-line errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import main
from data.manifests import ManifestError
from methods.data_prep.prepare_data import prepare_data, reason_kind
from utils.video import read_video, write_video


def grey(n, start=0, h=16, w=16):
    """Frame i is a solid grey of level 10*(start+i) + 20: the decoded mean tells which source frame it was."""
    return np.stack([np.full((h, w, 3), 10 * (start + i) + 20, dtype=np.uint8) for i in range(n)])


def ids(path):
    frames, _ = read_video(str(path))
    return [int(round((f.mean() - 20) / 10)) for f in frames]


def captions(out):
    return {n[:-4]: (out / n).read_text().strip() for n in sorted(os.listdir(out)) if n.endswith(".txt")}


def test_how2sign_precut_and_raw_videos(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(str(videos / "raw1.mp4"), grey(20), fps=10)  # 2 s
    write_video(str(videos / "s_pre.mp4"), grey(6, start=3), fps=10)
    (videos / "broken.mp4").write_bytes(b"not a video")
    rows = ["VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE",
            "v1\traw1\t1\ts_cut\t0.5\t1.0\tHello, how are you?",
            "v1\traw1\t2\ts_pre\t0\t1\tThank you.",
            "v2\tmissing\t3\ts_gone\t0\t1\tGone",
            "v1\traw1\t4\ts_bad\t1.5\t0.5\tBackwards",
            "v3\tbroken\t5\ts_broken\t0\t1\tBroken"]
    manifest = tmp_path / "how2sign_realigned_train.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    s = prepare_data("how2sign", str(manifest), str(videos), str(out), normalize=True, quiet=True)
    assert (s["converted"], s["already_done"], s["skipped"]) == (2, 0, 3)
    assert captions(out) == {"s_cut": "hello how are you", "s_pre": "thank you"}
    assert ids(out / "s_cut.mp4") == [5, 6, 7, 8, 9]  # [0.5 s, 1.0 s) of a 10 fps video
    assert ids(out / "s_pre.mp4") == [3, 4, 5, 6, 7, 8]  # the pre-cut clip is taken whole
    why = dict(s["skipped_files"])
    assert why["how2sign_realigned_train.csv:4 (s_gone)"] == "neither s_gone.mp4 nor missing.mp4 in --videos"
    assert why["how2sign_realigned_train.csv:5 (s_bad)"] == "bad time range '1.5'..'0.5'"
    assert why["s_broken"].startswith("VideoReadError: InvalidDataError")
    assert s["skipped_by_reason"] == {"neither # nor # in --videos": 1, "bad time range #..#": 1, "VideoReadError": 1}
    assert os.path.isfile(s["sheet"])
    (out / "s_pre.mp4").write_bytes(b"damaged since")  # the contact sheet shows what still decodes
    again = prepare_data("how2sign", str(manifest), str(videos), str(out), normalize=True, quiet=True)
    assert (again["converted"], again["already_done"], again["skipped"]) == (0, 2, 3)  # resumed: nothing redone
    assert os.path.isfile(again["sheet"])


def test_asl_citizen_and_parallel_workers(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        write_video(str(videos / f"{k}-HELLO.mp4"), grey(4, start=k), fps=10)
    manifest = tmp_path / "train.csv"
    manifest.write_text('Participant ID,Video file,Gloss,ASL-LEX Code\n'
                        'P1,0-HELLO.mp4,HELLO,a_01\nP2,1-HELLO.mp4,HELLO,a_01\nP3,2-HELLO.mp4,THANK-YOU,b_02\n'
                        'P4,3-GONE.mp4,GONE,c_03\nP5,../train.csv,ESCAPE,d_04\n')
    out = tmp_path / "out"
    s = prepare_data("asl-citizen", str(manifest), str(videos), str(out), workers=2, quiet=True)
    assert (s["converted"], s["skipped"]) == (3, 2)
    assert captions(out) == {"0_hello": "HELLO", "1_hello": "HELLO", "2_hello": "THANK-YOU"}
    assert ids(out / "2_hello.mp4") == [2, 3, 4, 5]
    assert dict(s["skipped_files"]) == {"train.csv:5": "video 3-GONE.mp4 not found",
                                        "train.csv:6": "video path leads outside --videos"}


def test_wlasl_frame_ranges_and_bounding_box_crop(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = grey(10, h=16, w=24)
    frames[:, 4:10, 6:14] = 250  # the signer's box is bright
    write_video(str(videos / "00001.mp4"), frames, fps=10)
    write_video(str(videos / "00002.mp4"), grey(5), fps=10)
    manifest = tmp_path / "WLASL_v0.3.json"
    manifest.write_text(json.dumps([
        {"gloss": "book", "instances": [
            {"video_id": "00001", "frame_start": 3, "frame_end": 6, "bbox": [6, 4, 14, 10], "fps": 10},
            {"video_id": "00002", "frame_start": 1, "frame_end": -1, "bbox": [0, 0, 16, 16], "fps": 10}]},
        {"gloss": "drink", "instances": [
            {"video_id": "00001", "frame_start": 8, "frame_end": 4, "bbox": [0, 0, 1, 1]},
            {"video_id": "09999", "frame_start": 1, "frame_end": -1}]}]))
    out = tmp_path / "out"
    s = prepare_data("wlasl", str(manifest), str(videos), str(out), options={"crop": True}, quiet=True)
    assert (s["converted"], s["skipped"]) == (2, 2)
    assert captions(out) == {"book_00001": "book", "book_00002": "book"}
    cropped, _ = read_video(str(out / "book_00001.mp4"))
    assert cropped.shape == (4, 6, 8, 3) and cropped.min() > 230  # frames 3..6 (1-based), only the box
    assert ids(out / "book_00002.mp4") == [0, 1, 2, 3, 4]  # frame_end -1: to the end
    assert dict(s["skipped_files"]) == {"drink / 00001": "bad frame range 8..4",
                                        "drink / 09999": "video 09999.mp4 not found"}


def test_phoenix_frame_folders(tmp_path):
    frames_dir = tmp_path / "features" / "fullFrame-210x260px" / "train"
    for name, n in (("01April_2010_Thursday_heute-6694", 5), ("01April_2010_Thursday_heute-6695", 3)):
        (frames_dir / name).mkdir(parents=True)
        for i, f in enumerate(grey(n, h=26, w=21)):
            Image.fromarray(f).save(frames_dir / name / f"images{i + 1:04d}.png")
    manifest = tmp_path / "PHOENIX-2014-T.train.corpus.csv"
    manifest.write_text("name|video|start|end|speaker|orth|translation\n"
                        "01April_2010_Thursday_heute-6694|x/1/*.png|-1|-1|Signer04|REGEN KOMMEN|und es regnet\n"
                        "01April_2010_Thursday_heute-6695|x/1/*.png|-1|-1|Signer04|SONNE|sonne\n"
                        "missing-0001|x/1/*.png|-1|-1|Signer01|WIND|wind\n")
    out = tmp_path / "out"
    s = prepare_data("phoenix", str(manifest), str(frames_dir), str(out), quiet=True,
                     options={"caption_field": "orth"})
    assert (s["converted"], s["skipped"]) == (2, 1)
    assert captions(out) == {"01april_2010_thursday_heute_6694": "REGEN KOMMEN",
                             "01april_2010_thursday_heute_6695": "SONNE"}
    frames, durations = read_video(str(out / "01april_2010_thursday_heute_6694.mp4"))
    assert frames.shape == (5, 26, 22, 3) and durations == pytest.approx([40.0] * 5)  # 25 fps; width padded even


def test_generic_csv_with_named_columns_and_a_folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(str(videos / "a.mp4"), grey(10, h=40, w=300), fps=10)
    (videos / "b.webm").write_bytes(b"")
    manifest = tmp_path / "clips.tsv"
    manifest.write_text("file\ttext\tfrom\tto\na.mp4\tYes!\t0.2\t0.5\nb.webm\tNo\t0\t1\n")
    out = tmp_path / "out"
    s = prepare_data("csv", str(manifest), str(videos), str(out), max_side=100, quiet=True,
                     options={"video_col": "file", "caption_col": "text", "start_col": "from", "end_col": "to"})
    assert (s["converted"], s["skipped"]) == (1, 1) and captions(out) == {"a": "Yes!"}
    frames, _ = read_video(str(out / "a.mp4"))
    assert frames.shape == (3, 14, 100, 3)  # 40x300 shrunk to 13x100, padded to an even height
    with pytest.raises(ManifestError, match="has no column 'video'"):
        prepare_data("csv", str(manifest), str(videos), str(out), quiet=True)

    (videos / "c.txt").write_text("see you")
    write_video(str(videos / "c.mp4"), grey(3), fps=10)
    write_video(str(videos / "thank_you.mp4"), grey(3), fps=10)
    folder_out = tmp_path / "folder_out"
    s = prepare_data("folder", None, str(videos), str(folder_out), quiet=True, options={"caption_from_stem": True})
    assert captions(folder_out) == {"a": "a", "c": "see you", "thank_you": "thank you"}
    assert s["skipped_files"] == [("b", "VideoReadError: InvalidDataError: [Errno 1094995529] Invalid data found when "
                                        "processing input")]


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "v").mkdir()
    for args, needle in ((["--from", "how2sign", "--videos", str(tmp_path / "v"), "--out", str(tmp_path / "o")],
                          "--from how2sign needs --manifest PATH"),
                         (["--from", "folder", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          "does not exist"),
                         (["--from", "csv", "--manifest", str(tmp_path / "none.csv"), "--videos", str(tmp_path / "v"),
                           "--out", str(tmp_path / "o")], f"--manifest {tmp_path / 'none.csv'} does not exist"),
                         (["--from", "folder", "--videos", str(tmp_path / "v"), "--out", str(tmp_path / "o"),
                           "--workers", "0"], "--workers must be >= 1, got 0")):
        assert main.main(["prepare-data", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_reason_kind():
    assert reason_kind("bad time range '1.5'..'0.5'") == "bad time range #..#"
    assert reason_kind("video 3-GONE.mp4 not found") == "video # not found"
    assert reason_kind("VideoReadError: InvalidDataError: [Errno 1] x") == "VideoReadError"
