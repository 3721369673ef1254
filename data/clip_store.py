"""The decoded-clip cache: one flat uint8 array file per preprocessing setting plus an index, read clip by clip, so
memory does not grow with the number of clips and a warm start reads no clip at all.

    <cache_dir>/clips-<key of the settings>/
        clips-<id>.u8  records of T*H*W*3 bytes, appended, never rewritten (index.json names the file)
        index.json   clips by key (the file's content hash and its lower-case suffix) -> [row, checksum, whether its
                     frames are all the same], failures by key, and the fast path: absolute file path -> (size,
                     mtime_ns, content hash), so unchanged files are not re-hashed on every start (a file reached by
                     another path is hashed once more, then found by content)
        .lock        held while the store is written (runs sharing a cache take turns)

Keyed by content and suffix (clip_key): a file renamed or copied under the same suffix finds its row by hash, a file
changed in place gets a new one, and since the suffix picks the decoder (data/folder.py), a file refused as .gif and
renamed .mp4 is tried again, and bytes stored as x.mp4 are never served for a copy named x.gif. Crash-safe: new records
are appended and flushed to disk before index.json is atomically replaced, a reader trusts only the rows the index
names, and a writer first cuts the array file back to the length the index covers, so the bytes of an interrupted build
are never read. An index that cannot be trusted (unreadable, malformed, naming more rows than its file holds, or naming
an array file that is not a plain clips-<id>.u8 in the store folder, such as "../x") is said so once on stderr and
starts a new array file rather than rewriting the old one, which a run still reading it keeps using; no name read from
the index is ever opened outside the store folder (the fast path's file paths are only looked up, never opened). Every
row carries a crc32 of its bytes seeded with its key, checked on each read at the cost of one pass over bytes already
read: flipped bytes, or rows swapped between keys (checksums and all), are never served; a reader with the clip's source
decodes it again (ClipView), any other is refused. Rows are read with positioned reads (os.pread) rather than a memory
map: pages of a mapped file that a long epoch touches count in the process's resident memory, the page cache's do not.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import uuid
import zlib

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.errors import UserError
from utils.safe_json import read_json

STORE_VERSION = 2  # bump when the layout changes; the settings key already covers preprocessing changes
HASH_CHUNK = 1 << 20
MAX_INDEX_BYTES = 1 << 30  # an index names each file once: ~200 bytes a clip, so 5 million clips
FLUSH_EVERY = 256  # clips decoded between appends: bounds the memory of a large first build
ARRAY_NAME = re.compile(r"clips-[0-9a-f]{12}\.u8")  # the only array file names the store makes, and trusts


class ClipStoreError(UserError):
    """A clip in the cache fails its checksum and the reader has no source file to decode it from again."""


def content_hash(path: str) -> str:
    """sha1 of a file's bytes, read in chunks (videos can be large)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def clip_key(digest: str, path: str) -> str:
    """The store's key for a file with this content hash: the hash and the file's lower-case suffix."""
    return digest + os.path.splitext(path)[1].lower()


