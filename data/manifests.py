"""Manifests of public sign data sets (and generic CSV / TSV / JSON ones) read into one list of clip jobs for
`main.py prepare-data`. The layouts are those of ../shared/reference/datasets.md; each reader names the columns it
needs and a manifest without them is a one-line error, a row without a usable value is a named skip.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from data.folder import CAPTION_SUFFIX, inside, read_caption
from utils.errors import UserError
from utils.gif import safe_filename
from utils.video import VIDEO_SUFFIXES

FORMATS = ("folder", "csv", "json", "how2sign", "asl-citizen", "wlasl", "phoenix")


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


def _rows(path: str, delimiter: str | None) -> list[dict]:
    """Rows of a CSV / TSV manifest as dicts (delimiter sniffed from the header when not given)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path} is not UTF-8 text") from None
    header = text.split("\n", 1)[0]
    delimiter = delimiter or max("\t,|;", key=header.count)
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _need(rows: list[dict], columns: list[str], path: str) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if rows and missing:
        raise ManifestError(f"manifest {path} has no column {', '.join(repr(c) for c in missing)} "
                            f"(its columns: {', '.join(sorted(have))})")


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _unique(name: str, taken: set[str]) -> str:
    base, n = safe_filename(name, 80), 1
    name = base
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def read_manifest(fmt: str, manifest: str | None, videos: str, opts: dict) -> tuple[list[Job], list[tuple[str, str]]]:
    """(jobs, skipped rows as (row label, reason)). opts: video_col, caption_col, start_col, end_col, delimiter,
    caption_field (phoenix: translation | orth)."""
    if fmt not in FORMATS:
        raise ManifestError(f"--from must be one of {', '.join(FORMATS)}")
    if fmt != "folder" and not manifest:
        raise ManifestError(f"--from {fmt} needs --manifest PATH")
    if not os.path.isdir(videos):
        raise ManifestError(f"--videos {videos} is not a folder")
    reader = {"folder": _folder, "csv": _csv, "json": _json, "how2sign": _how2sign, "asl-citizen": _asl_citizen,
              "wlasl": _wlasl, "phoenix": _phoenix}[fmt]
    jobs, skipped, taken = [], [], set()
    for label, job, why in reader(manifest, videos, opts):
        if why:
            skipped.append((label, why))
            continue
        if not job.caption.strip():
            skipped.append((label, "empty caption"))
            continue
        job.name = _unique(job.name, taken)
        jobs.append(job)
    return jobs, skipped


def _video(videos: str, name: str) -> tuple[str | None, str | None]:
    """(path, None) for a video inside the videos folder, or (None, why)."""
    path = os.path.join(videos, name)
    if not inside(path, videos):
        return None, "video path leads outside --videos"
    if not os.path.isfile(path):
        return None, f"video {name} not found"
    return path, None


