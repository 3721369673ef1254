"""The data-folder rules: which files are clips, where their captions are, what is skipped and why, and the split.

A data folder is flat: clips `<name>.gif` or videos `<name>.mp4` (.webm, .mov, .avi, .mkv, .m4v; any case of the
suffix) with a same-stem `<name>.txt` caption. The rules a user meets, each a named skip in the warning rather than a
silent choice:
- hidden files (".x.gif", macOS "._x.gif" forks) are not clips and are not listed;
- subfolders are not read (clips must sit directly in the folder), except HELDOUT_DIR; they are listed;
- a name that is not valid UTF-8, a link to outside the data folder, and a broken link are skipped;
- a caption is matched by the exact stem, case included ("A.gif" takes "A.txt", never "a.txt"); it must be UTF-8
  (a BOM is allowed) or UTF-16 with a BOM; whitespace runs become one space; a caption with other control
  characters (NUL, ESC, ...) or none left is skipped;
- the suffix says how a clip is decoded, and the content must agree: a .gif holds GIF data (utils/gif.py), any
  video suffix holds a video (utils/video.py). A file that holds something else, such as an mp4 named .gif or a
  GIF named .mp4, is skipped with the reason named ("not a GIF file (MP4 data; rename it to .mp4)"), never decoded
  as what it really is, by training, data-stats and the checklist alike. Decoding results are remembered by content
  and suffix, so the renamed file is tried again.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import unicodedata

from utils.errors import UserError
from utils.video import VIDEO_SUFFIXES

CLIP_SUFFIXES = (".gif",) + VIDEO_SUFFIXES  # matched case-insensitively: x.GIF is a clip too
CAPTION_SUFFIX = ".txt"
HELDOUT_DIR = "heldout"  # subfolder of word combinations kept out of training (`evaluate`'s unseen captions)
HOW_TO_GET_DATA = "run `python main.py synth-data --out <dir>` for the built-in synthetic set"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0 controls, DEL, C1 controls
MAX_CAPTION_BYTES = 64 * 1024  # a caption is a sentence; anything longer is not one (and is not read whole)


class DataError(UserError):
    """The data folder is missing, empty, or holds no usable clip + caption pair."""


def clip_files(folder: str) -> list[str]:
    """Sorted names of the clip files directly in `folder` (regular files or links to them; hidden files never)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(CLIP_SUFFIXES) and not n.startswith(".")
                  and os.path.isfile(os.path.join(folder, n)))


def has_clips(folder: str) -> bool:
    return bool(clip_files(folder))


def clip_stem(path: str) -> str:
    """A clip's name without folder and suffix: what its caption file and its train/val split are keyed by."""
    return os.path.splitext(os.path.basename(path))[0]


def caption_words(caption: str) -> list[str]:
    """Lower-case words of a caption (letters and digits; punctuation separates words)."""
    return re.findall(r"\w+", caption.lower())


def normalize_caption(caption: str) -> str:
    """data.caption_normalize: lower case, apostrophes dropped ("don't" -> "dont"), other punctuation and symbols as
    word breaks, whitespace collapsed: "Thank you." and "thank  you" are one caption."""
    text = caption.lower().replace("'", "").replace("\u2019", "")
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def shown(name: str) -> str:
    """A file name as one printable line: undecodable bytes as \\xNN, control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def inside(path: str, root: str, strict: bool = False) -> bool:
    """path, links resolved, is root or lies under it (strict: only under it)."""
    real, root = os.path.realpath(path), os.path.realpath(root)
    return (real == root and not strict) or real.startswith(root + os.sep)


def entry_problem(folder: str, entry: os.DirEntry) -> str | None:
    """Why a directory entry (from os.scandir, whose type needs no extra system call for plain files) cannot be used
    as a clip or caption file, or None."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if entry.is_symlink():
        if not os.path.exists(entry.path):
            return "broken link"
        if not inside(entry.path, folder):
            return "link to outside the data folder"
    if not entry.is_file():
        return "not a regular file"
    return None


