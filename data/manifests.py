"""Manifests of public sign data sets (and generic CSV / TSV / JSON ones) read into one list of clip jobs for
`main.py prepare-data`. The layouts are those of ../shared/reference/datasets.md; each reader names the columns it
needs and a manifest without them is a one-line error, a row without a usable value is a named skip.

Manifests come from outside: any field may hold the wrong type, any row may be malformed, and each such row is a named
skip while the others go on. Only a manifest that cannot be parsed at all (not UTF-8, not JSON, nested too deep, too
large) or lacks a column its format needs is an error for the whole run. Nothing is read from outside --videos: a
video, caption or frame image whose real path (links followed) leaves it is a named skip.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass

from data.folder import CAPTION_SUFFIX, CONTROL, MAX_CAPTION_BYTES, entry_problem, inside, read_caption, shown
from utils.errors import UserError
from utils.gif import safe_filename
from utils.safe_json import read_json
from utils.video import VIDEO_SUFFIXES

FORMATS = ("folder", "csv", "json", "how2sign", "asl-citizen", "wlasl", "phoenix")
# A manifest is read whole into memory (and JSON's nesting is measured first, at several times its size): bounded far
# above the largest public one (WLASL_v0.3.json, 11 MB; How2Sign's CSVs, a few MB).
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
LABEL_CHARS = 120  # a skipped row's label quotes manifest text, which may be a megabyte of it


@dataclass
class Job:
    """One clip to prepare: where its frames are, which part of them, and its caption."""
    name: str  # output stem, unique within the run
    caption: str
    source: str  # a video file, or a folder of frame images (PHOENIX)
    start_s: float | None = None  # trim by time (seconds in the source)
    end_s: float | None = None
    first_frame: int | None = None  # trim by frame index (0-based, inclusive)
    last_frame: int | None = None
    bbox: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 in source pixels
    fps: float | None = None  # of a frame folder


class ManifestError(UserError):
    """The manifest is missing, unreadable, or lacks a column its format needs."""


def _rows(path: str, delimiter: str | None) -> tuple[list[str], list[tuple[int, dict | None, str | None]]]:
    """A CSV / TSV manifest's header, and its rows as (line, row as a dict, None) or (line, None, why it is malformed);
    the delimiter is sniffed from the header when not given."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        text = raw.decode("utf-8-sig")
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path} is not UTF-8 text") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")
    delimiter = delimiter or max("\t,|;", key=text.split("\n", 1)[0].count)
    line = 0  # lines the csv reader has taken (its own line_num lags after a csv.Error)

    def counted():
        nonlocal line
        # newline="": only \r and \n end a line (str.splitlines would also split a caption at \u2028 or \x1c)
        for line, text_line in enumerate(io.StringIO(text, newline=""), start=1):
            yield text_line

    reader = csv.reader(counted(), delimiter=delimiter)
    header, rows = None, []
    while True:
        first = line + 1  # a row is labelled by its first line, as a spreadsheet shows it
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # the reader resumes at the next line: one broken row is that row's skip
            if header is None:
                raise ManifestError(f"manifest {path}: its header line is malformed ({e})") from None
            rows.append((first, None, f"malformed row: {e}"))
            continue
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
        elif len(fields) != len(header):  # e.g. an unquoted delimiter in a caption: every column after it is shifted
            rows.append((first, None, f"row has {len(fields)} fields, the header {len(header)}"))
        else:
            rows.append((first, {k: v.strip() for k, v in zip(header, fields)}, None))
    if header is None:
        raise ManifestError(f"manifest {path} is empty")
    return header, rows