def _folder(manifest, videos, opts):
    for name in sorted(os.listdir(videos)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in VIDEO_SUFFIXES + (".gif",) or name.startswith("."):
            continue
        caption, why = read_caption(os.path.join(videos, stem + CAPTION_SUFFIX))
        if why and opts.get("caption_from_stem"):
            caption, why = stem.replace("_", " "), None
        yield name, Job(stem, caption or "", os.path.join(videos, name)), why


def _table(manifest, videos, opts, video_col, caption_col, start_col=None, end_col=None, suffix=""):
    rows = _rows(manifest, opts.get("delimiter"))
    _need(rows, [c for c in (video_col, caption_col, start_col, end_col) if c], manifest)
    for i, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them (header = 1)
        label = f"{os.path.basename(manifest)}:{i}"
        path, why = _video(videos, row[video_col] + suffix) if row[video_col] else (None, "no video named")
        job = Job(os.path.splitext(row[video_col])[0], row[caption_col], path or "")
        if not why and start_col:
            job.start_s, job.end_s = _float(row[start_col]), _float(row[end_col])
            if job.start_s is None or job.end_s is None or job.end_s <= job.start_s:
                why = f"bad time range {row[start_col]!r}..{row[end_col]!r}"
        yield label, job, why


def _csv(manifest, videos, opts):
    yield from _table(manifest, videos, opts, opts.get("video_col") or "video", opts.get("caption_col") or "caption",
                      opts.get("start_col"), opts.get("end_col"))


def _json_list(manifest: str, what: str) -> list:
    """A JSON manifest that must hold a list (of `what`); anything else is a one-line ManifestError."""
    try:
        with open(manifest, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read JSON manifest {manifest}: {e}") from None
    if not isinstance(entries, list):
        raise ManifestError(f"JSON manifest {manifest} must be a list of {what}")
    return entries


def _json(manifest, videos, opts):
    entries = _json_list(manifest, "objects")
    vcol, ccol = opts.get("video_col") or "video", opts.get("caption_col") or "caption"
    for i, entry in enumerate(entries):
        label = f"{os.path.basename(manifest)}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get(vcol), str):
            yield label, None, f"no {vcol!r} field"
            continue
        path, why = _video(videos, entry[vcol])
        yield label, Job(os.path.splitext(entry[vcol])[0], str(entry.get(ccol, "")), path or ""), why


def _how2sign(manifest, videos, opts):
    """Pre-cut <SENTENCE_NAME>.mp4 when present in --videos, else <VIDEO_NAME>.mp4 cut at the realigned times."""
    rows = _rows(manifest, "\t")
    _need(rows, ["VIDEO_NAME", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE"], manifest)
    for i, row in enumerate(rows, start=2):
        label = f"{os.path.basename(manifest)}:{i} ({row['SENTENCE_NAME']})"
        job = Job(row["SENTENCE_NAME"], row["SENTENCE"], "")
        path, why = _video(videos, row["SENTENCE_NAME"] + ".mp4")
        if path:
            job.source = path
        else:
            path, why = _video(videos, row["VIDEO_NAME"] + ".mp4")
            job.source = path or ""
            job.start_s, job.end_s = _float(row["START_REALIGNED"]), _float(row["END_REALIGNED"])
            if not why and (job.start_s is None or job.end_s is None or job.end_s <= job.start_s):
                why = f"bad time range {row['START_REALIGNED']!r}..{row['END_REALIGNED']!r}"
            elif why:
                why = f"neither {row['SENTENCE_NAME']}.mp4 nor {row['VIDEO_NAME']}.mp4 in --videos"
        yield label, job, why


def _asl_citizen(manifest, videos, opts):
    yield from _table(manifest, videos, opts, "Video file", "Gloss")


def _wlasl(manifest, videos, opts):
    for entry in _json_list(manifest, "{gloss, instances}"):
        for inst in entry.get("instances", []) if isinstance(entry, dict) else []:
            vid = str(inst.get("video_id", ""))
            label = f"{entry.get('gloss')} / {vid}"
            path, why = _video(videos, vid + ".mp4") if vid else (None, "no video_id")
            job = Job(f"{entry.get('gloss')}_{vid}", str(entry.get("gloss", "")), path or "")
            start, end = inst.get("frame_start", 1), inst.get("frame_end", -1)
            if not why and (not isinstance(start, int) or not isinstance(end, int) or start < 1
                            or (end != -1 and end < start)):
                why = f"bad frame range {start!r}..{end!r}"
            if not why:
                job.first_frame, job.last_frame = start - 1, None if end == -1 else end - 1  # 1-based, inclusive
                box = inst.get("bbox")
                if opts.get("crop") and isinstance(box, list) and len(box) == 4:
                    job.bbox = tuple(int(v) for v in box)
            yield label, job, why


def _phoenix(manifest, videos, opts):
    """videos = the split's frame folder (features/fullFrame-210x260px/<split>): one PNG folder per sentence, 25 fps."""
    rows = _rows(manifest, "|")
    field = opts.get("caption_field") or "translation"
    _need(rows, ["name", field], manifest)
    for i, row in enumerate(rows, start=2):
        label = f"{os.path.basename(manifest)}:{i} ({row['name']})"
        folder = os.path.join(videos, row["name"])
        found = inside(folder, videos, strict=True) and os.path.isdir(folder)
        why = None if found else f"frame folder {row['name']} not found"
        yield label, Job(row["name"], row[field], folder, fps=25.0), why