def read_caption(path: str) -> tuple[str | None, str | None]:
    """(caption, None) or (None, why it cannot be used)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CAPTION_BYTES + 1)
    except OSError as err:
        return None, f"unreadable caption: {type(err).__name__}"
    if len(raw) > MAX_CAPTION_BYTES:
        return None, f"caption file over {MAX_CAPTION_BYTES // 1024} KiB"
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        return None, "caption is not UTF-8 (or UTF-16 with a BOM)"
    caption = " ".join(text.split())  # strip and collapse whitespace and newlines
    if CONTROL.search(caption):
        return None, "caption has control characters"
    if not caption:
        return None, "empty caption"
    return caption, None


def find_pairs(data_dir: str, normalize: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(clip_path, caption) pairs sorted by file name, and (shown file name, reason) for everything skipped; normalize
    applies normalize_caption."""
    expected = (f"expected a folder of <name>.gif or video clips ({', '.join(VIDEO_SUFFIXES)}) each with a "
                f"<name>.txt caption; {HOW_TO_GET_DATA}")
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder '{data_dir}' does not exist: {expected.replace('<dir>', data_dir)}")
    with os.scandir(data_dir) as listing:
        entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
    skipped, clips, captions = [], [], {}
    for entry in entries:
        name, lower = entry.name, entry.name.lower()
        if entry.is_dir(follow_symlinks=False):
            if name != HELDOUT_DIR:
                skipped.append((shown(name) + "/", "a folder: not read (clips must sit directly in the data folder)"))
            continue
        if not lower.endswith(CLIP_SUFFIXES + (CAPTION_SUFFIX,)):
            continue
        problem = entry_problem(data_dir, entry)
        if problem:
            skipped.append((shown(name), problem))
        elif lower.endswith(CLIP_SUFFIXES):
            clips.append(name)
        else:
            captions[name[:-len(CAPTION_SUFFIX)]] = name
    if not clips and not skipped:
        raise DataError(f"no clips in '{data_dir}': {expected.replace('<dir>', data_dir)}")
    by_lower = {stem.lower(): stem for stem in captions}
    pairs = []
    for name in clips:
        stem = clip_stem(name)
        if stem not in captions:
            other = by_lower.get(stem.lower())
            skipped.append((shown(name), f"no caption{f' ({other}.txt differs in case)' if other else ''}"))
            continue
        caption, why = read_caption(os.path.join(data_dir, captions[stem]))
        if caption and normalize:
            caption = normalize_caption(caption)
            why = None if caption else "empty caption after data.caption_normalize (punctuation only)"
        if why:
            skipped.append((shown(name), why))
        else:
            pairs.append((os.path.join(data_dir, name), caption))
    return pairs, skipped


def split_of(stem: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the stem alone, so adding files never moves the others."""
    frac = int(hashlib.sha1(stem.encode("utf-8")).hexdigest()[:15], 16) / 16**15
    return "val" if frac < val_fraction else "train"


def select_split(pairs: list[tuple[str, str]], split: str, val_fraction: float) -> list[tuple[str, str]]:
    """The pairs of one split ("train", "val" or "all"); train is never empty while there are pairs."""
    if split == "all":
        return pairs
    stems = [clip_stem(p) for p, _ in pairs]
    is_val = [split_of(stem, val_fraction) == "val" for stem in stems]
    if pairs and all(is_val):
        # train must never be empty: hand the clip with the largest stem back to train
        is_val[max(range(len(stems)), key=lambda k: stems[k])] = False
    return [p for p, v in zip(pairs, is_val) if v == (split == "val")]


def warn_skipped(data_dir: str, skipped: list[tuple[str, str]], loaded: int, stream) -> None:
    """Every skipped file on its own line with its reason, and how many clips were loaded."""
    lines = "".join(f"\n  {name}: {reason}" for name, reason in skipped)
    print(f"warning: skipped {len(skipped)} file(s) in {shown(data_dir)} ({loaded} clips loaded):{lines}",
          file=stream)