def _need(header: list[str], columns: list[str], path: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ManifestError(f"manifest {path} has no column {', '.join(repr(c) for c in missing)} "
                            f"(its columns: {', '.join(sorted(header))})")


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _time_range(start: str, end: str) -> tuple[float | None, float | None, str | None]:
    """(start_s, end_s, None) for 0 <= start < end < infinity (NaN fails every comparison), else (None, None, why)."""
    start_s, end_s = _float(start), _float(end)
    if start_s is None or end_s is None or not 0 <= start_s < end_s < math.inf:
        return None, None, f"bad time range {start!r}..{end!r}"
    return start_s, end_s, None


def _kind(value) -> str:
    """What a JSON value is, in the words a manifest's author would use."""
    if isinstance(value, bool):
        return "true/false"
    return {type(None): "null", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _text(value, field: str) -> tuple[str | None, str | None]:
    """(value, None) for a string, else (None, why): a number or a list is no caption, and str() of one would make
    "None" or "['thank', 'you']" a caption."""
    return (value, None) if isinstance(value, str) else (None, f"{field!r} is {_kind(value)}, not text")


def _unique(name: str, taken: set[str]) -> str:
    """A file-name stem for `name`, not yet in `taken` in any case (on macOS and Windows "A.mp4" is "a.mp4")."""
    base, n = safe_filename(name, 80), 1
    name = base
    while name.lower() in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name.lower())
    return name


def check_sources(fmt: str, manifest: str | None, videos: str, opts: dict) -> None:
    """A one-line ManifestError for a bad --from, --manifest, --videos or reader option, before anything is read."""
    if fmt not in FORMATS:
        raise ManifestError(f"--from must be one of {', '.join(FORMATS)}")
    if fmt != "folder" and not manifest:
        raise ManifestError(f"--from {fmt} needs --manifest PATH")
    if fmt == "folder" and manifest:
        raise ManifestError("--from folder reads no manifest: leave out --manifest (captions are <name>.txt files)")
    for flag, path in (("--manifest", manifest), ("--videos", videos)):
        if path is not None and not os.path.exists(path):
            raise ManifestError(f"{flag} {path} does not exist")
    if manifest and os.path.isdir(manifest):
        raise ManifestError(f"--manifest {manifest} is a folder, not a file")
    if manifest and not os.path.isfile(manifest):  # a pipe or a device: reading it could wait forever
        raise ManifestError(f"--manifest {manifest} is not a regular file")
    if not os.path.isdir(videos):
        raise ManifestError(f"--videos {videos} is a file, not a folder")
    delimiter = opts.get("delimiter")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise ManifestError(f"--delimiter must be one character (not a quote or a line break), got {delimiter!r}")
    if bool(opts.get("start_col")) != bool(opts.get("end_col")):
        raise ManifestError("--start-col and --end-col go together: give both or neither")


def read_manifest(fmt: str, manifest: str | None, videos: str, opts: dict) -> tuple[list[Job], list[tuple[str, str]]]:
    """(jobs, skipped rows as (row label, reason)). opts: video_col, caption_col, start_col, end_col, delimiter,
    caption_field (phoenix: translation | orth), crop (wlasl), caption_from_stem (folder)."""
    check_sources(fmt, manifest, videos, opts)
    reader = {"folder": _folder, "csv": _csv, "json": _json, "how2sign": _how2sign, "asl-citizen": _asl_citizen,
              "wlasl": _wlasl, "phoenix": _phoenix}[fmt]
    jobs, skipped, taken = [], [], set()
    for label, job, why in reader(manifest, videos, opts):
        if not why:
            job.caption = " ".join(job.caption.split())
            why = _caption_problem(job.caption)
        if why:  # labels and reasons quote the manifest, which may hold terminal escapes
            skipped.append((shown(label)[:LABEL_CHARS], shown(why)[:LABEL_CHARS]))
            continue
        job.name = _unique(job.name, taken)
        jobs.append(job)
    return jobs, skipped


def _caption_problem(caption: str) -> str | None:
    """The checks read_caption makes on a caption file, for a caption taken from a manifest (whitespace collapsed)."""
    if not caption:
        return "empty caption"
    if CONTROL.search(caption):  # a terminal escape in a caption would act when the caption is printed
        return "caption has control characters"
    if len(caption.encode("utf-8", "surrogatepass")) > MAX_CAPTION_BYTES:
        return f"caption over {MAX_CAPTION_BYTES // 1024} KiB"
    return None


def _video(videos: str, name: str) -> tuple[str | None, str | None]:
    """(path, None) for a video file inside the videos folder, or (None, why)."""
    if "\0" in name:  # no file has one; os.path would raise on it
        return None, "video name has a NUL character"
    path = os.path.join(videos, name)
    if not inside(path, videos):
        return None, "video path leads outside --videos"
    if not os.path.isfile(path):
        return None, f"video {name} not found"
    return path, None


def _folder(manifest, videos, opts):
    with os.scandir(videos) as listing:
        entries = {e.name: e for e in listing}
    for name in sorted(entries):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in VIDEO_SUFFIXES + (".gif",) or name.startswith("."):
            continue
        why = entry_problem(videos, entries[name])
        caption, why = (None, why) if why else _folder_caption(videos, entries.get(stem + CAPTION_SUFFIX), stem, opts)
        yield name, Job(stem, caption or "", os.path.join(videos, name)), why


def _folder_caption(videos: str, entry: os.DirEntry | None, stem: str, opts: dict) -> tuple[str | None, str | None]:
    """(caption, None) or (None, why) from a video's caption file `entry` (None: it has none)."""
    if entry is None:  # only a missing caption falls back to the stem: one that cannot be used stays a named skip
        return (stem.replace("_", " "), None) if opts.get("caption_from_stem") else (None, "no caption")
    problem = entry_problem(videos, entry)  # a link out of --videos, a pipe that would wait forever, ...
    return (None, f"caption {entry.name}: {problem}") if problem else read_caption(entry.path)


def _table(manifest, videos, opts, video_col, caption_col, start_col=None, end_col=None):
    header, rows = _rows(manifest, opts.get("delimiter"))
    _need(header, [c for c in (video_col, caption_col, start_col, end_col) if c], manifest)
    for line, row, why in rows:
        label = f"{os.path.basename(manifest)}:{line}"
        if why:
            yield label, None, why
            continue
        path, why = _video(videos, row[video_col]) if row[video_col] else (None, "no video named")
        job = Job(os.path.splitext(row[video_col])[0], row[caption_col], path or "")
        if not why and start_col:
            job.start_s, job.end_s, why = _time_range(row[start_col], row[end_col])
        yield label, job, why


def _csv(manifest, videos, opts):
    yield from _table(manifest, videos, opts, opts.get("video_col") or "video", opts.get("caption_col") or "caption",
                      opts.get("start_col"), opts.get("end_col"))


def _json_list(manifest: str, what: str) -> list:
    """A JSON manifest that must hold a list (of `what`); anything else is a one-line ManifestError."""
    try:
        entries = read_json(manifest, MAX_MANIFEST_BYTES)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"cannot read JSON manifest {manifest}: {str(e).splitlines()[0]}") from None
    if not isinstance(entries, list):
        raise ManifestError(f"JSON manifest {manifest} must be a list of {what}")
    return entries


