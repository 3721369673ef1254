"""`prepare-data` on hostile input, built here: folders it does not own, links out of --videos, values of the wrong
type in every manifest field, malformed rows and bad option values. Each is a one-line error (exit 2) before any work,
or a named skip while the rest of the batch goes on; never a traceback, never a file of the user's replaced."""
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

import main
from data import manifests
from data.manifests import read_manifest
from methods.data_prep.prepare_data import prepare_data
from utils.errors import UserError
from utils.folders import OWNER_FILE, read_owner
from utils.gif import write_gif
from utils.video import write_video


def grey(n, h=16, w=16):
    return np.stack([np.full((h, w, 3), 20 + 10 * i, dtype=np.uint8) for i in range(n)])


def listing(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


@pytest.fixture
def videos(tmp_path):
    """--videos holding one good GIF with its caption, and a secret outside it that no link may reveal."""
    folder = tmp_path / "videos"
    folder.mkdir()
    write_gif(str(folder / "good.gif"), grey(3))
    (folder / "good.txt").write_text("Hello, World!")
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.txt").write_text("TOP SECRET")
    write_gif(str(secret / "secret.gif"), grey(3))
    return folder


def cli_error(capsys, *args):
    """The one line `prepare-data args` exits 2 with."""
    assert main.main(["prepare-data", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --- the output folder: ours, outside --videos, writable; refused before any work ---

def test_out_holding_other_files_is_refused_and_left_alone(videos, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "good.mp4").write_bytes(b"my own video")  # same names as the clip to be written
    before = listing(out)
    with pytest.raises(UserError, match="is not empty and was not made by `python main.py prepare-data`"):
        prepare_data("folder", None, str(videos), str(out), quiet=True)
    assert listing(out) == before


@pytest.mark.parametrize("where", ["videos itself", "inside videos", "videos inside out"])
def test_out_overlapping_videos_is_refused_and_sources_untouched(videos, tmp_path, where, capsys):
    out = {"videos itself": videos, "inside videos": videos / "prepared", "videos inside out": tmp_path}[where]
    before = listing(videos)
    err = cli_error(capsys, "--from", "folder", "--videos", videos, "--out", out, "--normalize-captions")
    assert f"--out {out} and --videos {videos} overlap" in err
    assert listing(videos) == before  # good.txt not rewritten as "hello world", no good.mp4 beside it


def test_out_that_is_a_file_is_refused_before_the_manifest_is_read(videos, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text("[{ not json")  # were it read first, its error would come instead
    (tmp_path / "out").write_text("a file")
    err = cli_error(capsys, "--from", "json", "--manifest", manifest, "--videos", videos, "--out", tmp_path / "out")
    assert f"--out {tmp_path / 'out'} is a file, not a folder" in err


def test_out_that_cannot_be_created_is_refused_before_the_manifest_is_read(videos, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text("[{ not json")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "out"
    err = cli_error(capsys, "--from", "json", "--manifest", manifest, "--videos", videos, "--out", out)
    assert f"--out: cannot write in {out}" in err


def test_out_is_marked_and_a_rerun_resumes_into_it(videos, tmp_path):
    out = tmp_path / "out"
    first = prepare_data("folder", None, str(videos), str(out), normalize=True, quiet=True)
    owner = read_owner(str(out))
    assert owner["kind"] == "prepare-data" and "--normalize-captions" in owner["command"]
    again = prepare_data("folder", None, str(videos), str(out), quiet=True)
    assert (first["converted"], again["converted"], again["already_done"]) == (1, 0, 1)
    assert sorted(os.listdir(out)) == [OWNER_FILE, "contact_sheet.png", "good.mp4", "good.txt"]


# --- nothing read from outside --videos ---

def test_folder_links_out_of_videos_are_named_skips(videos, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.gif", videos / "a.gif")
    (videos / "a.txt").write_text("a caption")
    write_gif(str(videos / "b.gif"), grey(3))
    os.symlink(tmp_path / "outside" / "secret.txt", videos / "b.txt")
    write_gif(str(videos / "c.gif"), grey(3))
    os.mkfifo(videos / "c.txt")  # opening it would wait for a writer forever
    class Hung(Exception):  # not an OSError, which a caption reader would take for an unreadable file
        pass

    def hung(*_):
        raise Hung("prepare-data waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        s = prepare_data("folder", None, str(videos), str(tmp_path / "out"), quiet=True,
                         options={"caption_from_stem": True})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert dict(s["skipped_files"]) == {"a.gif": "link to outside the data folder",
                                        "b.gif": "caption b.txt: link to outside the data folder",
                                        "c.gif": "caption c.txt: not a regular file"}
    assert s["converted"] == 1 and "TOP SECRET" not in (tmp_path / "out" / "good.txt").read_text()


@pytest.mark.parametrize("fmt", ["csv", "json", "asl-citizen", "wlasl", "how2sign"])
def test_manifest_naming_a_link_out_of_videos_is_a_named_skip(videos, tmp_path, fmt):
    os.symlink(tmp_path / "outside" / "secret.gif", videos / "link.mp4")
    manifest = tmp_path / "m"
    manifest.write_text({
        "csv": "video,caption\nlink.mp4,x\n",
        "json": json.dumps([{"video": "link.mp4", "caption": "x"}]),
        "asl-citizen": "Video file,Gloss\nlink.mp4,X\n",
        "wlasl": json.dumps([{"gloss": "x", "instances": [{"video_id": "link"}]}]),
        "how2sign": "VIDEO_NAME\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\nlink\tlink\t0\t1\tx\n",
    }[fmt])
    jobs, skipped = read_manifest(fmt, str(manifest), str(videos), {})
    assert jobs == [] and len(skipped) == 1
    assert skipped[0][1] in ("video path leads outside --videos", "neither link.mp4 nor link.mp4 in --videos")


def test_phoenix_frame_linked_out_of_its_folder_is_a_named_skip(tmp_path):
    frames = tmp_path / "train"
    for name in ("s1", "s2"):
        (frames / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(grey(1)[0]).save(frames / name / f"images{i:04d}.png")
    Image.fromarray(grey(1)[0]).save(tmp_path / "private.png")
    os.remove(frames / "s2" / "images0001.png")
    os.symlink(tmp_path / "private.png", frames / "s2" / "images0001.png")
    manifest = tmp_path / "corpus.csv"
    manifest.write_text("name|translation\ns1|eins\ns2|zwei\n")
    s = prepare_data("phoenix", str(manifest), str(frames), str(tmp_path / "out"), quiet=True)
    assert s["converted"] == 1
    assert s["skipped_files"] == [("s2", "frame image images0001.png leads outside its frame folder")]


# --- values of the wrong type, malformed rows: named skips, the batch goes on ---

@pytest.mark.parametrize("value, kind", [(None, "null"), (["thank", "you"], "a list"), ({"en": "hi"}, "an object"),
                                         (42, "a number"), (True, "true/false")])
def test_json_caption_that_is_not_text_is_a_named_skip(videos, tmp_path, value, kind):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"video": "good.gif", "caption": value}, {"video": "good.gif", "caption": "ok"}]))
    jobs, skipped = read_manifest("json", str(manifest), str(videos), {})
    assert [j.caption for j in jobs] == ["ok"]
    assert skipped == [("m.json[0]", f"'caption' is {kind}, not text")]


def test_json_entries_of_the_wrong_shape_are_named_skips(videos, tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([["good.gif", "x"], "good.gif", {"video": 7, "caption": "x"},
                                    {"caption": "x"}, {"video": "a\u0000b.gif", "caption": "x"},
                                    {"video": "good.gif", "caption": "bell\u0007"},
                                    {"video": "good.gif", "caption": "word " * 20_000},
                                    {"video": "good.gif", "caption": "fine"}]))
    jobs, skipped = read_manifest("json", str(manifest), str(videos), {})
    assert [j.caption for j in jobs] == ["fine"]
    assert skipped == [("m.json[0]", "entry is not an object"), ("m.json[1]", "entry is not an object"),
                       ("m.json[2]", "'video' is a number, not text"), ("m.json[3]", "no 'video' field"),
                       ("m.json[4]", "video name has a NUL character"),
                       ("m.json[5]", "caption has control characters"), ("m.json[6]", "caption over 64 KiB")]


def test_wlasl_entries_of_the_wrong_shape_are_named_skips(videos, tmp_path):
    write_video(str(videos / "00001.mp4"), grey(4, h=16, w=24), fps=10)
    good = {"video_id": "00001", "frame_start": 1, "frame_end": -1, "bbox": [0, 0, 8, 8]}
    manifest = tmp_path / "wlasl.json"
    manifest.write_text(json.dumps([
        "book", {"gloss": "a", "instances": 5}, {"gloss": "b", "instances": "abc"}, {"gloss": ["c"], "instances": []},
        {"gloss": "d", "instances": [7, {**good, "video_id": None}, {**good, "frame_start": "3"},
                                     {**good, "frame_start": True}, {**good, "frame_start": 1.5},
                                     {**good, "frame_start": 0}, {**good, "frame_end": 0},
                                     {**good, "bbox": ["a", "b", "c", "d"]}, {**good, "bbox": [0, 0, 8]},
                                     {**good, "bbox": [8, 0, 0, 8]}, {**good, "bbox": [0, 0, 1e999, 8]},
                                     {k: v for k, v in good.items() if k != "bbox"}, good]}]))
    jobs, skipped = read_manifest("wlasl", str(manifest), str(videos), {"crop": True})
    assert [(j.name, j.bbox) for j in jobs] == [("d_00001", (0, 0, 8, 8))]
    assert skipped == [("wlasl.json[0]", "entry is not an object"),
                       ("wlasl.json[1] (a)", "'instances' is a number, not a list"),
                       ("wlasl.json[2] (b)", "'instances' is text, not a list"),
                       ("wlasl.json[3]", "'gloss' is a list, not text"),
                       ("d [0]", "instance is not an object"),
                       ("d [1]", "'video_id' is null, not text"),
                       ("d / 00001", "bad frame range '3'..-1"), ("d / 00001", "bad frame range True..-1"),
                       ("d / 00001", "bad frame range 1.5..-1"), ("d / 00001", "bad frame range 0..-1"),
                       ("d / 00001", "bad frame range 1..0"),
                       ("d / 00001", "bad bbox ['a', 'b', 'c', 'd']"), ("d / 00001", "bad bbox [0, 0, 8]"),
                       ("d / 00001", "bad bbox [8, 0, 0, 8]"), ("d / 00001", "bad bbox [0, 0, inf, 8]"),
                       ("d / 00001", "no bbox to --crop to")]


def test_csv_rows_of_the_wrong_shape_are_named_skips(videos, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,caption,start,end\n"
                        "good.gif,extra field,0,1,surplus\n"  # an unquoted comma in a caption shifts the columns
                        "good.gif,short row\n"
                        '"good.gif","' + "x" * 200_000 + '",0,1\n'
                        "\n"
                        "good.gif,nan start,nan,1\n"
                        "good.gif,infinite end,0,inf\n"
                        "good.gif,negative,-1,1\n"
                        "good.gif,backwards,2,1\n"
                        "good.gif,words,zero,one\n"
                        "good.gif,escape \x1b[2J,0,1\n"
                        "good.gif,fine,0,1\n")
    jobs, skipped = read_manifest("csv", str(manifest), str(videos), {"start_col": "start", "end_col": "end"})
    assert [(j.caption, j.start_s, j.end_s) for j in jobs] == [("fine", 0.0, 1.0)]
    assert skipped == [("m.csv:2", "row has 5 fields, the header 4"), ("m.csv:3", "row has 2 fields, the header 4"),
                       ("m.csv:4", "malformed row: field larger than field limit (131072)"),
                       ("m.csv:6", "bad time range 'nan'..'1'"), ("m.csv:7", "bad time range '0'..'inf'"),
                       ("m.csv:8", "bad time range '-1'..'1'"), ("m.csv:9", "bad time range '2'..'1'"),
                       ("m.csv:10", "bad time range 'zero'..'one'"), ("m.csv:11", "caption has control characters")]


def test_how2sign_and_phoenix_rows_of_the_wrong_shape_are_named_skips(videos, tmp_path):
    write_video(str(videos / "raw.mp4"), grey(10), fps=10)
    manifest = tmp_path / "h.csv"
    manifest.write_text("VIDEO_NAME\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
                        "raw\ts1\tnan\t1\tx\n"
                        "raw\ts2\t0\t1\tx\textra\n"
                        "raw\ts3\t0\n"
                        "raw\ts4\t0\t1\t\x1b]0;pwned\x07\n"
                        "raw\ts5\t0\t1\tok\n")
    jobs, skipped = read_manifest("how2sign", str(manifest), str(videos), {})
    assert [j.name for j in jobs] == ["s5"]
    assert skipped == [("h.csv:2 (s1)", "bad time range 'nan'..'1'"), ("h.csv:3", "row has 6 fields, the header 5"),
                       ("h.csv:4", "row has 3 fields, the header 5"),
                       ("h.csv:5 (s4)", "caption has control characters")]

    (videos / "s1").mkdir()
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("name|translation\ns1|eins|zu viel\n..|oben\na\x00b|null\n\x1b[2J|escape\n")
    jobs, skipped = read_manifest("phoenix", str(corpus), str(videos), {})
    assert jobs == []
    assert skipped == [("corpus.csv:2", "row has 3 fields, the header 2"),
                       ("corpus.csv:3 (..)", "frame folder .. not found"),
                       ("corpus.csv:4 (a\\x00b)", "frame folder name has a NUL character"),
                       ("corpus.csv:5 (\\x1b[2J)", "frame folder \\x1b[2J not found")]


def test_manifest_too_deep_or_too_big_is_one_line(videos, tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "deep.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    err = cli_error(capsys, "--from", "json", "--manifest", manifest, "--videos", videos, "--out", tmp_path / "o")
    assert err == f"error: cannot read JSON manifest {manifest}: JSON nested 100000 levels deep (at most 64)"
    monkeypatch.setattr(manifests, "MAX_MANIFEST_BYTES", 10)
    manifest.write_text(json.dumps([{"video": "good.gif", "caption": "x"}]))
    err = cli_error(capsys, "--from", "json", "--manifest", manifest, "--videos", videos, "--out", tmp_path / "o")
    assert err == f"error: cannot read JSON manifest {manifest}: larger than 10 bytes"
    manifest.write_text("video,caption\n" + "good.gif,x\n" * 3)
    err = cli_error(capsys, "--from", "csv", "--manifest", manifest, "--videos", videos, "--out", tmp_path / "o")
    assert err == f"error: manifest {manifest} is larger than 10 bytes"


# --- bad option values: one line, exit 2 ---

def test_bad_option_values_are_one_line(videos, tmp_path, capsys):
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("video,caption\ngood.gif,hi\n")
    json_manifest = tmp_path / "m.json"
    json_manifest.write_text(json.dumps([{"video": "good.gif", "caption": "hi"}]))
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("video,caption\n")
    out = tmp_path / "out"
    common = ["--videos", videos, "--out", out]
    before_any_work = (  # the options alone are wrong: refused before the output folder is made
            (["--from", "csv", "--manifest", csv_manifest, *common, "--delimiter", ";;"],
             "--delimiter must be one character (not a quote or a line break), got ';;'"),
            (["--from", "csv", "--manifest", csv_manifest, *common, "--delimiter", '"'],
             "--delimiter must be one character (not a quote or a line break), got '\"'"),
            (["--from", "folder", *common, "--workers", "0"], "--workers must be >= 1, got 0"),
            (["--from", "folder", *common, "--max-size", "3"], "--max-size must be >= 8, got 3"),
            (["--from", "csv", "--manifest", csv_manifest, *common, "--start-col", "video"],
             "--start-col and --end-col go together: give both or neither"),
            (["--from", "folder", "--manifest", csv_manifest, *common],
             "--from folder reads no manifest: leave out --manifest (captions are <name>.txt files)"),
            (["--from", "csv", "--manifest", tmp_path, *common], f"--manifest {tmp_path} is a folder, not a file"),
            (["--from", "csv", "--manifest", tmp_path / "none.csv", *common],
             f"--manifest {tmp_path / 'none.csv'} does not exist"),
            (["--from", "folder", "--videos", tmp_path / "nope", "--out", out],
             f"--videos {tmp_path / 'nope'} does not exist"),
            (["--from", "folder", "--videos", csv_manifest, "--out", out],
             f"--videos {csv_manifest} is a file, not a folder"))
    for args, expected in before_any_work:
        assert cli_error(capsys, *args) == f"error: {expected}"
    assert not out.exists()
    for args, expected in (  # the manifest, read once the output folder is claimed, does not fit the options
            (["--from", "csv", "--manifest", tmp_path / "header_only.csv", *common, "--caption-col", "text"],
             f"manifest {tmp_path / 'header_only.csv'} has no column 'text' (its columns: caption, video)"),
            (["--from", "json", "--manifest", json_manifest, *common, "--caption-col", "text"],
             f"JSON manifest {json_manifest} has no entry with a field 'text' (its fields: caption, video)"),
            (["--from", "csv", "--manifest", tmp_path / "empty.csv", *common],
             f"manifest {tmp_path / 'empty.csv'} is empty")):
        assert cli_error(capsys, *args) == f"error: {expected}"