def _checksum(key: str, data: bytes) -> int:
    """crc32 of a row's bytes seeded with its key, so the bytes of another key's row fail it too."""
    return zlib.crc32(data, zlib.crc32(key.encode("utf-8", "surrogateescape")))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ClipStore:
    """The store of one preprocessing setting: clips of `shape` (T, H, W, 3) by clip_key."""

    def __init__(self, cache_dir: str, settings: str, shape: tuple[int, ...]):
        key = hashlib.sha1(f"text2sign-store-v{STORE_VERSION}|{settings}|{shape}".encode()).hexdigest()[:16]
        self.root = os.path.join(cache_dir, f"clips-{key}")
        self.shape, self.record_bytes = tuple(shape), int(np.prod(shape))
        self.index_path = os.path.join(self.root, "index.json")
        self._warned = False
        self.index = self._load_index()
        self._pending: dict[str, tuple[bytes, int, bool]] = {}  # key -> (bytes, checksum, constant), in append order
        self._new_stats: dict[str, list] = {}
        self._fd: int | None = None
        self._fd_array: str | None = None

    def _load_index(self) -> dict:
        empty = {"version": STORE_VERSION, "shape": list(self.shape), "array": f"clips-{uuid.uuid4().hex[:12]}.u8",
                 "rows": 0, "clips": {}, "failed": {}, "by_stat": {}}
        try:
            index = read_json(self.index_path, MAX_INDEX_BYTES)
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as e:
            why = f"unreadable: {type(e).__name__}"
        else:
            why = self._index_problem(index)
            if why is None:
                return index
        if not self._warned:  # read again under the lock before the first write: one line is enough
            print(f"warning: clip cache index {self.index_path} is not trusted ({why}): starting a new array file",
                  file=sys.stderr)
            self._warned = True
        return empty

    def _index_problem(self, index) -> str | None:
        """Why an index read back cannot be trusted, or None: each field is checked before a name in it becomes a
        path or a number in it an offset."""
        if not (isinstance(index, dict) and index.get("version") == STORE_VERSION
                and index.get("shape") == list(self.shape)):
            return "another version or clip shape"
        array, rows = index.get("array"), index.get("rows")
        if not (isinstance(array, str) and ARRAY_NAME.fullmatch(array)):
            return f"array file {array!r} is not a clips-<id>.u8 name in the store folder"
        clips, failed, by_stat = index.get("clips"), index.get("failed"), index.get("by_stat")
        if not (_is_int(rows) and rows >= 0 and isinstance(clips, dict) and isinstance(failed, dict)
                and isinstance(by_stat, dict)):
            return "malformed"
        if not all(isinstance(v, list) and len(v) == 3 and _is_int(v[0]) and 0 <= v[0] < rows and _is_int(v[1])
                   and isinstance(v[2], bool) for v in clips.values()):
            return "malformed clip rows"
        if not (all(isinstance(v, str) for v in failed.values()) and all(
                isinstance(v, list) and len(v) == 3 and _is_int(v[0]) and _is_int(v[1]) and isinstance(v[2], str)
                for v in by_stat.values())):
            return "malformed file records"
        path = os.path.join(self.root, array)
        if os.path.islink(path):
            return f"array file {array} is a link"
        if (os.path.getsize(path) if os.path.exists(path) else 0) < rows * self.record_bytes:
            return f"array file {array} is shorter than its {rows} rows"
        return None

    @property
    def array_path(self) -> str:
        return os.path.join(self.root, self.index["array"])

    # ---------------------------------------------------------------------------------------------- lookup

    def stat_hash(self, path: str) -> str | None:
        """The content hash recorded for path if its size and mtime are unchanged (no read), else None."""
        st = os.stat(path)
        known = self.index["by_stat"].get(os.path.abspath(path))
        return known[2] if known and known[0] == st.st_size and known[1] == st.st_mtime_ns else None

    def remember(self, path: str, digest: str) -> None:
        """Record path's size and mtime with its content hash (written at the next commit)."""
        st = os.stat(path)
        entry = [st.st_size, st.st_mtime_ns, digest]
        self.index["by_stat"][os.path.abspath(path)] = self._new_stats[os.path.abspath(path)] = entry

    @property
    def needs_writing(self) -> bool:
        return bool(self._new_stats)

    def row(self, key: str) -> int | None:
        entry = self.index["clips"].get(key)
        return entry[0] if entry else None

    def is_constant(self, key: str) -> bool:
        """The stored clip's frames are all the same (flagged when stored, so no start-up reads a clip)."""
        return self.index["clips"][key][2]

    def failure(self, key: str) -> str | None:
        """Why the file of this key could not be decoded under these settings (not retried), or None."""
        return self.index["failed"].get(key)

    def fail(self, key: str, why: str) -> None:
        """Record a file that does not decode (under the lock), so warm starts skip it without decoding again. A key
        has a row or a failure, never both, so a file is never both loaded and reported skipped."""
        if key not in self.index["clips"] and key not in self._pending:
            self.index["failed"][key] = why

    # ---------------------------------------------------------------------------------------------- writing

    def __enter__(self) -> "ClipStore":
        """Hold the store's lock and re-read the index (another run may have added rows meanwhile)."""
        os.makedirs(self.root, exist_ok=True)
        self._lock = open(os.path.join(self.root, ".lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.index = self._load_index()
        self.index["by_stat"].update(self._new_stats)
        for name in os.listdir(self.root):  # arrays no index names: an untrusted one replaced (open readers keep it)
            if ARRAY_NAME.fullmatch(name) and name != self.index["array"]:
                os.remove(os.path.join(self.root, name))
        return self

    def add(self, key: str, clip: np.ndarray, constant: bool, replace: bool = False) -> None:
        """Append a decoded clip (under the lock); its row is readable once the with-block ends. replace: store it
        again although the key has a row (that row failed its checksum)."""
        if clip.dtype != np.uint8 or clip.shape != self.shape:
            raise ValueError(f"clip {clip.dtype} {clip.shape} does not fit a store of uint8 {self.shape}")
        if (key in self.index["clips"] and not replace) or key in self._pending:
            return
        data = np.ascontiguousarray(clip).tobytes()
        self._pending[key] = (data, _checksum(key, data), constant)
        self.index["failed"].pop(key, None)
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        """Append the pending clips, flush them to disk, then publish them in the index."""
        if self._pending:
            start = self.index["rows"] * self.record_bytes
            # O_NOFOLLOW: a link planted under the array's name is refused rather than written through
            fd = os.open(self.array_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "ab") as f:
                f.truncate(start)  # cut off what an interrupted build left beyond the index
                for data, _, _ in self._pending.values():
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            for key, (_, checksum, constant) in self._pending.items():
                self.index["clips"][key] = [self.index["rows"], checksum, constant]
                self.index["rows"] += 1
            self._pending.clear()
        with atomic_write(self.index_path, "w") as f:
            json.dump(self.index, f, separators=(",", ":"))
        self._new_stats.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
            else:
                self._pending.clear()  # an interrupted build publishes nothing more
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    # ---------------------------------------------------------------------------------------------- reading

    def read(self, keys) -> tuple[np.ndarray, list[int]]:
        """Clips of keys: uint8 (len(keys), T, H, W, 3), a fresh array (no mapping), and the positions whose row is
        missing, short or fails its checksum; their slots are zeros, for the caller to fill or refuse."""
        if self._fd_array != self.index["array"]:  # a repair under the lock may have found a new array file
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._fd_array = None, self.index["array"]
            try:
                self._fd = os.open(self.array_path, os.O_RDONLY)
            except FileNotFoundError:
                pass  # nothing stored yet, or the file was removed: every row is missing
        out = np.zeros((len(keys), *self.shape), dtype=np.uint8)
        flat, bad = out.reshape(len(keys), -1), []
        for k, key in enumerate(keys):
            entry = self.index["clips"].get(key)
            data = b"" if entry is None or self._fd is None else os.pread(
                self._fd, self.record_bytes, entry[0] * self.record_bytes)
            if len(data) != self.record_bytes or _checksum(key, data) != entry[1]:
                bad.append(k)
                continue
            flat[k] = np.frombuffer(data, dtype=np.uint8)
        return out, bad

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class ClipView:
    """A data set's clips in the store, read on indexing: view[i] is (T, H, W, 3), view[indices] and view[a:b] are
    (B, T, H, W, 3), uint8 tensors that own their memory.

    redecode(i) -> (key, clip) decodes clip i from its source file again when its row fails its checksum (and should
    store it under the returned key); without it such a read is refused (ClipStoreError), never served."""

    def __init__(self, store: ClipStore, keys: list[str], redecode=None):
        self.store, self.keys, self.redecode = store, list(keys), redecode

    dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.keys), *self.store.shape)

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        out, bad = self.store.read([self.keys[i] for i in positions])
        fresh: dict[int, np.ndarray] = {}
        for b in bad:
            i = int(positions[b])
            if i not in fresh:
                if self.redecode is None:
                    raise ClipStoreError(f"clip cache {self.store.root} is damaged (a clip fails its checksum): "
                                         f"delete that folder and it is rebuilt from the clips")
                self.keys[i], fresh[i] = self.redecode(i)
            out[b] = fresh[i]
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return torch.from_numpy(self._read(np.arange(len(self.keys))[idx]))
        idx = torch.as_tensor(idx, dtype=torch.long)
        positions = np.arange(len(self.keys))[idx.reshape(-1).numpy()]
        return torch.from_numpy(self._read(positions)).reshape(*idx.shape, *self.store.shape)