def _json(manifest, videos, opts):
    entries = _json_list(manifest, "objects")
    vcol, ccol = opts.get("video_col") or "video", opts.get("caption_col") or "caption"
    fields = {key for entry in entries if isinstance(entry, dict) for key in entry}
    missing = [c for c in (vcol, ccol) if c not in fields]
    if fields and missing:  # no entry has it: a misnamed field, not thousands of bad entries
        raise ManifestError(f"JSON manifest {manifest} has no entry with a field {missing[0]!r} "
                            f"(its fields: {', '.join(sorted(fields)[:20])})")
    for i, entry in enumerate(entries):
        label = f"{os.path.basename(manifest)}[{i}]"
        if not isinstance(entry, dict):
            yield label, None, "entry is not an object"
            continue
        missing = [c for c in (vcol, ccol) if c not in entry]
        (video, bad_video), (caption, bad_caption) = _text(entry.get(vcol), vcol), _text(entry.get(ccol), ccol)
        why = f"no {missing[0]!r} field" if missing else bad_video or bad_caption
        if why:
            yield label, None, why
            continue
        path, why = _video(videos, video)
        yield label, Job(os.path.splitext(video)[0], caption, path or ""), why


def _how2sign(manifest, videos, opts):
    """Pre-cut <SENTENCE_NAME>.mp4 when present in --videos, else <VIDEO_NAME>.mp4 cut at the realigned times."""
    header, rows = _rows(manifest, "\t")
    _need(header, ["VIDEO_NAME", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE"], manifest)
    for line, row, why in rows:
        if why:
            yield f"{os.path.basename(manifest)}:{line}", None, why
            continue
        label = f"{os.path.basename(manifest)}:{line} ({row['SENTENCE_NAME']})"
        job = Job(row["SENTENCE_NAME"], row["SENTENCE"], "")
        path, why = _video(videos, row["SENTENCE_NAME"] + ".mp4")
        if path:
            job.source = path
        else:
            path, why = _video(videos, row["VIDEO_NAME"] + ".mp4")
            job.source = path or ""
            if why:
                why = f"neither {row['SENTENCE_NAME']}.mp4 nor {row['VIDEO_NAME']}.mp4 in --videos"
            else:
                job.start_s, job.end_s, why = _time_range(row["START_REALIGNED"], row["END_REALIGNED"])
        yield label, job, why


def _asl_citizen(manifest, videos, opts):
    yield from _table(manifest, videos, opts, "Video file", "Gloss")


def _bbox(box) -> tuple[int, int, int, int] | None:
    """WLASL's [x1, y1, x2, y2] as ints, or None unless it is four finite numbers with x1 < x2 and y1 < y2."""
    if not isinstance(box, list) or len(box) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return None
    x1, y1, x2, y2 = (int(v) for v in box)
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no frame number


def _wlasl(manifest, videos, opts):
    for i, entry in enumerate(_json_list(manifest, "{gloss, instances}")):
        label = f"{os.path.basename(manifest)}[{i}]"
        if not isinstance(entry, dict):
            yield label, None, "entry is not an object"
            continue
        gloss, why = _text(entry.get("gloss"), "gloss")
        instances = entry.get("instances", [])
        if not why and not isinstance(instances, list):
            label, why = f"{label} ({gloss})", f"'instances' is {_kind(instances)}, not a list"
        if why:
            yield label, None, why
            continue
        for j, inst in enumerate(instances):
            if not isinstance(inst, dict):
                yield f"{gloss} [{j}]", None, "instance is not an object"
                continue
            vid = inst.get("video_id", "")
            vid = str(vid) if _integer(vid) else vid  # an id may be written as a number: 69241 is "69241"
            if not isinstance(vid, str):
                yield f"{gloss} [{j}]", None, _text(vid, "video_id")[1]
                continue
            path, why = _video(videos, vid + ".mp4") if vid else (None, "no video_id")
            job = Job(f"{gloss}_{vid}", gloss, path or "")
            start, end = inst.get("frame_start", 1), inst.get("frame_end", -1)
            if not why and (not _integer(start) or not _integer(end) or start < 1 or (end != -1 and end < start)):
                why = f"bad frame range {start!r}..{end!r}"
            if not why:
                job.first_frame, job.last_frame = start - 1, None if end == -1 else end - 1  # 1-based, inclusive
                if opts.get("crop"):
                    job.bbox = _bbox(inst.get("bbox"))
                    if job.bbox is None:  # cropping was asked for: an uncropped clip would be a silent surprise
                        why = "no bbox to --crop to" if "bbox" not in inst else f"bad bbox {inst['bbox']!r}"[:80]
            yield f"{gloss} / {vid}", job, why


def _phoenix(manifest, videos, opts):
    """videos = the split's frame folder (features/fullFrame-210x260px/<split>): one PNG folder per sentence, 25 fps."""
    header, rows = _rows(manifest, "|")
    field = opts.get("caption_field") or "translation"
    _need(header, ["name", field], manifest)
    for line, row, why in rows:
        if why:
            yield f"{os.path.basename(manifest)}:{line}", None, why
            continue
        label = f"{os.path.basename(manifest)}:{line} ({row['name']})"
        if "\0" in row["name"]:
            yield label, None, "frame folder name has a NUL character"
            continue
        folder = os.path.join(videos, row["name"])
        found = inside(folder, videos, strict=True) and os.path.isdir(folder)
        why = None if found else f"frame folder {row['name']} not found"
        yield label, Job(row["name"], row[field], folder, fps=25.0), why
